r"""SA-CAM's faithfulness × stability trade-off over its variants, from benchmark folders.

Usage:

    python benchmarks/tradeoff.py RUN_DIR [RUN_DIR ...] [--faithfulness insertion]
        [--stability xattack_topk_topk@2] [--reference grad-cam] [--out tradeoff.png]

Each RUN_DIR is a ``sacam benchmark`` output folder (summary.json, results.csv). The
``sa-cam`` of each folder is one SA-CAM variant, labelled by the folder's model, layer and
SA-CAM options (operator, temperature, gamma, hops, base: ``--method-option sa-cam:...``);
every other method is a baseline point (one per method, model and layer, from the first
folder that has it). Make the variants with one run per variant, e.g.

    sacam benchmark DATA --methods grad-cam sa-cam --layer _blocks.15 \\
        --method-option sa-cam:gamma=1 --metrics insertion explanation_attack --out runs/g1

The chart puts faithfulness on x and stability on y, each oriented so that right and up
are better (the registry's direction of each value), with 95% intervals. The table
printed below compares each variant with the ``--reference`` method *of the same folder*
(same images, model and layer): paired mean differences with 95% intervals, and whether
the variant is better on both axes by its means and by its intervals (both intervals
exclude 0 on the better side).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from sacam.evaluation.registry import value_info
from sacam.evaluation.stats import mean_ci

SA = "sa-cam"


def _load(folder: Path) -> tuple[dict[str, Any], dict[tuple[str, str], dict[str, float]]]:
    summary = json.loads((folder / "summary.json").read_text())
    per: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    with (folder / "results.csv").open(encoding="utf-8", newline="") as f:
        for r in csv.DictReader(f):
            per[(r["method"], r["metric"])][r["image"]] = float(r["value"])
    return summary, per


def _setting(summary: dict[str, Any]) -> str:
    s = summary["settings"]
    layer = ",".join(s.get("layer") or ["auto"])
    return f"{s.get('model', '?')} {layer}"


def _variant(summary: dict[str, Any]) -> str:
    opts = summary["settings"].get("method_options", {}).get(SA, {})
    text = " ".join(f"{k}={v}" for k, v in sorted(opts.items())) or "defaults"
    return f"SA-CAM {text} @ {_setting(summary)}"


def _sign(value: str) -> float:
    info = value_info(value)
    if info is None:
        raise SystemExit(f"tradeoff: {value!r} is not a value any registered metric writes")
    return 1.0 if info.higher_is_better else -1.0


def _paired(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """Mean and 95% interval of a − b over the images both have."""
    common = [i for i in a if i in b and math.isfinite(a[i]) and math.isfinite(b[i])]
    return mean_ci([a[i] - b[i] for i in common])


def main() -> int:
    """Draw the chart and print the comparison table (Markdown)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--faithfulness", default="insertion")
    ap.add_argument("--stability", default="xattack_topk_topk@2")
    ap.add_argument("--reference", default="grad-cam")
    ap.add_argument("--out", type=Path, default=Path("tradeoff.png"))
    args = ap.parse_args()
    fx, fy = args.faithfulness, args.stability
    sx, sy = _sign(fx), _sign(fy)

    variants: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    baselines: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    rows = []
    for folder in args.runs:
        summary, per = _load(folder)
        table = summary["table"]
        for method, stats in table.items():
            if fx not in stats or fy not in stats:
                continue
            if method == SA:
                variants.append((_variant(summary), stats[fx], stats[fy]))
            else:
                baselines.setdefault(f"{method} @ {_setting(summary)}", (stats[fx], stats[fy]))
        if SA in table and args.reference in table:
            dx = _paired(per[(SA, fx)], per[(args.reference, fx)])
            dy = _paired(per[(SA, fy)], per[(args.reference, fy)])
            if dx["n"] == 0 or dy["n"] == 0:
                continue  # no image with both values (failed pairs)
            by_mean = sx * dx["mean"] > 0 and sy * dy["mean"] > 0
            by_ci = sx * dx["mean"] - dx["ci95"] > 0 and sy * dy["mean"] - dy["ci95"] > 0
            rows.append((_variant(summary), dx, dy, by_mean, by_ci))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 6))
    for label, (x, y) in baselines.items():
        ax.errorbar(
            sx * x["mean"],
            sy * y["mean"],
            xerr=x["ci95"],
            yerr=y["ci95"],
            fmt="o",
            color="grey",
            alpha=0.7,
            capsize=2,
        )
        ax.annotate(
            label,
            (sx * x["mean"], sy * y["mean"]),
            fontsize=6,
            color="dimgrey",
            xytext=(3, 3),
            textcoords="offset points",
        )
    for label, x, y in variants:
        ax.errorbar(
            sx * x["mean"],
            sy * y["mean"],
            xerr=x["ci95"],
            yerr=y["ci95"],
            fmt="s",
            color="black",
            capsize=2,
        )
        ax.annotate(
            label,
            (sx * x["mean"], sy * y["mean"]),
            fontsize=6,
            xytext=(3, -8),
            textcoords="offset points",
        )
    flip = {1.0: "", -1.0: "− "}
    ax.set_xlabel(f"{flip[sx]}{fx}  (faithfulness; right is better)")
    ax.set_ylabel(f"{flip[sy]}{fy}  (stability; up is better)")
    ax.set_title("SA-CAM variants (black squares) and baselines (grey), mean ± 95% interval")
    fig.tight_layout()
    fig.savefig(args.out, dpi=150)
    print(f"wrote {args.out}")

    print(
        f"\n| variant | Δ {fx} vs {args.reference} | Δ {fy} vs {args.reference} "
        "| better on both (means) | better on both (95%) |"
    )
    print("|---|---|---|---|---|")
    for label, dx, dy, by_mean, by_ci in rows:
        print(
            f"| {label} | {dx['mean']:+.4f} ± {dx['ci95']:.4f} (n={dx['n']:.0f}) "
            f"| {dy['mean']:+.4f} ± {dy['ci95']:.4f} | {'yes' if by_mean else 'no'} "
            f"| {'yes' if by_ci else 'no'} |"
        )
    winners = [r[0] for r in rows if r[4]]
    print(
        f"\nVariants better than {args.reference} on both axes (95% intervals): "
        + (", ".join(winners) if winners else "none")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
