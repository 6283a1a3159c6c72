"""SA-CAM's cost over its base method, timed call by call in one process.

SA-CAM runs its base method's pass (Grad-CAM's forward and backward by default) and adds
the attention over the layer's positions. Timing the two in separate processes or at
separate times measures the machine's drift as much as the method (±30% between runs of
the same code on a shared machine), so here the two run in turn on the same model and
batch: call ``i`` of each, in alternating order, forms a pair, and the median of the
pairs' ratios is SA-CAM's cost over its base (goal ≤ 1.05 at batch 8 on the CPU).

    python benchmarks/sacam_cost.py                      # default model, batch 8, 30 pairs
    python benchmarks/sacam_cost.py --batch 16 --calls 50 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sacam.api import build_method
from sacam.models import load_model


def paired_times(
    model: torch.nn.Module, x: torch.Tensor, methods: tuple[str, str], calls: int
) -> dict[str, list[float]]:
    """Seconds of each call of both methods, after three warm-up calls each, in turn."""
    cams = {m: build_method(model, m) for m in methods}
    for cam in cams.values():
        for _ in range(3):
            cam.explain(x)
    times: dict[str, list[float]] = {m: [] for m in methods}
    for i in range(calls):
        for m in methods if i % 2 == 0 else methods[::-1]:
            start = time.perf_counter()
            cams[m].explain(x)
            times[m].append(time.perf_counter() - start)
    return times


def main() -> None:
    """Print the per-image medians and SA-CAM's cost over its base."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="grad-cam", help="SA-CAM's base (default: grad-cam)")
    ap.add_argument("--batch", type=int, default=8, help="images per call (default: 8)")
    ap.add_argument("--calls", type=int, default=30, help="timed pairs (default: 30)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    ap.add_argument("--size", type=int, default=224, help="input side in pixels")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load_model(None).model
    x = torch.randn(args.batch, 3, args.size, args.size)
    sa = "sa-cam"
    times = paired_times(model, x, (args.base, sa), args.calls)
    base_s, sa_s = statistics.median(times[args.base]), statistics.median(times[sa])
    pairs = [s / b for b, s in zip(times[args.base], times[sa], strict=True)]
    print(f"batch {args.batch}, {args.calls} pairs, {args.threads} thread(s), {args.size} px")
    print("| method | ms / image (median) |")
    print("|---|---|")
    print(f"| {args.base} | {1e3 * base_s / args.batch:.1f} |")
    print(f"| {sa} (base {args.base}) | {1e3 * sa_s / args.batch:.1f} |")
    print(
        f"SA-CAM / {args.base}: median of the pairs' ratios {statistics.median(pairs):.3f}, "
        f"ratio of the medians {sa_s / base_s:.3f} (goal ≤ 1.05)"
    )


if __name__ == "__main__":
    main()
