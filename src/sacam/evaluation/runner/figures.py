"""Figures of a run: mean curves, metric bars ranked by method, example maps.

Every method has its own colour and marker (fixed by its place in the method registry,
so a method looks the same in every run; tab20 without its greys, then tab20b and
tab20c's darkest shades); SA-CAM is drawn in
black, thicker and on top; the random baseline is grey and dashed. Legends sit in their
own panel beside the axes.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib as mpl
import torch

from ...errors import InputError
from ...registry import list_methods
from ...viz import save_grid, saved_figure
from ..registry import arrow, value_of
from .data import batches
from .state import Run
from .summary import value_columns

MARKERS = ("o", "s", "^", "v", "D", "P", "X", "h", "<", ">", "p", "d", "8", "H", "1", "2")
EMPHASISED = "sa-cam"
CURVE_TITLES = {
    "deletion": "Deletion (lower is better)",
    "insertion": "Insertion (higher is better)",
    "road_morf": "ROAD, most relevant first (lower is better)",
    "road_lerf": "ROAD, least relevant first (higher is better)",
}


def _finite_or_zero(x: float) -> float:
    return x if math.isfinite(x) else 0.0


def method_style(method: str) -> dict[str, Any]:
    """Matplotlib keyword arguments that draw ``method`` the same way in every figure."""
    names = list_methods()
    index = names.index(method) if method in names else len(names) + sum(map(ord, method))
    if method == EMPHASISED:
        return {"color": "black", "marker": "*", "linewidth": 2.6, "markersize": 9, "zorder": 5}
    if method == "random":
        return {"color": "0.55", "marker": "x", "linestyle": "--", "linewidth": 1.2, "zorder": 2}
    tab20 = [mpl.colormaps["tab20"](i) for i in range(20) if i not in (14, 15)]  # no greys
    # nine dark shades, nine light ones, then the darkest of tab20b's five hues and of
    # tab20c's four non-grey hues, then their lighter shades: 54 distinct colours
    b = [mpl.colormaps["tab20b"](i) for i in range(20)]
    c = [mpl.colormaps["tab20c"](i) for i in range(16)]
    order = tab20[0::2] + tab20[1::2] + b[0::4] + c[0::4]
    order += [x for i, x in enumerate(b) if i % 4] + [x for i, x in enumerate(c) if i % 4]
    return {
        "color": order[index % len(order)],
        "marker": MARKERS[index % len(MARKERS)],
        "linewidth": 1.4,
        "zorder": 3,
    }


def run_curves(run: Run) -> dict[tuple[str, str], list[list[float]]]:
    """Curves of this run by (method, kind); the last record of a pair wins."""
    images = {it.name for it in run.dataset.items}
    methods = set(run.config.methods)
    latest: dict[tuple[str, str, str], list[float]] = {}
    with run.store.curves.open(encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            if d["image"] in images and d["method"] in methods:
                latest[(d["image"], d["method"], d["kind"])] = d["values"]
    acc: dict[tuple[str, str], list[list[float]]] = defaultdict(list)
    for (_, method, kind), values in latest.items():
        acc[(method, kind)].append(values)
    return acc


def plot_mean_curves(
    path: Path,
    curves: dict[tuple[str, str], list[list[float]]],
    kinds: list[str],
    xs: Any,
    xlabel: str,
    methods: list[str],
) -> Path | None:
    """One panel per curve kind (mean over images), plus a legend panel at the right."""
    present = [k for k in kinds if any(kind == k for _, kind in curves)]
    if not present:
        return None
    n = len(present)
    size = (4.6 * n + 2.4, 3.6)
    ratios = [4.6] * n + [2.4]
    with saved_figure(
        path, dpi=90, ncols=n + 1, figsize=size, squeeze=False, width_ratios=ratios
    ) as (_, axes):
        for ax, kind in zip(axes[0], present, strict=False):
            for method in methods:
                cs = curves.get((method, kind))
                if not cs:
                    continue
                length = min(len(c) for c in cs)
                mean = torch.tensor([c[:length] for c in cs]).mean(0).tolist()
                style = {"markersize": 4} | method_style(method)
                ax.plot(xs(length), mean, label=method, markevery=max(1, length // 8), **style)
            ax.set_title(CURVE_TITLES.get(kind, kind), fontsize=9)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("class probability")
        legend_ax = axes[0][-1]
        legend_ax.axis("off")
        handles, labels = axes[0][0].get_legend_handles_labels()
        legend_ax.legend(handles, labels, loc="center left", fontsize=8, frameon=False)
    return path


def ranked(table: dict[str, dict[str, Any]], value: str) -> list[str]:
    """Methods with ``value``, best first (NaN last)."""
    higher = value_of(value).higher_is_better
    methods = [m for m, t in table.items() if value in t]

    def key(m: str) -> float:
        mean = table[m][value]["mean"]
        if not math.isfinite(mean):
            return math.inf
        return -mean if higher else mean

    return sorted(methods, key=key)


def _columns(n: int) -> int:
    """Panels per row for ``n`` panels: the fewest empty cells, three per row on ties."""
    return min((3, 4, 2), key=lambda c: (math.ceil(n / c) * c - n, abs(c - 3))) if n > 2 else n


def _interval(stat: dict[str, Any]) -> tuple[float, float]:
    """Distances below and above the mean of its 95% interval (0 where there is none)."""
    mean = stat["mean"]
    lo, hi = stat.get("ci_low", math.nan), stat.get("ci_high", math.nan)
    if math.isfinite(lo) and math.isfinite(hi) and math.isfinite(mean):
        return max(0.0, mean - lo), max(0.0, hi - mean)
    half = _finite_or_zero(stat.get("ci95", math.nan))
    return half, half


def plot_metric_bars(path: Path, summary: dict[str, Any]) -> Path | None:
    """One panel per value: each method's mean and 95% interval, in one method order.

    Every panel lists the methods in the run's order, so a method sits at the same place
    in each; the best mean's label is bold, with a ★ where the summary's paired comparison
    decides it. The means are points, not bars, so each axis spans the values (not 0 to
    the values) and the differences between methods show.
    """
    table = summary["table"]
    names = value_columns(table)
    if not names:
        return None
    cols = _columns(len(names))
    nrows = math.ceil(len(names) / cols)
    size = (4.2 * cols, 3.2 * nrows)
    with saved_figure(path, dpi=90, nrows=nrows, ncols=cols, figsize=size, squeeze=False) as (
        _,
        axes,
    ):
        for ax, value in zip(axes.flat, names, strict=False):
            order = [m for m, t in table.items() if value in t]
            top = ranked(table, value)[:1]
            decided = bool(summary.get("best", {}).get(value, {}).get("decided"))
            for x, m in enumerate(order):
                low, high = _interval(table[m][value])
                style = method_style(m)
                ax.errorbar(
                    [x],
                    [table[m][value]["mean"]],
                    yerr=[[low], [high]],
                    fmt=style["marker"],
                    color=style["color"],
                    markersize=9 if m == EMPHASISED else 6,
                    markeredgecolor="gold" if m == EMPHASISED else style["color"],
                    capsize=3,
                )
            ax.margins(x=0.15, y=0.1)
            ax.grid(axis="y", alpha=0.3)
            labels = [f"★ {m}" if m in top and decided else m for m in order]
            ax.set_xticks(range(len(order)), labels, rotation=45, ha="right", fontsize=7)
            for tick, m in zip(ax.get_xticklabels(), order, strict=True):
                if m in top:
                    tick.set_fontweight("bold")
            ax.set_title(f"{value_of(value).description} {arrow(value)}", fontsize=8)
        for ax in list(axes.flat)[len(names) :]:
            ax.remove()
    return path


def write_figures(run: Run, summary: dict[str, Any]) -> list[Path]:
    """Every figure of the run; returns the files written."""
    out, methods = run.config.out, run.config.methods
    curves = run_curves(run)
    written = [
        plot_mean_curves(
            out / "deletion_insertion.png",
            curves,
            ["deletion", "insertion"],
            lambda n: torch.linspace(0, 1, n).tolist(),
            "fraction of pixels switched",
            methods,
        ),
        plot_mean_curves(
            out / "road.png",
            curves,
            ["road_morf", "road_lerf"],
            lambda n: list(run.config.road_percentages)[:n],
            "fraction of pixels removed (p)",
            methods,
        ),
        plot_metric_bars(out / "metrics.png", summary),
        _examples(run),
    ]
    return [p for p in written if p is not None]


def _examples(run: Run) -> Path | None:
    pre = run.lm.preprocess
    items = [it for it in run.dataset.items if it.name in run.predictions][:4]
    if not items:
        return None
    (loaded,) = list(batches(items, pre, len(items), 1))
    if not loaded.items:
        return None
    x = pre.normalize(loaded.pixels.to(run.config.device))
    names = [it.name for it in loaded.items]
    if run.reader is not None:  # the saved maps, not recomputed
        reader = run.reader
        try:
            maps = {m: reader.load(m, names)[0] for m in run.config.methods}
        except InputError:
            return None
    else:
        maps = {m: run.cam(m)(x).cpu() for m in run.config.methods}
    path = run.config.out / "examples.png"
    titles = []
    for name in names:
        pred = run.predictions[name]
        cls = int(pred["top1"])
        titles.append(f"{name}: {run.lm.class_name(cls)} {float(pred['prob']):.2f}")
    save_grid(list(loaded.pixels), maps, path, titles=titles)
    return path
