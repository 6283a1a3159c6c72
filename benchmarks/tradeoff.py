r"""SA-CAM's faithfulness × stability trade-off over its variants, from benchmark folders.

Usage:

    python benchmarks/tradeoff.py RUN_DIR [RUN_DIR ...] [--faithfulness insertion]
        [--stability xattack_topk_topk@2] [--reference grad-cam] [--out tradeoff.png]
        [--against RUN_DIR]

Each RUN_DIR is a ``sacam benchmark`` output folder (summary.json, results.csv). The
``sa-cam`` of each folder is one SA-CAM variant, labelled by the folder's model, layer and
SA-CAM options (operator, temperature, gamma, hops, base: ``--method-option sa-cam:...``);
every other method is a baseline point (one per method, model and layer, from the first
folder that has it). Make the variants with one run per variant, e.g.

    sacam benchmark DATA --methods grad-cam sa-cam --layer _blocks.15 \\
        --method-option sa-cam:gamma=1 --metrics insertion explanation_attack --out runs/g1

The chart has two panels, each oriented so that right and up are better (the registry's
direction of each value). Left: each variant's paired difference from the ``--reference``
method of its folder, with 95% intervals; the shaded quadrant is "better on both", and a
variant whose two intervals lie in it is green. Right: the means of every variant and
baseline over the images all of them have (a baseline's faithfulness and stability may
come from two folders of the same model and layer, e.g. a faithfulness run and a stability
run; ``random``, a fixed map and so stable by construction, is left out). The table
printed below compares each variant with the ``--reference`` method *of the same folder*
(same images, model and layer): paired mean differences with 95% intervals (Student's
t), and whether the variant is better on both axes by its means and by its intervals
(both intervals exclude 0 on the better side). ``--against RUN_DIR`` adds a table of each
variant minus the SA-CAM of that folder (the current default), paired on the same images.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from paired import paired_differences, t_interval

from sacam.evaluation.registry import value_info

SA = "sa-cam"


Values = dict[str, dict[str, float]]  # value name -> image -> value


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
    """Mean and 95% interval (Student's t) of a − b over the images both have."""
    mean, half, n = t_interval(paired_differences(a, b))
    return {"mean": mean, "ci95": half, "n": float(n)}


def _mean(values: dict[str, float], images: set[str]) -> float:
    """Mean of ``values`` over ``images`` (all of them where ``images`` is empty)."""
    chosen = [v for i, v in values.items() if not images or i in images]
    return sum(chosen) / len(chosen)


def _short(label: str) -> str:
    """A chart label: the variant's options, and its layer where not automatic."""
    text = label.replace("SA-CAM ", "")
    opts, _, setting = text.partition(" @ ")
    layer = setting.split(" ")[-1]
    return opts if layer == "auto" else f"{opts} @{layer}"


Row = tuple[str, dict[str, float], dict[str, float], bool, bool]
"""A variant's label, paired Δ faithfulness and Δ stability, better on both by means / 95%."""


def _paired_panel(
    ax: Any, fx: str, fy: str, sx: float, sy: float, reference: str, rows: list[Row]
) -> None:
    """Left panel: each variant's paired differences from the reference, 95% intervals."""
    ax.axhline(0, color="grey", lw=0.8)
    ax.axvline(0, color="grey", lw=0.8)
    for label, dx, dy, _by_mean, by_ci in rows:
        px, py = sx * dx["mean"], sy * dy["mean"]
        ax.errorbar(
            px,
            py,
            xerr=dx["ci95"],
            yerr=dy["ci95"],
            fmt="s",
            capsize=2,
            color="tab:green" if by_ci else "black",
        )
        ax.annotate(_short(label), (px, py), fontsize=7, xytext=(4, 4), textcoords="offset points")
    xmax = max([abs(sx * r[1]["mean"]) + r[1]["ci95"] for r in rows] + [1e-3])
    ymax = max([abs(sy * r[2]["mean"]) + r[2]["ci95"] for r in rows] + [1e-3])
    ax.fill_between([0, 1.1 * xmax], 0, 1.1 * ymax, color="tab:green", alpha=0.08)
    ax.set_xlim(-1.1 * xmax, 1.1 * xmax)
    ax.set_ylim(-1.1 * ymax, 1.1 * ymax)
    ax.set_xlabel(f"Δ {fx} (right is better)")
    ax.set_ylabel(f"Δ {fy} (up is better)")
    ax.set_title(f"SA-CAM variant − {reference} of its setting, paired, 95% interval", fontsize=9)


def _means_panel(
    ax: Any,
    fx: str,
    fy: str,
    sx: float,
    sy: float,
    variants: dict[str, Values],
    baselines: dict[str, Values],
) -> None:
    """Right panel: every variant's and baseline's means over the images all of them have."""
    groups = [(_short(k), v, "s", "black") for k, v in variants.items()]
    groups += [(k.replace("efficientnet-", ""), v, "o", "dimgrey") for k, v in baselines.items()]
    common = (
        set.intersection(*(set(v[fx]) & set(v[fy]) for _, v, _, _ in groups)) if groups else set()
    )
    for text, v, marker, color in groups:
        px, py = sx * _mean(v[fx], common), sy * _mean(v[fy], common)
        ax.plot(px, py, marker, color=color)
        ax.annotate(
            text, (px, py), fontsize=6, color=color, xytext=(3, 3), textcoords="offset points"
        )
    flip = {1.0: "", -1.0: "− "}
    ax.set_xlabel(f"{flip[sx]}{fx} (faithfulness; right is better)")
    ax.set_ylabel(f"{flip[sy]}{fy} (stability; up is better)")
    ax.set_title(
        f"means over the {len(common)} images every point has: SA-CAM variants (squares),\n"
        "baselines (grey; random, stable by construction, left out)",
        fontsize=8,
    )


def _chart(
    out: Path,
    fx: str,
    fy: str,
    sx: float,
    sy: float,
    reference: str,
    variants: dict[str, Values],
    baselines: dict[str, Values],
    rows: list[Row],
) -> None:
    """Two panels: paired differences against the reference, and every point's means."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5))
    _paired_panel(left, fx, fy, sx, sy, reference, rows)
    _means_panel(right, fx, fy, sx, sy, variants, baselines)
    fig.tight_layout()
    fig.savefig(out, dpi=150)
    plt.close(fig)


Loaded = dict[Path, tuple[dict[str, Any], dict[tuple[str, str], dict[str, float]]]]


def _collect(
    loaded: Loaded, fx: str, fy: str, reference: str
) -> tuple[dict[str, Values], dict[str, Values], list[Row]]:
    """SA-CAM variants, baselines with both values, and each variant's paired row."""
    sx, sy = _sign(fx), _sign(fy)
    variants: dict[str, Values] = {}
    found: dict[str, Values] = defaultdict(dict)
    rows: list[Row] = []
    for summary, per in loaded.values():
        table = summary["table"]
        for method, stats in table.items():
            if method == SA and fx in stats and fy in stats:
                variants[_variant(summary)] = {fx: per[(SA, fx)], fy: per[(SA, fy)]}
            elif method not in (SA, "random"):  # a baseline's values may come from two folders
                for value in (fx, fy):
                    if value in stats:
                        found[f"{method} @ {_setting(summary)}"].setdefault(
                            value, per[(method, value)]
                        )
        if SA in table and reference in table:
            dx = _paired(per[(SA, fx)], per[(reference, fx)])
            dy = _paired(per[(SA, fy)], per[(reference, fy)])
            if dx["n"] == 0 or dy["n"] == 0:
                continue  # no image with both values (failed pairs)
            by_mean = sx * dx["mean"] > 0 and sy * dy["mean"] > 0
            by_ci = sx * dx["mean"] - dx["ci95"] > 0 and sy * dy["mean"] - dy["ci95"] > 0
            rows.append((_variant(summary), dx, dy, by_mean, by_ci))
    baselines = {k: v for k, v in found.items() if fx in v and fy in v}
    return variants, baselines, rows


def _print_rows(rows: list[Row], fx: str, fy: str, reference: str) -> None:
    """The comparison table of each variant against the reference, then the winners."""
    print(
        f"\n| variant | Δ {fx} vs {reference} | Δ {fy} vs {reference} "
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
        f"\nVariants better than {reference} on both axes (95% intervals): "
        + (", ".join(winners) if winners else "none")
    )


def main() -> int:
    """Draw the chart and print the comparison table (Markdown)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--faithfulness", default="insertion")
    ap.add_argument("--stability", default="xattack_topk_topk@2")
    ap.add_argument("--reference", default="grad-cam")
    ap.add_argument("--out", type=Path, default=Path("tradeoff.png"))
    ap.add_argument(
        "--against",
        type=Path,
        default=None,
        help="a run folder whose SA-CAM is the current default: also print each variant "
        "minus it, paired (a variant should not be worse than the default on either axis)",
    )
    args = ap.parse_args()
    fx, fy = args.faithfulness, args.stability
    sx, sy = _sign(fx), _sign(fy)
    loaded = {folder.resolve(): _load(folder) for folder in args.runs}
    variants, baselines, rows = _collect(loaded, fx, fy, args.reference)
    _chart(args.out, fx, fy, sx, sy, args.reference, variants, baselines, rows)
    print(f"wrote {args.out}")
    _print_rows(rows, fx, fy, args.reference)
    if args.against is not None:
        _, per = loaded.get(args.against.resolve()) or _load(args.against)
        _against(args.against.name, per, variants, fx, fy, sx, sy)
    return 0


def _against(
    name: str,
    per: dict[tuple[str, str], dict[str, float]],
    variants: dict[str, Values],
    fx: str,
    fy: str,
    sx: float,
    sy: float,
) -> None:
    """Print each variant − the SA-CAM of run ``name`` (same images), with ▲/▼ per axis."""
    base = {fx: per[(SA, fx)], fy: per[(SA, fy)]}
    print(f"\n| variant − SA-CAM of {name} | Δ {fx} | Δ {fy} |")
    print("|---|---|---|")
    for label, v in variants.items():
        cells = []
        for value, sign in ((fx, sx), (fy, sy)):
            d = _paired(v[value], base[value])
            lo, hi = sign * d["mean"] - d["ci95"], sign * d["mean"] + d["ci95"]
            mark = "▲" if lo > 0 else "▼" if hi < 0 else ""
            cells.append(f"{d['mean']:+.4f} ± {d['ci95']:.4f}{mark}")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    raise SystemExit(main())
