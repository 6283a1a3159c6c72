"""The summary of a run: mean and 95% interval per method and value, exactly this run's.

The summary covers this run's images × methods × metric values; rows that other runs left
in ``results.csv`` (another ``--limit``, other methods) stay in the file and are counted
as such, never averaged in.

Each mean has a 95% bootstrap percentile interval (``ci_low``, ``ci_high``: the 2.5th and
97.5th percentiles of the means of resampled images), which lies within the values' own
range, so a proportion's interval never leaves [0, 1] (``ci95``, Student's t half-width,
stays for comparison with older runs). Per value, the best method is compared with the
runner-up on the same images: ``best[value]["decided"]`` is true only when the 95%
Student's t interval of their paired differences excludes 0.
"""

from __future__ import annotations

import csv
import json
import math
import platform
from collections import defaultdict
from importlib.metadata import version
from typing import Any

import numpy as np
import torch

from ..registry import arrow, split_eps, value_directions, value_info, written_names
from ..stats import format_mean_ci, mean_ci
from .state import Run


def _version(pkg: str) -> str:
    try:
        return version(pkg)
    except Exception:
        return "?"


def _scoped_rows(
    run: Run, grid_names: list[str]
) -> tuple[dict[tuple[str, str], list[tuple[str, float]]], int, set[str]]:
    """Values of this run by (method, value name); the count of other rows; images seen."""
    images = {it.name for it in run.dataset.items} | set(grid_names)
    methods = set(run.config.methods)
    eps = run.config.epsilons
    names = {n for info in run.metrics for n in written_names(info, eps)} | {"time_s"}
    by: dict[tuple[str, str], list[tuple[str, float]]] = defaultdict(list)
    other = 0
    seen: set[str] = set()
    for r in run.store.rows():
        if r["image"] in images and r["method"] in methods and r["metric"] in names:
            by[(r["method"], r["metric"])].append((r["image"], float(r["value"])))
            if not r["image"].startswith("grid-"):
                seen.add(r["image"])
        else:
            other += 1
    return by, other, seen


def _failed_pairs(
    run: Run, grid_names: list[str], by: dict[tuple[str, str], list[tuple[str, float]]]
) -> set[tuple[str, str]]:
    """The failed pairs of the run: once each, of its images and grids, none with results.

    (A folder written before resumes dropped retried pairs' rows can hold a pair twice,
    or a pair that has since succeeded; images past a smaller ``--limit`` are not this
    run's.)
    """
    images = {it.name for it in run.dataset.items} | set(grid_names)
    finished = {
        (image, method)
        for (method, metric), pairs in by.items()
        if metric == "time_s"
        for image, _ in pairs
    }
    with run.store.failures.open(encoding="utf-8", newline="") as f:
        return {
            (r["image"], r["method"])
            for r in csv.DictReader(f)
            if r["method"] in run.config.methods and r["image"] in images
        } - finished


def _stats(
    metric: str, pairs: list[tuple[str, float]], predictions: dict[str, dict[str, str]]
) -> dict[str, Any]:
    vals = [v for _, v in pairs]
    if metric == "pointing_game":  # accuracy per class, then the mean over classes
        per_class: dict[str, list[float]] = defaultdict(list)
        for image, v in pairs:
            if math.isfinite(v):
                per_class[predictions.get(image, {}).get("label", "?")].append(v)
        vals = [sum(v) / len(v) for v in per_class.values()]
    if metric == "time_s":
        vals = [v for img, v in pairs if not img.startswith("grid-")]
    stats: dict[str, Any] = dict(mean_ci(vals))
    stats["ci_low"], stats["ci_high"] = bootstrap_interval(vals)
    info = value_info(metric)
    stats["higher_is_better"] = bool(info and info.higher_is_better)
    return stats


BOOTSTRAP_RESAMPLES = 2000

#: Settings that only some metrics use: shown only when one of those metrics ran.
METRIC_SETTINGS = {
    "steps": ("deletion", "insertion"),
    "curve_inputs_per_pass": ("deletion", "insertion"),
    "road_percentages": ("road",),
    "annotations": ("pointing", "energy_pointing"),
    "tolerance": ("pointing", "energy_pointing"),
    "grid_n": ("grid_pointing",),
    "grid_threshold": ("grid_pointing",),
    "grid_count": ("grid_pointing",),
    "grid_smooth": ("grid_pointing",),
    "attacks": ("explanation_attack",),
    "eps": ("explanation_attack",),
    "attack_step": ("explanation_attack",),
    "iterations": ("explanation_attack",),
    "topk": ("explanation_attack",),
    "step_fraction": ("adversarial", "explanation_attack"),
    "epsilons": ("adversarial", "explanation_attack"),
    "adv_iterations": ("adversarial",),
    "sanity_layers": ("sanity",),
}


