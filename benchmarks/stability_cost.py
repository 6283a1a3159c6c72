"""Cost of the stability protocol's steps, to size a run (docs/evaluation.md §5).

Usage:

    python benchmarks/stability_cost.py DATA_DIR [--limit 5] [--layer _blocks.15]
        [--methods grad-cam sa-cam eigen-cam] [--device cuda] [--steps 3] [--image-size 224]

Times, per image, on the first ``--limit`` images as one batch: a forward pass (the
floor: one random-noise step of ``explanation_attack``), one classifier-gradient step
(FGSM/PGD of ``adversarial``), and per method its map and one white-box attack step (map
kept differentiable + double backward). Prints seconds and the ratio to the floor, and
the estimated seconds per image and method of the full defaults (5 ε, 100 steps, PGD 10).
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sacam.api import build_method
from sacam.evaluation import adversarial
from sacam.evaluation.runner.data import discover
from sacam.images import load_image
from sacam.models import load_model
from sacam.scores import predict


def _timed(fn: Callable[[], object], device: str, repeat: int) -> float:
    fn()  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeat


def _method_rows(
    lm: Any,
    x: torch.Tensor,
    c: torch.Tensor,
    method: str,
    args: argparse.Namespace,
    eps: float,
    floor: float,
    pgd: float,
) -> None:
    """Print one method's rows: its map, one white-box step and the full defaults' cost."""
    n = x.shape[0]
    cam = build_method(lm.model, method, args.layer)
    clean = cam(x, c)
    t_map = _timed(functools.partial(cam, x, c), args.device, args.steps) / n
    if cam.supports_graph():

        def step() -> object:
            fn = lambda i, k: cam.explain_graph(i, k).maps  # noqa: E731
            return adversarial.explanation_attack(
                lm.model,
                x,
                lm.preprocess,
                fn,
                "topk",
                eps=eps,
                iterations=1,
                classes=c,
                clean_maps=clean,
            )

        t_step = _timed(step, args.device, args.steps) / n
    else:
        t_step = float("nan")  # attacked through Grad-CAM (transfer)
    full = 5 * (200 * t_step + 100 * floor + 11 * pgd + 8 * t_map)
    print(f"| {method}: map | {t_map:.4f} | {t_map / floor:.1f} |")
    print(f"| {method}: white-box step | {t_step:.4f} | {t_step / floor:.1f} |")
    print(f"| {method}: full defaults, at most | {full:.1f} | – |")


def main(argv: list[str] | None = None) -> int:
    """Print the cost table (``argv``: the command line's arguments, default sys.argv)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--limit", type=int, default=5)
    ap.add_argument("--layer", default="_blocks.15")
    ap.add_argument("--methods", nargs="+", default=["grad-cam", "sa-cam", "eigen-cam"])
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=3, help="timed repetitions")
    ap.add_argument("--image-size", type=int, default=None, help="input side (default: model's)")
    args = ap.parse_args(argv)
    lm = load_model(args.model, device=args.device, size=args.image_size)
    items = discover(args.data_dir, args.limit).items
    x = torch.stack([lm.preprocess(load_image(it.path)) for it in items]).to(args.device)
    n = x.shape[0]
    c = predict(lm.model, x)
    eps = 2 / 255

    def forward() -> object:
        with torch.inference_mode():
            return lm.model(x)

    floor = _timed(forward, args.device, args.steps) / n
    pgd = (
        _timed(
            lambda: adversarial.adversarial_examples(
                lm.model, x, lm.preprocess, "pgd", eps=eps, iterations=1, classes=c
            ),
            args.device,
            args.steps,
        )
        / n
    )
    print(f"{n} images, {lm.name}, layer {args.layer}, device {args.device}")
    print("| step | s / image | × forward |\n|---|---|---|")
    print(f"| forward (random-noise step) | {floor:.4f} | 1.0 |")
    print(f"| classifier gradient (FGSM/PGD step) | {pgd:.4f} | {pgd / floor:.1f} |")
    for method in args.methods:
        _method_rows(lm, x, c, method, args, eps, floor, pgd)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
