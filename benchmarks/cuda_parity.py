"""CPU/CUDA parity of every registered method and of the curve metrics, on the real model.

Usage (on a machine with a GPU):

    python benchmarks/cuda_parity.py --out docs/results/cuda-parity.md

For each method it explains the scikit-image sample photos with the default model
(EfficientNet-Lite0) on the CPU and on CUDA and compares the maps (all in [0, 1]): the
largest absolute difference, the Pearson correlation and whether the top-1 classes agree.
CUDA runs twice: with PyTorch's defaults (cuDNN may use TF32 for convolutions on Ampere and
newer) and with TF32 off, so a difference can be told apart from TF32's rounding. Methods
that make one forward pass per channel (the Score family and the other perturbation
methods) run on one photo at ``_blocks.15`` (320 channels) so the CPU reference stays short;
the others run on two photos at their automatic layer. It also times each method on CUDA
(ms per image at ``--batch``, after a warm-up, synchronised) and compares deletion and
insertion AUCs of the same maps on both devices.

A method passes when, with TF32 off, its maps correlate at r ≥ 0.999 and differ by at most
``--tol`` (default 0.02) anywhere. The exit status is 1 when any method fails.
"""

from __future__ import annotations

import argparse
import functools
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import sacam
from sacam.evaluation.faithfulness import deletion, insertion
from sacam.images import SAMPLE_IMAGES, sample_image
from sacam.models import LoadedModel, load_model

# one forward (or more) per channel or per mask: one photo at a 320-channel layer
COSTLY = {
    "score-cam": {},
    "ss-cam": {"n_samples": 2},
    "is-cam": {"n_samples": 2},
    "ablation-cam": {},
    "group-cam": {},
    "recipro-cam": {},
    "opti-cam": {},
    "fd-cam": {},
    "lift-cam": {},
    "poly-cam": {},
    "sess": {},
}


@functools.cache
def loaded_on(device: torch.device) -> LoadedModel:
    """The default model (and its preprocessing) on ``device``, loaded once."""
    return load_model(device=device)


def model_on(device: torch.device) -> torch.nn.Module:
    """The default model on ``device``, loaded once."""
    return loaded_on(device).model


def photos(n: int, device: torch.device) -> torch.Tensor:
    """The first ``n`` sample photos, preprocessed for the default model."""
    pre = loaded_on(torch.device("cpu")).preprocess
    pics = [pre(sample_image(SAMPLE_IMAGES[i % len(SAMPLE_IMAGES)])) for i in range(n)]
    return torch.stack(pics).to(device)


def synced_ms(fn: Callable[[], object], device: torch.device, per: int) -> float:
    """Milliseconds per image of one call after a warm-up call."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 1000 * (time.perf_counter() - t0) / per


def compare(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Largest absolute difference and Pearson r of two map batches."""
    a, b = a.double().flatten(), b.double().flatten()
    diff = float((a - b).abs().max())
    r = float(torch.corrcoef(torch.stack([a, b]))[0, 1]) if a.std() > 0 and b.std() > 0 else 1.0
    return diff, r


def set_tf32(on: bool) -> None:
    """Allow or forbid TF32 in cuDNN convolutions and cuBLAS matrix products."""
    torch.backends.cudnn.allow_tf32 = on
    torch.backends.cuda.matmul.allow_tf32 = on