def bootstrap_interval(values: list[float], seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean (NaN for fewer than two values).

    The interval lies within the values' own range, so a bounded metric's interval never
    leaves its bounds: the resampled means can only stray from it by rounding (three
    copies of 0.1 average to 0.10000000000000002), and the ends are clipped to it.

    Example:
        >>> lo, hi = bootstrap_interval([0.0, 1.0, 1.0, 1.0])
        >>> 0.0 <= lo <= 0.75 <= hi <= 1.0
        True
    """
    vals = np.array([v for v in values if math.isfinite(v)], dtype=np.float64)
    if len(vals) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = vals[rng.integers(0, len(vals), (BOOTSTRAP_RESAMPLES, len(vals)))].mean(1)
    lo, hi = np.clip(np.percentile(means, [2.5, 97.5]), vals.min(), vals.max())
    return float(lo), float(hi)


def applied_settings(settings: dict[str, Any], metrics: list[str]) -> dict[str, Any]:
    """``settings`` without those of metrics that did not run."""
    return {
        k: v
        for k, v in settings.items()
        if k not in METRIC_SETTINGS or any(m in metrics for m in METRIC_SETTINGS[k])
    }


def _by_image(pairs: list[tuple[str, float]]) -> dict[str, float]:
    return {image: v for image, v in pairs if math.isfinite(v)}


def decide_best(
    by: dict[tuple[str, str], list[tuple[str, float]]], table: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Per value: the best mean's methods, the runner-up, and whether a paired interval decides.

    The best and the runner-up are compared on the images both have: ``decided`` when the
    95% Student's t interval of the per-image differences lies on the better side of 0.
    """
    best: dict[str, dict[str, Any]] = {}
    for value in value_columns(table):
        order = [m for m in ranked_methods(table, value) if math.isfinite(table[m][value]["mean"])]
        if not order:
            continue
        top = table[order[0]][value]["mean"]
        tied = [m for m in order if table[m][value]["mean"] == top]
        entry: dict[str, Any] = {"methods": tied, "runner_up": None, "decided": False}
        if len(tied) == 1 and len(order) > 1:
            a, b = _by_image(by[(order[0], value)]), _by_image(by[(order[1], value)])
            diffs = [a[i] - b[i] for i in sorted(a.keys() & b.keys())]
            stat = mean_ci(diffs)
            sign = 1.0 if table[order[0]][value]["higher_is_better"] else -1.0
            entry |= {
                "runner_up": order[1],
                "difference": stat["mean"],
                "difference_ci95": stat["ci95"],
                "pairs": len(diffs),
                "decided": bool(sign * stat["mean"] - stat["ci95"] > 0),
            }
        best[value] = entry
    return best


def ranked_methods(table: dict[str, dict[str, Any]], value: str) -> list[str]:
    """Methods with ``value``, best mean first (NaN last)."""
    higher = bool(value_info(value) and value_info(value).higher_is_better)  # type: ignore[union-attr]
    methods = [m for m, t in table.items() if value in t]

    def key(m: str) -> float:
        mean = table[m][value]["mean"]
        return math.inf if not math.isfinite(mean) else (-mean if higher else mean)

    return sorted(methods, key=key)


def summarize(run: Run, grid_names: list[str]) -> dict[str, Any]:
    """Write summary.json and summary.md from results.csv; returns the summary."""
    cfg = run.config
    by, other, seen = _scoped_rows(run, grid_names)
    table: dict[str, dict[str, Any]] = {m: {} for m in cfg.methods}
    for (method, metric), pairs in by.items():
        table[method][metric] = _stats(metric, pairs, run.predictions)
    failures = _failed_pairs(run, grid_names, by)
    ran = [m.name for m in run.metrics]
    settings = applied_settings(cfg.settings(), ran) | {"metrics": ran}
    summary = {
        "settings": settings
        | {
            "model": run.lm.name,
            "data_layout": run.dataset.layout,
            "images": len(seen),
            "images_listed": len(run.dataset.items),
            "methods": cfg.methods,
            "device": cfg.device,
            "scores": "softmax probabilities",
            "class": "labelled class" if cfg.use_labels else "top-1 on the clean image",
            "versions": {
                p: _version(p) for p in ("sacam", "torch", "numpy", "scikit-image", "scipy")
            },
            "python": platform.python_version(),
            "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
        },
        "table": table,
        "best": decide_best(by, table),
        "failures": len(failures),
        "other_rows": other,
    }
    (cfg.out / "summary.json").write_text(json.dumps(summary, indent=1))
    (cfg.out / "summary.md").write_text(render_markdown(summary) + "\n")
    return summary


def value_columns(table: dict[str, dict[str, Any]]) -> list[str]:
    """The value names present in a summary table, in registry order (then by ε)."""
    present = {m for t in table.values() for m in t if value_info(m) is not None}
    order = {name: i for i, name in enumerate(value_directions())}

    def key(name: str) -> tuple[int, float]:
        base, eps = split_eps(name)
        return order[base], -1.0 if eps is None else eps

    return sorted(present, key=key)


def format_interval(stat: dict[str, Any]) -> str:
    """``"mean [low, high]"`` to 3 decimals; the mean alone where there is no interval.

    Example:
        >>> format_interval({"mean": 0.5, "ci_low": 0.25, "ci_high": 0.75})
        '0.500 [0.250, 0.750]'
    """
    lo, hi = stat.get("ci_low", math.nan), stat.get("ci_high", math.nan)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return format_mean_ci(stat) if "ci95" in stat else f"{stat['mean']:.3f}"
    return f"{stat['mean']:.3f} [{lo:.3f}, {hi:.3f}]"


def render_markdown(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table (rows: methods; columns: values with arrows)."""
    table = summary["table"]
    names = value_columns(table)
    head = "| method | " + " | ".join(f"{m} {arrow(m)}" for m in names) + " | map s / image |"
    lines = [head, "|---" * (len(names) + 2) + "|"]
    for method, t in table.items():
        cells = []
        for m in names:
            s = t.get(m)
            cells.append("–" if s is None else format_interval(s))
        time_s = t.get("time_s", {}).get("mean", float("nan"))
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {time_s:.3f} |")
    lines.append("")
    lines.append(
        f"Mean [95% bootstrap interval] over this run's {summary['settings']['images']} "
        "image(s). "
        f"{summary['failures']} failed pair(s)."
    )
    if summary.get("other_rows"):
        lines.append(
            f"{summary['other_rows']} row(s) of other runs (other images, methods or metrics) "
            "are kept in results.csv and not summarised here."
        )
    lines.append("Settings: " + json.dumps(summary["settings"], default=str))
    return "\n".join(lines)
