"""``sacam benchmark --task detection|segmentation``: its options and its printed summary.

A detection or segmentation run explains each annotated object (see
:mod:`sacam.evaluation.runner.tasks`); these options choose the task, when a prediction
matches an object, and the pointing game's tolerance (which classifier runs read too).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from ..errors import SacamError
from ._args import add_dense_options, unit_float
from ._tasks import add_task_argument

if TYPE_CHECKING:
    from ..evaluation.config import BenchmarkConfig

_DEFAULTS = (("--min-iou", "min_iou", 0.5), ("--score-threshold", "score_threshold", 0.5))
_DENSE = (
    ("--box-format", "box_format", "xywh"),
    ("--objectness", "objectness", False),
    ("--dense-layout", "dense_layout", "auto"),
)


def add_benchmark_task_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--task``, ``--min-iou``, ``--score-threshold`` and ``--tolerance``."""
    add_task_argument(
        parser,
        "classification (default); detection or segmentation: one map per annotated "
        "object of --annotations (file,label,x0,y0,x1,y1 boxes; file,mask class-index "
        "masks or file,mask,label instances), scored with pointing, energy_pointing, "
        "deletion and insertion; rerun into the same --out to resume, failures.csv lists "
        "images that could not be scored, report.html shows the table and examples",
    )
    parser.add_argument(
        "--min-iou",
        type=unit_float,
        default=0.5,
        help="detection, segmentation: the least IoU of a prediction with an object to "
        "count as found; objects found by none are reported as missed (default: 0.5)",
    )
    parser.add_argument(
        "--score-threshold",
        type=unit_float,
        default=0.5,
        help="detection: the least score of a detection that may match (default: 0.5)",
    )
    add_dense_options(parser)
    parser.add_argument(
        "--tolerance",
        type=float,
        default=15.0,
        help="pointing game: pixels of the model input between the map's maximum and the "
        "object that still count as a hit (default: 15)",
    )


def apply_task_options(args: argparse.Namespace, config: BenchmarkConfig) -> None:
    """Copy the task options into ``config``; refuse those that do not apply."""
    if args.tolerance < 0:
        raise SacamError(f"--tolerance is a distance in pixels, 0 or more; got {args.tolerance}")
    config.tolerance = args.tolerance
    dense = [flag for flag, dest, default in _DENSE if getattr(args, dest) != default]
    if dense and args.task != "detection":
        raise SacamError(f"{', '.join(dense)} apply to --task detection only")
    if args.task == "classification":
        given = [flag for flag, dest, default in _DEFAULTS if getattr(args, dest) != default]
        if given:
            raise SacamError(f"{', '.join(given)} apply to --task detection or segmentation")
        return
    other = [
        flag
        for flag, on in (
            ("--preset", args.preset is not None),
            ("--engine ray", args.engine == "ray"),
        )
        if on
    ]
    if other:
        raise SacamError(f"{' and '.join(other)} run classifiers only, not --task {args.task}")
    config.task = args.task
    config.min_iou = args.min_iou
    config.score_threshold = args.score_threshold
    config.box_format = args.box_format
    config.objectness = args.objectness
    config.dense_layout = args.dense_layout


def print_task_summary(summary: dict[str, Any], out: str, wall_s: float) -> None:
    """Print a detection or segmentation run's table, time and files."""
    from ..evaluation.runner.tasks import render_task_markdown

    print(render_task_markdown(summary))
    print(f"time: {wall_s:.1f} s for {summary['objects']} object(s)")
    files = ", ".join(summary["files"])
    print(f"wrote {files} to {out}/ (results.csv: one row per object and method)")
