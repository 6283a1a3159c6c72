"""Speed and memory of every registered method against its floor, and against torchcam.

Usage:

    python benchmarks/speed.py --out docs/results/speed-cpu.md            # full table
    python benchmarks/speed.py --methods grad-cam sa-cam --batches 1      # a subset

For the default model at 224×224 it measures, in one run:

- the forward floor: ms/image for batch sizes 1, 8, 16, 32 in contiguous and
  channels_last memory formats (the best is the floor of a forward pass);
- for each method and batch size (1 and 8; Score-type methods at batch 1, since their
  cost is K masked forwards per image whatever the batch): time per image (median of
  ``--repeat`` runs after one warm-up), peak memory (peak RSS, ``VmHWM``, of a fresh
  child process above its RSS after loading the model and the images), and the ratio
  to the method's floor:
    - gradient family: one forward plus a backward to the target layer (measured by hand,
      without sacam);
    - Score family: the K masked forwards alone at the best batch size and format;
    - Recipro-CAM, FD-CAM and Ablation-CAM (the network after the layer on edited
      outputs of it: 49, 2K and K rows per image): the same number of whole forwards,
      which ``strategy="repeat"`` runs; their default (``"auto"``, which runs
      ``"expand"`` on the default model: the layers before the target once per batch of
      rows) is measured against the same floor, so its ratio is the saving;
    - SA-CAM: its base method (``sa-cam / grad-cam``);
    - others: a plain forward;
- torchcam 0.5.0 (when installed: ``pip install torchcam==0.5.0``, no torchvision needed)
  on the same methods, with the maximum absolute difference of the maps (so the
  comparison is at equal maps) and the ratio sacam / torchcam;
- deletion and insertion of one image against their (steps + 1) forwards each.

The machine (CPU, threads, torch) is printed beside the numbers.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve()
TORCHCAM = {
    "cam": "CAM",
    "grad-cam": "GradCAM",
    "grad-cam++": "GradCAMpp",
    "xgrad-cam": "XGradCAM",
    "layer-cam": "LayerCAM",
    "score-cam": "ScoreCAM",
    "ss-cam": "SSCAM",
    "is-cam": "ISCAM",
}
SCORE_FAMILY = {"score-cam", "ss-cam", "is-cam", "ablation-cam", "group-cam"}
# SS-CAM and IS-CAM cost K × n_samples forwards (44,800 at their default 35 for SS-CAM):
# measured with 2 samples, which shows their overhead over the floor all the same.
SPEED_OPTIONS: dict[str, dict] = {"ss-cam": {"n_samples": 2}, "is-cam": {"n_samples": 2}}
K_CHANNELS = 1280
# rows of the network after the head layer per image (7 × 7 positions; 2 K groups; K)
TAIL_ROWS = {"recipro-cam": 49, "fd-cam": 2 * K_CHANNELS, "ablation-cam": K_CHANNELS}


def forwards(method: str, options: dict) -> int:
    """Forward passes a Score-family method makes per image on the default model."""
    if method == "group-cam":
        return options.get("groups", 32) + 1
    k = 320 if options.get("layer") == "_blocks.15" else K_CHANNELS
    return k * options.get("n_samples", 1)


def images(batch: int) -> torch.Tensor:
    """A batch of the scikit-image sample photos, preprocessed for the default model."""
    from sacam.images import SAMPLE_IMAGES, sample_image
    from sacam.models import load_model

    pre = load_model().preprocess
    pics = [pre(sample_image(SAMPLE_IMAGES[i % len(SAMPLE_IMAGES)])) for i in range(batch)]
    return torch.stack(pics)


def timeit(fn: Callable[[], object], repeat: int) -> float:
    """Median seconds of ``repeat`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def rss_mb(field: str = "VmRSS") -> float:
    """Resident set size in MiB (Linux): current (``VmRSS``) or peak (``VmHWM``).

    ``VmHWM``, unlike ``ru_maxrss``, is not inherited from the parent process.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(spec: dict) -> dict:
    """One measurement in a fresh process: time per image and peak memory above warm RSS."""
    from sacam.models import load_model

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec.get("device", "cpu"))
    lm = load_model(device=device)
    model = lm.model
    x = images(spec["batch"]).to(device)
    kind = spec["kind"]
    import sacam

    fn: Callable[[], object]
    if kind == "sacam":
        cam = sacam.build_method(model, spec["method"], **spec.get("options", {}))
        fn = lambda: cam(x)  # noqa: E731
    elif kind == "torchcam":
        import torchcam.methods as tm

        extractor_cls = getattr(tm, TORCHCAM[spec["method"]])
        model.eval()
        layer = "_swish" if spec["method"] != "cam" else "_swish"
        kwargs: dict = {"inputs_per_pass": 32} if spec["method"] in SCORE_FAMILY else {}
        if spec["method"] in ("ss-cam", "is-cam"):
            kwargs["num_samples"] = SPEED_OPTIONS[spec["method"]]["n_samples"]

        def fn() -> object:
            with extractor_cls(model, layer, input_shape=(3, 224, 224), **kwargs) as ext:
                with torch.set_grad_enabled(
                    spec["method"] not in ("cam",) and spec["method"] not in SCORE_FAMILY
                ):
                    out = model(x)
                cams = ext(out.argmax(1).tolist(), out)
            return cams[0]
    elif kind == "floor_grad":
        fn = lambda: grad_floor(model, x)  # noqa: E731
    elif kind == "forward":
        fmt = torch.channels_last if spec.get("channels_last") else torch.contiguous_format
        xb = images(spec["batch"]).to(device).contiguous(memory_format=fmt)

        def fn() -> object:
            with torch.inference_mode():
                return model(xb)
    elif kind == "delins":
        from sacam.evaluation.faithfulness import deletion, insertion

        maps = sacam.explain(model, x, "grad-cam")

        def fn() -> None:
            deletion(model, x, maps, steps=spec["steps"])
            insertion(model, x, maps, steps=spec["steps"])
    else:
        raise ValueError(kind)
    base = rss_mb()  # after loading the model and the images, before any explaining
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20

        def synced() -> None:
            fn()
            torch.cuda.synchronize()

        seconds = timeit(synced, spec["repeat"])
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        seconds = timeit(fn, spec["repeat"])
        peak = rss_mb("VmHWM")
    return {"s_per_image": seconds / spec["batch"], "peak_mb": max(0.0, peak - base)}


def grad_floor(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Forward with a graph from the head activation on, then a backward to it (no sacam)."""
    store: dict[str, torch.Tensor] = {}
    count = {"n": 0}

    def hook(_m: torch.nn.Module, _i: object, out: torch.Tensor) -> torch.Tensor | None:
        count["n"] += 1
        if count["n"] == 2:  # the shared _swish's second call: the head
            leaf = out.detach().requires_grad_(True)
            store["a"] = leaf
            return leaf.clone()
        return None

    params = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in params:
        p.requires_grad_(False)
    handle = model.get_submodule("_swish").register_forward_hook(hook)
    try:
        model.eval()
        with torch.enable_grad():
            out = model(x)
            score = out.gather(1, out.argmax(1, keepdim=True)).sum()
            (g,) = torch.autograd.grad(score, store["a"])
    finally:
        handle.remove()
        for p, r in params:
            p.requires_grad_(r)
    return g


def measure(spec: dict) -> dict:
    """Run ``child(spec)`` in a fresh Python process."""
    res = subprocess.run(
        [sys.executable, str(HERE), "--child", json.dumps(spec)], capture_output=True, text=True
    )
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr else "failed"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def equal_maps(method: str) -> float | None:
    """Max |sacam − torchcam| over the sample photos (maps in [0, 1]); None if unavailable."""
    if method in ("ss-cam", "is-cam"):
        return None  # random noise: the two libraries draw different samples
    try:
        import torchcam.methods as tm
    except ImportError:
        return None
    import sacam
    from sacam.models import load_model

    lm = load_model()
    x = images(2)
    options: dict[str, Any] = {"variant": "torchcam"} if method == "grad-cam++" else {}
    if method in SCORE_FAMILY:
        options = {"variant": "softmax"} if method == "score-cam" else {}
    ours = sacam.explain(lm.model, x, method, **options)
    extractor_cls = getattr(tm, TORCHCAM[method])
    with extractor_cls(lm.model.eval(), "_swish", input_shape=(3, 224, 224)) as ext:
        with torch.set_grad_enabled(method not in SCORE_FAMILY and method != "cam"):
            out = lm.model(x)
        cam = ext(out.argmax(1).tolist(), out)[0]
    theirs = torch.nn.functional.interpolate(
        cam[:, None], size=(224, 224), mode="bilinear", align_corners=False
    )[:, 0]
    theirs = (theirs - theirs.amin((1, 2), keepdim=True)) / (
        theirs.amax((1, 2), keepdim=True) - theirs.amin((1, 2), keepdim=True)
    ).clamp_min(1e-12)
    return float((ours - theirs.detach()).abs().max())


def tradeoffs() -> list[str]:
    """Time and map correlation of Score-CAM's inexact options against exact Score-CAM."""
    import sacam
    from sacam.models import load_model

    lm = load_model()
    x = images(1)
    rows = []
    t0 = time.perf_counter()
    exact = sacam.explain(lm.model, x, "score-cam")
    t_exact = time.perf_counter() - t0
    rows.append(f"| exact | {t_exact:.1f} | 1.00 | 1.000 |")
    for label, opts in (
        ("top_channels=128", {"top_channels": 128}),
        ("top_channels=256", {"top_channels": 256}),
        ("bf16=True", {"bf16": True}),
    ):
        t0 = time.perf_counter()
        m = sacam.explain(lm.model, x, "score-cam", **opts)
        t = time.perf_counter() - t0
        corr = float(torch.corrcoef(torch.stack([exact.flatten(), m.flatten()]))[0, 1])
        rows.append(f"| {label} | {t:.1f} | {t_exact / t:.2f} | {corr:.3f} |")
    return rows


def main() -> int:
    """Measure and print the tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--methods", nargs="+", default=None)
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--floor-batches", nargs="*", type=int, default=[16, 32], help="more forward-floor batches"
    )
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--skip-torchcam", action="store_true")
    ap.add_argument("--skip-tradeoffs", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (peak memory: CUDA allocator)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    import sacam
    from sacam._speed.store import cpu_name

    methods = args.methods or [m for m in sacam.list_methods()]
    base = {"threads": args.threads, "repeat": args.repeat, "device": args.device}
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "no GPU"
    lines = [
        f"Machine: {cpu_name()} ({gpu}), {args.threads} threads, torch {torch.__version__}, "
        f"Python {platform.python_version()}; default model efficientnet-lite0 at 224×224.",
        "",
    ]

    # forward floor
    lines += ["| forward | batch | ms / image |", "|---|---|---|"]
    fwd: dict[tuple[int, bool], float] = {}
    for batch in sorted(set(args.batches) | set(args.floor_batches)):
        for cl in (False, True):
            r = measure(base | {"kind": "forward", "batch": batch, "channels_last": cl})
            fwd[(batch, cl)] = r.get("s_per_image", float("nan"))
            fmt = "channels_last" if cl else "contiguous"
            lines.append(f"| {fmt} | {batch} | {1000 * fwd[(batch, cl)]:.1f} |")
    best_fwd = min(fwd.values())
    lines.append(
        f"\nBest forward: {1000 * best_fwd:.1f} ms/image (the floor of one forward pass).\n"
    )

    floors: dict[int, float] = {}
    for batch in args.batches:
        floors[batch] = measure(base | {"kind": "floor_grad", "batch": batch}).get(
            "s_per_image", float("nan")
        )
    lines += [
        "Forward + backward to the head activation (gradient floor): "
        + ", ".join(f"batch {b}: {1000 * s:.1f} ms/image" for b, s in floors.items()),
        "",
    ]

    head = (
        "| method | batch | sacam ms / image | peak MB | floor | ratio to floor "
        "| torchcam ms / image | sacam / torchcam | max abs diff vs torchcam |"
    )
    lines += [head, "|---" * 9 + "|"]
    times: dict[tuple[str, int], float] = {}
    rows: list[tuple[str, dict[str, Any]]] = [(m, {}) for m in methods]
    for method in TAIL_ROWS:  # the whole network once per row: the floor's own work
        if method in methods:
            rows.append((method, {"strategy": "repeat"}))
    if "score-cam" in methods:  # peak memory follows the budget, not K
        rows.append(("score-cam", {"max_memory_mb": 256}))
        rows.append(("score-cam", {"layer": "_blocks.15"}))  # K = 320 instead of 1280
    for method, extra in rows:
        info = sacam.method_info(method)
        options = SPEED_OPTIONS.get(method, {}) | extra
        slow = method in SCORE_FAMILY or method in TAIL_ROWS
        batches = [1] if slow else args.batches
        for batch in batches:
            spec = {"kind": "sacam", "method": method, "batch": batch, "options": options}
            if slow and method != "group-cam":
                spec["repeat"] = 1  # seconds to minutes per call: one timed call after a warm-up
            r = measure(base | spec)
            s = r.get("s_per_image", float("nan"))
            times.setdefault((method, batch), s)
            if method in TAIL_ROWS:
                n = TAIL_ROWS[method]
                floor, fname = n * best_fwd, f"{n} fwd"
            elif method in SCORE_FAMILY:
                n = forwards(method, options)
                floor, fname = n * best_fwd, f"{n} fwd"
            elif method == "sa-cam":
                floor, fname = times.get(("grad-cam", batch), float("nan")), "grad-cam"
            elif info.cls.uses_gradients:
                floor, fname = floors[batch], "fwd+bwd"
            else:
                floor, fname = fwd.get((batch, False), best_fwd), "fwd"
            tc_s, diff = float("nan"), None
            if not args.skip_torchcam and method in TORCHCAM and not extra:
                tspec = {"kind": "torchcam", "method": method, "batch": batch}
                if method in SCORE_FAMILY:
                    tspec["repeat"] = 1
                t = measure(base | tspec)
                tc_s = t.get("s_per_image", float("nan"))
                if batch == batches[0]:
                    diff = equal_maps(method)
            label = method + "".join(f" {k}={v}" for k, v in options.items())
            peak = r.get("peak_mb", float("nan"))
            lines.append(
                f"| {label} | {batch} | {1000 * s:.1f} | {peak:.0f} | {fname} "
                f"{1000 * floor:.1f} ms | {s / floor:.2f} | {1000 * tc_s:.1f} | {s / tc_s:.2f} | "
                f"{'' if diff is None else f'{diff:.1e}'} |"
            )
            print(lines[-1], file=sys.stderr, flush=True)
    # options that trade exactness for speed (off by default)
    if "score-cam" in methods and not args.skip_tradeoffs:
        lines += [
            "",
            "| option (score-cam, batch 1) | s / image | speed-up | correlation with exact |",
            "|---|---|---|---|",
        ]
        lines += tradeoffs()
        print("\n".join(lines[-3:]), file=sys.stderr, flush=True)

    # deletion / insertion against their forwards
    steps = 28
    r = measure(base | {"kind": "delins", "batch": 1, "steps": steps})
    fwd_cost = 2 * (steps + 1) * best_fwd
    lines += [
        "",
        f"Deletion + insertion of one image, {steps} steps: "
        f"{1000 * r.get('s_per_image', float('nan')):.0f} ms; their 2 × {steps + 1} forwards at "
        f"the best rate: {1000 * fwd_cost:.0f} ms; ratio "
        f"{r.get('s_per_image', float('nan')) / fwd_cost:.2f}.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
