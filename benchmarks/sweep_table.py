"""One ε-swept value of a stability run as a table: methods × ε, then paired differences.

Usage: python benchmarks/sweep_table.py OUT/results.csv xattack_topk_topk \
           [--reference grad-cam] [--subject sa-cam]

Rows: each method's mean ± 95% interval (Student's t) at every ε of the sweep; last row:
subject − reference paired over the images both have (▲/▼ when the interval decides).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from paired import load, paired_cell, t_interval


def _mean_ci(values: list[float]) -> str:
    mean, half, n = t_interval(values)
    return f"{mean:.2f} ± {half:.2f}" if n else "–"


def main() -> int:
    """Print the Markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", type=Path)
    ap.add_argument("value", help="a swept value without its @ε suffix, e.g. xattack_topk_topk")
    ap.add_argument("--reference", default="grad-cam")
    ap.add_argument("--subject", default="sa-cam")
    args = ap.parse_args()
    vals = load(args.csv)
    names = [m for _, m in vals if m.split("@")[0] == args.value and "@" in m]
    metrics = sorted(set(names), key=lambda m: float(m.split("@")[1]))
    methods = list(dict.fromkeys(meth for meth, m in vals if m in metrics))
    eps = [m.split("@")[1] for m in metrics]
    print("| method | " + " | ".join(f"ε = {e}/255" for e in eps) + " |")
    print("|---" * (len(eps) + 1) + "|")
    for method in methods:
        cells = [_mean_ci(list(vals.get((method, m), {}).values())) for m in metrics]
        print(f"| {method} | " + " | ".join(cells) + " |")
    paired = [
        paired_cell(vals.get((args.subject, m), {}), vals.get((args.reference, m), {}), m)
        for m in metrics
    ]
    print(f"| {args.subject} − {args.reference} | " + " | ".join(paired) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