def method_row(name: str, gpu: torch.device, batch: int, tol: float) -> tuple[str, bool]:
    """One table row: the method's CPU/CUDA differences and its CUDA time."""
    options: dict = {}
    n = 2
    if name in COSTLY:
        options = {"layer": "_blocks.15", **COSTLY[name]}
        n = 1
    cpu_model, gpu_model = model_on(torch.device("cpu")), model_on(gpu)
    x = photos(n, torch.device("cpu"))
    targets = cpu_model(x).argmax(1)
    ref = sacam.explain(cpu_model, x, name, targets=targets.tolist(), **options)
    xg = x.to(gpu)
    same_top1 = bool((gpu_model(xg).argmax(1).cpu() == targets).all())
    cols = []
    for tf32 in (True, False):
        set_tf32(tf32)
        got = sacam.explain(gpu_model, xg, name, targets=targets.tolist(), **options)
        assert got.device.type == gpu.type, f"{name}: maps left {gpu}"
        cols.append(compare(ref, got.cpu()))
    set_tf32(False)
    xb = photos(1 if name in COSTLY else batch, gpu)
    ms = synced_ms(lambda: sacam.explain(gpu_model, xb, name, **options), gpu, len(xb))
    d_off, r_off = cols[1]
    ok = d_off <= tol and r_off >= 0.999 and same_top1
    label = name + "".join(f" {k}={v}" for k, v in options.items())
    row = (
        f"| {label} | {n} | {cols[0][0]:.2e} | {cols[0][1]:.6f} | {d_off:.2e} | {r_off:.6f} "
        f"| {'yes' if same_top1 else 'NO'} | {ms:.1f} | {'ok' if ok else 'FAIL'} |"
    )
    return row, ok


def curves_rows(gpu: torch.device, steps: int) -> list[str]:
    """Deletion and insertion AUCs of the same Grad-CAM maps on both devices."""
    x = photos(4, torch.device("cpu"))
    cpu_model, gpu_model = model_on(torch.device("cpu")), model_on(gpu)
    maps = sacam.explain(cpu_model, x, "grad-cam")
    rows = ["", "| curve | CPU AUCs | CUDA AUCs (TF32 off) | max abs diff |", "|---|---|---|---|"]
    for name, fn in (("deletion", deletion), ("insertion", insertion)):
        a = fn(cpu_model, x, maps, steps=steps).auc
        b = fn(gpu_model, x.to(gpu), maps.to(gpu), steps=steps).auc.cpu()
        fmt = " ".join(f"{v:.4f}" for v in a.tolist())
        fmt_b = " ".join(f"{v:.4f}" for v in b.tolist())
        rows.append(f"| {name} | {fmt} | {fmt_b} | {float((a - b).abs().max()):.1e} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print (and optionally write) the parity table; 1 when a method fails."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="the device compared with the CPU")
    ap.add_argument("--methods", nargs="+", default=None)
    ap.add_argument("--batch", type=int, default=16, help="batch of the CUDA timing")
    ap.add_argument("--tol", type=float, default=0.02)
    ap.add_argument("--steps", type=int, default=16, help="deletion/insertion steps")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    gpu = torch.device(args.device)
    name = torch.cuda.get_device_name(gpu) if gpu.type == "cuda" else str(gpu)
    lines = [
        f"Device: {name}; torch {torch.__version__}, Python {platform.python_version()}, "
        f"{torch.get_num_threads()} CPU threads; default model efficientnet-lite0 at 224×224.",
        "",
        "| method | photos | max abs diff (TF32 default) | r | max abs diff (TF32 off) | r "
        f"| same top-1 | CUDA ms / image (batch {args.batch}) | parity |",
        "|---" * 9 + "|",
    ]
    failed = []
    # LeGrad explains vision transformers (it needs a token-to-logits projection)
    default = [m for m in sacam.list_methods() if m != "legrad"]
    for method in args.methods or default:
        try:
            row, ok = method_row(method, gpu, args.batch, args.tol)
        except Exception as exc:  # noqa: BLE001 - a broken method is a row, not the end
            row, ok = f"| {method} | error: {type(exc).__name__}: {exc} |", False
        print(row, flush=True)
        lines.append(row)
        if not ok:
            failed.append(method)
    lines += curves_rows(gpu, args.steps)
    lines += [
        "",
        f"Failed: {', '.join(failed) or 'none'}.",
        "",
        "Command: `python " + " ".join(["benchmarks/cuda_parity.py", *sys.argv[1:]]) + "`",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
