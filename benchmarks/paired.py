"""Paired differences between methods from a per-image results CSV (image,method,metric,value).

Usage: python benchmarks/paired.py docs/results/ablation-sweep.csv --reference Grad-CAM

For each method and metric: mean of (method − reference) over the images both have, with
a 95% interval (Student's t with n − 1 degrees of freedom), and how many images improved;
▲ marks a difference whose interval lies wholly on the better side, ▼ wholly on the worse
side (no mark: undecided at this sample size). Paired differences remove the
between-image spread that dominates the unpaired intervals. ``--methods`` keeps only
those rows.
"""

from __future__ import annotations

import argparse
import csv
import math
from collections import defaultdict
from pathlib import Path

from sacam.evaluation.registry import value_info
from sacam.evaluation.stats import mean_ci

LOWER_IS_BETTER = {"average_drop", "deletion", "road_morf", "entropy", "time_s"}


def _lower_is_better(metric: str) -> bool:
    """The registry's direction (ε-suffixed names too); the fixed set for ablation names."""
    info = value_info(metric)
    return metric in LOWER_IS_BETTER if info is None else not info.higher_is_better


def load(path: Path) -> dict[tuple[str, str], dict[str, float]]:
    """Per-image values of a results CSV by (method, metric)."""
    vals: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    with path.open(encoding="utf-8", newline="") as f:
        for r in csv.DictReader(f):
            vals[(r["method"], r["metric"])][r["image"]] = float(r["value"])
    return vals


def t_interval(values: list[float]) -> tuple[float, float, int]:
    """Mean, 95% half-width (Student's t, n − 1 degrees of freedom) and n of the finite values.

    The library's :func:`sacam.evaluation.stats.mean_ci` (what every run's summary
    prints), except that the half-width is infinite, not undefined, for one value (an
    interval that decides nothing); NaN for none.
    """
    stats = mean_ci(values)
    n = int(stats["n"])
    return stats["mean"], math.inf if n == 1 else stats["ci95"], n


def paired_differences(cur: dict[str, float], ref: dict[str, float]) -> list[float]:
    """Cur − ref per image, over the images where both are finite."""
    return [
        cur[i] - ref[i] for i in cur if i in ref and math.isfinite(cur[i]) and math.isfinite(ref[i])
    ]


def paired_cell(cur: dict[str, float], ref: dict[str, float], metric: str) -> str:
    """``mean ± half-width (better/n)`` of cur − ref over common images, ▲/▼ when decided."""
    d = paired_differences(cur, ref)
    if not d:
        return "–"
    mean, half, n = t_interval(d)
    sign = -1 if _lower_is_better(metric) else 1
    better = sum(1 for x in d if sign * x > 0)
    mark = "▲" if sign * mean - half > 0 else "▼" if sign * mean + half < 0 else ""
    return f"{mean:+.3f} ± {half:.3f} ({better}/{n}){mark}"


def main() -> int:
    """Print the paired table in Markdown."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", type=Path)
    ap.add_argument("--reference", required=True)
    ap.add_argument("--metrics", nargs="+", default=None)
    ap.add_argument("--methods", nargs="+", default=None, help="rows to print (default: all)")
    args = ap.parse_args()
    vals = load(args.csv)
    methods = list(dict.fromkeys(m for m, _ in vals))
    metrics = args.metrics or [
        m for m in dict.fromkeys(k for _, k in vals) if m not in ("time_s", "sparsity", "entropy")
    ]
    print("| method | " + " | ".join(f"Δ {m} (better / n)" for m in metrics) + " |")
    print("|---" * (len(metrics) + 1) + "|")
    for method in methods:
        if method == args.reference or (args.methods and method not in args.methods):
            continue
        cells = []
        for metric in metrics:
            ref, cur = vals.get((args.reference, metric), {}), vals.get((method, metric), {})
            cells.append(paired_cell(cur, ref, metric))
        print(f"| {method} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
