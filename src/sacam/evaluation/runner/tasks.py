"""Benchmarks of detectors and segmenters: one map per annotated object, scored per object.

``run_benchmark`` hands a config with ``task="detection"`` or ``"segmentation"`` to
:func:`run_task_benchmark`. For every image of the dataset (:mod:`.task_data`) the model
runs once on the clean image, each annotated object is matched to a prediction and, for
every method, the matched predictions are explained and scored (:mod:`.task_scoring`).

The run writes, in ``config.out``:

- ``run.json``: the settings, written first;
- ``results.csv``: one row per object and method (``status`` ``explained`` or
  ``missed``; a missed object's metric cells are empty), with the matched prediction's
  score and IoU, the metric values, the random-map baselines and seconds per map; each
  image's rows are appended as one write of whole lines when it is done
  (:mod:`.task_store`);
- ``failures.csv``: ``image,error`` for each image that could not be scored (an
  unreadable image or mask, an annotation the model cannot take); the run goes on;
- ``summary.json`` and ``summary.md``: per method, each value's mean and 95% interval
  over the explained objects, the baselines' means, and the counts of objects, missed
  objects and failed images;
- ``report.html`` and ``examples.png``: the summary table, the settings, and the first
  explained objects with each method's map (:mod:`.task_report`).

A run resumes: rerun it into the same folder with the same settings (``--limit`` and
``--methods`` may change) after a kill or Ctrl-C, and the images already written are
skipped, a line cut by the kill is dropped, failed images are tried again (their old
failure rows dropped), and the summary covers this run's images and methods, each row
once. A folder holding a run with other settings is refused, naming them. One process
writes to a folder at a time (the folder lock of classifier runs).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from tqdm import tqdm

from ...errors import LayerError, MethodError, ModelError, SacamError
from ...models import LoadedModel
from ...preprocess import Preprocess
from ...registry import method_info
from ..config import BenchmarkConfig, load_run_model
from ..stats import format_mean_ci, mean_ci
from .store import RunLock, check_settings
from .summary import applied_settings
from .task_data import TaskImage, annotations_file, object_count, read_images
from .task_report import write_task_report
from .task_scoring import (
    TASK_METRICS,
    Match,
    baselines,
    explain_matches,
    match_image,
    score_maps,
)
from .task_store import SKIPPED, TaskStore

VALUES = {
    "pointing": "pointing_game",
    "energy_pointing": "energy_pointing_game",
    "deletion": "deletion",
    "insertion": "insertion",
}
BASELINES = ("pointing_baseline", "energy_baseline")
COLUMNS = ["image", "object", "label", "box", "method", "status", "score", "iou"]
STOPPING = (ModelError, LayerError, MethodError)
"""Errors of the run's settings (model, layer, method), not of one image: they end the run."""


def task_metrics(names: list[str], task: str) -> list[str]:
    """The metrics a detection or segmentation run scores (``default``/``all``: every one)."""
    chosen: list[str] = []
    for name in names:
        if name in ("default", "all"):
            chosen += TASK_METRICS
        elif name in TASK_METRICS:
            chosen.append(name)
        else:
            raise SacamError(
                f"metric {name} does not apply to --task {task}: its runs score "
                f"{', '.join(TASK_METRICS)} per object"
            )
    return list(dict.fromkeys(chosen))


def _refuse_classifier_options(config: BenchmarkConfig) -> None:
    given = [
        flag
        for flag, on in (
            ("--use-labels", config.use_labels),
            ("--save-maps", config.save_maps),
            ("--from-maps", config.from_maps is not None),
        )
        if on
    ]
    if given:
        raise SacamError(f"{', '.join(given)} apply to classifier runs, not --task {config.task}")


def _image_rows(
    lm: LoadedModel, image: TaskImage, config: BenchmarkConfig, methods: list[str]
) -> list[dict[str, Any]]:
    """The rows of one image for ``methods``: its objects matched, explained and scored."""
    _, x, matches = match_image(lm, image, config)
    found = [m for m in matches if m.target is not None]
    rows: list[dict[str, Any]] = []
    for method in methods:
        values: dict[str, torch.Tensor] = {}
        time_s = math.nan
        if found:
            t0 = time.perf_counter()
            maps = explain_matches(lm.model, x, found, method, config)
            time_s = (time.perf_counter() - t0) / len(found)
            values = score_maps(lm.model, x, maps, found, config)
        for k, match in enumerate(matches):
            rows.append(_row(image.name, k, match, method, config, values, found, time_s))
    return rows


