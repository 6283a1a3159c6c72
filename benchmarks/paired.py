"""Paired differences between methods from a per-image results CSV (image,method,metric,value).

Usage: python benchmarks/paired.py docs/results/ablation-sweep.csv --reference Grad-CAM

For each method and metric: mean of (method − reference) over the images both have, with
a 95% interval (normal approximation), and how many images improved. Paired differences
remove the between-image spread that dominates the unpaired intervals.
"""

from __future__ import annotations

import argparse
import csv
import math
from collections import defaultdict
from pathlib import Path

from sacam.evaluation.registry import value_info

LOWER_IS_BETTER = {"average_drop", "deletion", "road_morf", "entropy", "time_s"}


def _lower_is_better(metric: str) -> bool:
    """The registry's direction (ε-suffixed names too); the fixed set for ablation names."""
    info = value_info(metric)
    return metric in LOWER_IS_BETTER if info is None else not info.higher_is_better


def main() -> int:
    """Print the paired table in Markdown."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", type=Path)
    ap.add_argument("--reference", required=True)
    ap.add_argument("--metrics", nargs="+", default=None)
    args = ap.parse_args()
    vals: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for r in csv.DictReader(args.csv.open()):
        vals[(r["method"], r["metric"])][r["image"]] = float(r["value"])
    methods = list(dict.fromkeys(m for m, _ in vals))
    metrics = args.metrics or [
        m for m in dict.fromkeys(k for _, k in vals) if m not in ("time_s", "sparsity", "entropy")
    ]
    print("| method | " + " | ".join(f"Δ {m} (better / n)" for m in metrics) + " |")
    print("|---" * (len(metrics) + 1) + "|")
    for method in methods:
        if method == args.reference:
            continue
        cells = []
        for metric in metrics:
            ref, cur = vals.get((args.reference, metric), {}), vals.get((method, metric), {})
            common = [
                i for i in cur if i in ref and math.isfinite(cur[i]) and math.isfinite(ref[i])
            ]
            d = [cur[i] - ref[i] for i in common]
            if not d:
                cells.append("–")
                continue
            n = len(d)
            mean = sum(d) / n
            sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1)) if n > 1 else 0.0
            sign = -1 if _lower_is_better(metric) else 1
            better = sum(1 for x in d if sign * x > 0)
            cells.append(f"{mean:+.3f} ± {1.96 * sd / math.sqrt(n):.3f} ({better}/{n})")
        print(f"| {method} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
