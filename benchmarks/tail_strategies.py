"""The tail methods' two ways of feeding the image, timed side by side on one device.

Usage:

    python benchmarks/tail_strategies.py --device cuda --batches 1 8
    python benchmarks/tail_strategies.py --layer _blocks.15 --batches 1   # a quick CPU run

Recipro-CAM, FD-CAM and Ablation-CAM edit the target layer's output and score every edited
row with the network after the layer. ``strategy="expand"`` (what ``"auto"`` picks on the
default model) runs the network up to the layer once per batch of rows and expands the
layer's output; ``"repeat"`` runs the whole network once per row. For each method and
batch this prints the seconds per image of ``"expand"`` with ``inputs_per_pass="auto"`` (as many
rows per pass as the network after the layer holds within ``max_memory_mb``), of
``"expand"`` capped at the rows of whole passes that fit the same budget (what
``inputs_per_pass="auto"`` gave before), and of ``"repeat"``, their ratios and the largest
difference between the maps, all in one process on the scikit-image sample photos with
the real default model (EfficientNet-Lite0). A GPU call is synchronised before each
clock reading.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial

import torch
from speed import timeit

import sacam
from sacam._outputs import logits_model
from sacam._speed.memory import measured_cap
from sacam._speed.store import cpu_name
from sacam.images import SAMPLE_IMAGES, sample_image
from sacam.models import load_model

METHODS = ("recipro-cam", "ablation-cam", "fd-cam")


def seconds(fn: Callable[[], object], device: torch.device, repeat: int) -> float:
    """``speed.timeit`` of ``fn``, each call synchronised on a GPU."""

    def call() -> None:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return timeit(call, repeat)


def main() -> int:
    """Time ``"expand"`` against ``"repeat"`` for each tail method and print a Markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--layer", default=None, help="target layer (default: the method's own)")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = ap.parse_args()
    device = torch.device(args.device)
    lm = load_model(device=device)
    photos = [lm.preprocess(sample_image(name)) for name in SAMPLE_IMAGES]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU"
    print(
        f"Machine: {cpu_name()} ({where}), torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads; efficientnet-lite0, "
        f"layer {args.layer or 'the default'}.\n"
    )
    print(
        "| method | batch | expand s / image | expand, whole-pass cap | repeat s / image "
        "| capped / expand | repeat / expand | max abs diff |"
    )
    print("|---|---|---|---|---|---|---|---|")
    layer = {} if args.layer is None else {"layer": args.layer}
    whole = measured_cap(logits_model(lm.model), photos[0].to(device), 1024.0)
    for method in args.methods:
        for batch in args.batches:
            x = torch.stack([photos[i % len(photos)] for i in range(batch)]).to(device)
            cams = {
                "expand": sacam.build_method(lm.model, method, strategy="expand", **layer),
                "capped": sacam.build_method(
                    lm.model, method, strategy="expand", inputs_per_pass=whole, **layer
                ),
                "repeat": sacam.build_method(lm.model, method, strategy="repeat", **layer),
            }
            t = {s: seconds(partial(c, x), device, args.repeat) / batch for s, c in cams.items()}
            maps = {s: c(x) for s, c in cams.items()}
            diff = max((maps[s] - maps["expand"]).abs().max().item() for s in maps)
            print(
                f"| {method} | {batch} | {t['expand']:.4f} | {t['capped']:.4f} | "
                f"{t['repeat']:.4f} | {t['capped'] / t['expand']:.1f} | "
                f"{t['repeat'] / t['expand']:.1f} | {diff:.2e} |",
                flush=True,
            )
    print(f"\nWhole-pass cap: {whole} rows per pass (max_memory_mb=1024).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