def _row(
    name: str,
    k: int,
    match: Match,
    method: str,
    config: BenchmarkConfig,
    values: dict[str, torch.Tensor],
    found: list[Match],
    time_s: float,
) -> dict[str, Any]:
    box = match.obj.box
    row: dict[str, Any] = {
        "image": name,
        "object": k,
        "label": match.obj.label,
        "box": "" if box is None else " ".join(f"{v:.1f}" for v in box),
        "method": method,
        "status": "missed" if match.target is None else "explained",
        "score": match.score,
        "iou": match.iou,
    }
    if match.target is not None:
        i = next(j for j, m in enumerate(found) if m is match)
        row |= {name: float(v[i]) for name, v in values.items()}
        row["time_s"] = time_s
    row |= baselines(match.obj, config.tolerance)
    return row


def summarize_rows(
    rows: list[dict[str, Any]], config: BenchmarkConfig, *, failures: int = 0, other_rows: int = 0
) -> dict[str, Any]:
    """Per method: mean and 95% interval of each value over explained objects; the counts.

    ``failures`` is the number of this run's images that could not be scored, and
    ``other_rows`` that of rows other runs left in ``results.csv`` (other images or
    methods), which are not summarised.
    """
    values = [VALUES[m] for m in config.metrics]
    table: dict[str, dict[str, Any]] = {}
    for method in config.methods:
        mine = [r for r in rows if r["method"] == method]
        done = [r for r in mine if r["status"] == "explained"]
        entry: dict[str, Any] = {v: mean_ci([r[v] for r in done]) for v in values}
        entry["time_s"] = mean_ci([r["time_s"] for r in done])
        entry |= {b: mean_ci([r[b] for r in done])["mean"] for b in BASELINES}
        entry |= {"objects": len(mine), "explained": len(done), "missed": len(mine) - len(done)}
        table[method] = entry
    first = [r for r in rows if r["method"] == config.methods[0]]
    return {
        "task": config.task,
        "values": values,
        "table": table,
        "images": len({r["image"] for r in first}),
        "objects": len(first),
        "missed": sum(r["status"] == "missed" for r in first),
        "failures": failures,
        "other_rows": other_rows,
        "settings": applied_settings(
            json.loads(json.dumps(config.settings(), default=str)), config.metrics
        ),
    }


def render_task_markdown(summary: dict[str, Any]) -> str:
    """The summary of a detection or segmentation run as a Markdown table."""
    values = summary["values"]
    lines = [
        f"## {summary['task']}: {summary['objects']} objects in {summary['images']} images, "
        f"{summary['missed']} missed (not found by the model, not scored)",
        "",
        "| method | " + " | ".join(values) + " | seconds per map |",
        "|---" * (len(values) + 2) + "|",
    ]
    for method, entry in summary["table"].items():
        cells = [format_mean_ci(entry[v]) for v in values] + [format_mean_ci(entry["time_s"])]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    first: dict[str, Any] = next(iter(summary["table"].values()), {})
    lines.append("")
    if first:
        lines.append(
            f"Random-map baselines (mean over explained objects): pointing game "
            f"{first['pointing_baseline']:.3f}, energy inside the region "
            f"{first['energy_baseline']:.3f}. Intervals: 95%, Student's t over objects."
        )
    lines.append(
        f"Failed images (not scored, listed in failures.csv): {summary.get('failures', 0)}."
    )
    if summary.get("other_rows"):
        lines.append(
            f"{summary['other_rows']} row(s) of other runs (other images or methods) are kept "
            "in results.csv and not summarised here."
        )
    return "\n".join(lines)


def _header(config: BenchmarkConfig) -> list[str]:
    """The columns of results.csv."""
    return [*COLUMNS, *(VALUES[m] for m in config.metrics), *BASELINES, "time_s"]


