"""The summary of a run: mean and 95% interval per method and value, exactly this run's.

The summary covers this run's images × methods × metric values; rows that other runs left
in ``results.csv`` (another ``--limit``, other methods) stay in the file and are counted
as such, never averaged in.
"""

from __future__ import annotations

import csv
import json
import math
import platform
from collections import defaultdict
from importlib.metadata import version
from typing import Any

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
    info = value_info(metric)
    stats["higher_is_better"] = bool(info and info.higher_is_better)
    return stats


def summarize(run: Run, grid_names: list[str]) -> dict[str, Any]:
    """Write summary.json and summary.md from results.csv; returns the summary."""
    cfg = run.config
    by, other, seen = _scoped_rows(run, grid_names)
    table: dict[str, dict[str, Any]] = {m: {} for m in cfg.methods}
    for (method, metric), pairs in by.items():
        table[method][metric] = _stats(metric, pairs, run.predictions)
    failures = _failed_pairs(run, grid_names, by)
    settings = cfg.settings() | {"metrics": [m.name for m in run.metrics]}
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


def render_markdown(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table (rows: methods; columns: values with arrows)."""
    table = summary["table"]
    names = value_columns(table)
    head = "| method | " + " | ".join(f"{m} {arrow(m)}" for m in names) + " | s / image |"
    lines = [head, "|---" * (len(names) + 2) + "|"]
    for method, t in table.items():
        cells = []
        for m in names:
            s = t.get(m)
            cells.append("–" if s is None else format_mean_ci(s))
        time_s = t.get("time_s", {}).get("mean", float("nan"))
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {time_s:.3f} |")
    lines.append("")
    lines.append(
        f"Mean ± 95% interval over this run's {summary['settings']['images']} image(s). "
        f"{summary['failures']} failed pair(s)."
    )
    if summary.get("other_rows"):
        lines.append(
            f"{summary['other_rows']} row(s) of other runs (other images, methods or metrics) "
            "are kept in results.csv and not summarised here."
        )
    lines.append("Settings: " + json.dumps(summary["settings"], default=str))
    return "\n".join(lines)
