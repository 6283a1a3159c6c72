"""Benchmarks of detectors and segmenters: one map per annotated object, scored per object.

``run_benchmark`` hands a config with ``task="detection"`` or ``"segmentation"`` to
:func:`run_task_benchmark`. For every image of the dataset (:mod:`.task_data`) the model
runs once on the clean image, each annotated object is matched to a prediction and, for
every method, the matched predictions are explained and scored (:mod:`.task_scoring`).

The run writes, in ``config.out``:

- ``results.csv``: one row per object and method (``status`` ``explained`` or
  ``missed``; a missed object's metric cells are empty), with the matched prediction's
  score and IoU, the metric values, the random-map baselines and seconds per map;
- ``summary.json`` and ``summary.md``: per method, each value's mean and 95% interval
  over the explained objects, the baselines' means, and the counts of objects and missed
  objects;
- ``run.json``: the settings.

A run is computed whole each time (no resume); the folder lock of classifier runs holds.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import replace
from typing import Any

import torch
from tqdm import tqdm

from ...errors import SacamError
from ...images import load_image
from ...models import LoadedModel
from ...registry import method_info
from ..config import BenchmarkConfig, load_run_model
from ..stats import format_mean_ci, mean_ci
from .store import RunLock
from .task_data import (
    TaskImage,
    annotations_file,
    detection_objects,
    read_images,
    segmentation_objects,
)
from .task_scoring import (
    TASK_METRICS,
    Match,
    baselines,
    explain_matches,
    match_detections,
    match_segments,
    score_maps,
)

VALUES = {
    "pointing": "pointing_game",
    "energy_pointing": "energy_pointing_game",
    "deletion": "deletion",
    "insertion": "insertion",
}
BASELINES = ("pointing_baseline", "energy_baseline")
COLUMNS = ["image", "object", "label", "box", "method", "status", "score", "iou"]


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


def _image_rows(lm: LoadedModel, image: TaskImage, config: BenchmarkConfig) -> list[dict[str, Any]]:
    """Every row of one image: its objects matched, then explained and scored per method."""
    picture = load_image(str(image.path))
    pixels = lm.preprocess.pixels(picture)
    x = lm.preprocess.normalize(pixels)[None].to(config.device)
    if config.task == "detection":
        objects = detection_objects(image, picture.size, lm.preprocess)
        matches = match_detections(lm.model, x, objects, config)
    else:
        objects = segmentation_objects(image, lm.preprocess)
        matches = match_segments(lm.model, x, objects, config)
    found = [m for m in matches if m.target is not None]
    rows: list[dict[str, Any]] = []
    for method in config.methods:
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


def summarize_rows(rows: list[dict[str, Any]], config: BenchmarkConfig) -> dict[str, Any]:
    """Per method: mean and 95% interval of each value over explained objects; the counts."""
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
        "settings": json.loads(json.dumps(config.settings(), default=str)),
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
    if first:
        lines += [
            "",
            f"Random-map baselines (mean over explained objects): pointing game "
            f"{first['pointing_baseline']:.3f}, energy inside the region "
            f"{first['energy_baseline']:.3f}. Intervals: 95%, Student's t over objects.",
        ]
    return "\n".join(lines)


def _write(config: BenchmarkConfig, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    values = summary["values"]
    header = [*COLUMNS, *values, *BASELINES, "time_s"]
    with (config.out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, header, restval="")
        writer.writeheader()
        writer.writerows(rows)
    (config.out / "summary.json").write_text(json.dumps(summary, indent=1))
    (config.out / "summary.md").write_text(render_task_markdown(summary) + "\n")
    (config.out / "run.json").write_text(json.dumps(summary["settings"], indent=1))


def run_task_benchmark(config: BenchmarkConfig, *, progress: bool | None = None) -> dict[str, Any]:
    """Explain and score every annotated object of a detection or segmentation dataset.

    Args:
        config: the run's settings, ``task`` ``"detection"`` or ``"segmentation"``.
        progress: a progress bar over images (None: on a terminal only).

    Returns the summary (also written to ``summary.json``; see the module docstring).
    """
    if config.task not in ("detection", "segmentation"):
        raise SacamError(f"run_task_benchmark runs detection or segmentation, not {config.task}")
    _refuse_classifier_options(config)
    config = replace(config, metrics=task_metrics(config.metrics, config.task))
    for m in config.methods:
        method_info(m)  # unknown names fail before any work, listing the valid ones
    annotations = annotations_file(config.data_dir, config.annotations)
    images = read_images(config.data_dir, config.task, annotations, config.class_names)
    if config.limit is not None:
        images = images[: config.limit]
    config.out.mkdir(parents=True, exist_ok=True)
    with RunLock(config.out):
        torch.manual_seed(config.seed)
        lm = load_run_model(config)
        rows: list[dict[str, Any]] = []
        disable = None if progress is None else not progress
        for image in tqdm(images, unit="img", desc=config.task, disable=disable):
            rows += _image_rows(lm, image, config)
        summary = summarize_rows(rows, config)
        _write(config, rows, summary)
    return summary