def _parsed(row: dict[str, str]) -> dict[str, Any]:
    """A results.csv row with its numbers as floats (an empty cell: NaN)."""
    out: dict[str, Any] = dict(row)
    for key in ("score", "iou", *VALUES.values(), *BASELINES, "time_s"):
        if key in row:
            out[key] = float(row[key]) if row[key] else math.nan
    return out


def _scoped_rows(
    store: TaskStore, images: list[TaskImage], config: BenchmarkConfig
) -> tuple[list[dict[str, Any]], int]:
    """The rows of the run's images and methods, in dataset order; the count of others."""
    order = {image.name: i for i, image in enumerate(images)}
    rank = {m: i for i, m in enumerate(config.methods)}
    mine: list[dict[str, Any]] = []
    other = 0
    for r in store.rows():
        if r["image"] in order and r["method"] in rank:
            mine.append(_parsed(r))
        else:
            other += 1
    mine.sort(key=lambda r: (order[r["image"]], rank[r["method"]], int(r["object"])))
    return mine, other


def _counter(images: list[TaskImage], preprocess: Preprocess) -> Callable[[str], int | None]:
    """The number of objects of an image by name (None: not in the dataset, or unreadable)."""
    by_name = {image.name: image for image in images}

    def count(name: str) -> int | None:
        if name not in by_name:
            return None
        try:
            return object_count(by_name[name], preprocess)
        except SKIPPED:
            return None

    return count


def _compute(
    lm: LoadedModel,
    store: TaskStore,
    todo: list[tuple[TaskImage, list[str]]],
    config: BenchmarkConfig,
    progress: bool | None,
) -> None:
    """Score each image for the methods it misses; append its rows, or its failure."""
    disable = None if progress is None else not progress
    for image, methods in tqdm(todo, unit="img", desc=config.task, disable=disable):
        try:
            rows = _image_rows(lm, image, config, methods)
        except STOPPING:
            raise
        except SKIPPED as exc:
            store.failure(image.name, f"{type(exc).__name__}: {exc}")
            continue
        store.append(rows)


def run_task_benchmark(config: BenchmarkConfig, *, progress: bool | None = None) -> dict[str, Any]:
    """Explain and score every annotated object of a detection or segmentation dataset.

    Resumes a run in the same folder with the same settings (see the module docstring).

    Args:
        config: the run's settings, ``task`` ``"detection"`` or ``"segmentation"``.
        progress: a progress bar over images (None: on a terminal only).

    Returns the summary (also written to ``summary.json``; see the module docstring) and,
    under ``files``, the names of the files written in ``config.out``.
    """
    if config.task not in ("detection", "segmentation"):
        raise SacamError(f"run_task_benchmark runs detection or segmentation, not {config.task}")
    _refuse_classifier_options(config)
    config = replace(config, metrics=task_metrics(config.metrics, config.task))
    for m in config.methods:
        method_info(m)  # unknown names fail before any work, listing the valid ones
    annotations = annotations_file(config.data_dir, config.annotations)
    listed = read_images(config.data_dir, config.task, annotations, config.class_names)
    images = listed if config.limit is None else listed[: config.limit]
    config.out.mkdir(parents=True, exist_ok=True)
    with RunLock(config.out):
        torch.manual_seed(config.seed)
        lm = load_run_model(config)
        check_settings(config.out, config.settings(), BenchmarkConfig(config.data_dir).settings())
        store = TaskStore(config.out, _header(config))
        done = store.done(_counter(listed, lm.preprocess))
        todo = [
            (image, missing)
            for image in images
            if (missing := [m for m in config.methods if (image.name, m) not in done])
        ]
        store.forget_failures({image.name for image, _ in todo})
        _compute(lm, store, todo, config, progress)
        rows, other = _scoped_rows(store, images, config)
        failures = len(store.failed() & {image.name for image in images})
        summary = summarize_rows(rows, config, failures=failures, other_rows=other)
        (config.out / "summary.json").write_text(json.dumps(summary, indent=1))
        (config.out / "summary.md").write_text(render_task_markdown(summary) + "\n")
        written = write_task_report(config, lm, images, rows, summary)
    files = ["results.csv", "failures.csv", "summary.md", "summary.json", "run.json", *written]
    return summary | {"files": files}
