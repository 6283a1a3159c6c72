"""``sacam explain --task detection|segmentation``: detectors and segmenters on the command line.

``--task detection`` runs the detector once per image, lists its detections above
``--score-threshold`` and explains each (:func:`sacam.detection.explain`): one line per
detection, a picture with every box over its map (:func:`sacam.viz.draw_detections`) and
each detection's overlay and map (``.npy``). ``--method`` defaults to Grad-CAM for these
tasks (:data:`TASK_METHOD`). The output convention is read from the
model's answer: torchvision's list of dicts, or a YOLO-style dense tensor read as
``--box-format``, ``--objectness`` and ``--dense-layout`` say. ``--task segmentation``
explains each class present in the predicted mask
(:mod:`sacam.cli._segment`).
Boxes are pixels of the model's input: the image after ``--size`` and ``--resize``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import detection
from ..errors import InputError, SacamError
from ..images import SAMPLE_IMAGES, load_image
from ..models import LoadedModel
from ..viz import draw_detections, overlay
from ._args import (
    EXIT_IMAGE,
    add_dense_options,
    existing_file,
    int_at_least,
    layer_of,
    method_options,
    unit_float,
)
from ._classes import resolve_target
from ._model import cli_model, read_class_names

TASKS = ("classification", "detection", "segmentation")
TASK_METHOD = detection.DEFAULT_METHOD
"""The default method of detection and segmentation: Grad-CAM, as in the Python API
(:data:`sacam.detection.DEFAULT_METHOD`, which says why)."""


def box_arg(text: str) -> detection.Box:
    """An argparse type: ``x1,y1,x2,y2`` pixels with ``x2 > x1`` and ``y2 > y1``."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4 or not all(np.isfinite(values)):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a box: give four numbers x1,y1,x2,y2 (pixels), e.g. 10,20,50,60"
        )
    x1, y1, x2, y2 = values
    if x2 <= x1 or y2 <= y1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a box: x2 must exceed x1 and y2 exceed y1 (corners, not a size)"
        )
    return x1, y1, x2, y2


def add_task_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--task``: classification (the default), detection or segmentation."""
    parser.add_argument("--task", choices=TASKS, default="classification", help=help_text)


def add_task_options(parser: argparse.ArgumentParser) -> None:
    """``--task`` and the detection options of ``sacam explain``."""
    add_task_argument(
        parser,
        "what the model does: classification (default), detection (boxes: torchvision "
        "dicts or a YOLO-style tensor) or segmentation (a (B, classes, H, W) score map); "
        f"detection and segmentation default to --method {TASK_METHOD}",
    )
    parser.add_argument(
        "--score-threshold",
        type=unit_float,
        default=0.5,
        help="detection: the least score of a detection to explain (default: 0.5)",
    )
    parser.add_argument(
        "--box",
        type=box_arg,
        default=None,
        metavar="X1,Y1,X2,Y2",
        help="detection: explain only the detection that best overlaps this box (pixels of "
        "the model's input)",
    )
    add_dense_options(parser)


def add_serve_task_options(parser: argparse.ArgumentParser) -> None:
    """``sacam serve``'s ``--task``, input size, class names and dense-output options."""
    add_task_argument(
        parser,
        "classification (default); detection: the page draws the detections and "
        "explains the one you click; segmentation: the page colours the predicted classes "
        "and explains the one you click in the legend or the picture",
    )
    parser.add_argument(
        "--size", type=int_at_least(1), default=None, help="side in pixels of the model's input"
    )
    parser.add_argument(
        "--class-names", type=existing_file, default=None, metavar="FILE",
        help="text file of class names, one per line in label order",
    )  # fmt: skip
    add_dense_options(parser, layout=False)


def serve_task_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`sacam.serve.serve` for ``--task`` and its options."""
    if args.task != "detection" and (args.box_format != "xywh" or args.objectness):
        raise SacamError("--box-format and --objectness apply to --task detection only")
    dense = detection.DenseFormat(box_format=args.box_format, objectness=args.objectness)
    return {
        "task": args.task,
        "dense": dense if args.task == "detection" else None,
        "size": args.size,
        "class_names": read_class_names(args.class_names),
    }


def check_task_options(args: argparse.Namespace) -> None:
    """Refuse detection options given to another task, and folder options to these tasks."""
    if args.task != "classification":
        folder = len(args.images) == 1 and Path(args.images[0]).is_dir()
        flag = next((f for f, on in (("a folder", folder), ("--engine ray", args.engine == "ray"),
                     ("--save-maps", args.save_maps), ("--workers", args.workers is not None),
                     ("--activation", args.activation is not None))
                     if on), None)  # fmt: skip
        if flag is not None:
            raise SacamError(
                f"--task {args.task} explains image files (it writes each map as .npy): "
                f"{flag} is for classifiers"
            )
    if args.task == "detection":
        return
    given = [
        flag
        for flag, dest, default in (
            ("--score-threshold", "score_threshold", 0.5),
            ("--box", "box", None),
            ("--box-format", "box_format", "xywh"),
            ("--objectness", "objectness", False),
            ("--dense-layout", "dense_layout", "auto"),
        )
        if getattr(args, dest) != default
    ]
    if given:
        raise SacamError(f"{', '.join(given)} apply to --task detection only")


def class_name(loaded: LoadedModel, label: int) -> str:
    """``"cat (3)"`` with class names, else ``"class 3"``."""
    names = loaded.class_names
    return f"{names[label]} ({label})" if 0 <= label < len(names) else f"class {label}"


def task_label(text: str, loaded: LoadedModel) -> int:
    """A ``--target`` class: an index as the model numbers it, or a name of --class-names."""
    if text.strip().lstrip("+-").isdigit():
        value = int(text)
        if value < 0:
            raise SacamError(f"--target {text}: a class index is 0 or more")
        return value
    if not loaded.class_names:
        raise SacamError(
            f"--target {text!r} names a class, but the model has no class names: give an "
            "index, or the names with --class-names FILE"
        )
    return resolve_target(text, loaded.class_names)


@dataclass(frozen=True)
class TaskInput:
    """One image of a detection or segmentation command.

    Attributes:
        name: a unique name for its output files (the file's stem, ``-2``... if repeated).
        pixels: ``(3, H, W)`` pixels in [0, 1] at the model's input size.
        x: the model's input, ``(1, 3, H, W)``, normalised and on the run's device.
    """

    name: str
    pixels: torch.Tensor
    x: torch.Tensor


def load_images(args: argparse.Namespace, loaded: LoadedModel) -> list[TaskInput]:
    """The readable images of ``args.images``; an unreadable one is reported and skipped."""
    sources = list(args.images) or [f"sample:{s}" for s in SAMPLE_IMAGES]
    size = loaded.preprocess.size
    found: list[TaskInput] = []
    for src in sources:
        stem = src.split(":", 1)[1] if src.startswith("sample:") else Path(src).stem
        name, k = stem, 1
        while name in {f.name for f in found}:
            k += 1
            name = f"{stem}-{k}"
        try:
            image = load_image(src, draft_size=(size, size))
        except InputError as exc:
            print(f"sacam: error: {exc}", file=sys.stderr)
            continue
        pixels = loaded.preprocess.pixels(image)
        x = loaded.preprocess.normalize(pixels)[None].to(args.device)
        found.append(TaskInput(name, pixels, x))
    return found


def save_map(args: argparse.Namespace, image: TaskInput, cam: torch.Tensor, stem: str) -> Path:
    """Write ``cam`` over ``image`` as ``{stem}.png`` and as ``{stem}.npy``; the PNG's path."""
    path = args.out / f"{stem}.png"
    overlay(image.pixels, cam, cmap=args.cmap, alpha=args.alpha).save(path)
    np.save(args.out / f"{stem}.npy", cam.numpy().astype(np.float16))
    return Path(path)


def dense_format(args: argparse.Namespace) -> detection.DenseFormat:
    """The :class:`~sacam.detection.DenseFormat` of the dense-output options."""
    return detection.DenseFormat(
        box_format=args.box_format, objectness=args.objectness, layout=args.dense_layout
    )


def describe_output(output: object) -> str:
    """What a model returned, in a few words: ``a tensor (1, 10)``, ``a list of 2 dicts``."""
    if isinstance(output, torch.Tensor):
        return f"a tensor {tuple(output.shape)}"
    if isinstance(output, list | tuple):
        kinds = sorted({type(o).__name__ for o in output})
        return f"a {type(output).__name__} of {len(output)} ({', '.join(kinds) or 'nothing'})"
    return f"a {type(output).__name__}"


def check_detector(loaded: LoadedModel, x: torch.Tensor, dense: detection.DenseFormat) -> str:
    """``"torchvision"`` or ``"dense"``: the model's output convention, or a clear error."""
    with torch.inference_mode():
        output = loaded.model(x)
    if isinstance(output, list | tuple) and output and all(isinstance(o, dict) for o in output):
        detection.detections_of(output)  # checks the keys
        return "torchvision"
    tensor = output[0] if isinstance(output, list | tuple) and output else output
    if isinstance(tensor, torch.Tensor) and tensor.ndim == 3:
        dense.predictions(tensor)  # checks the layout and the columns
        return "dense"
    raise SacamError(
        f"--task detection needs a detector, but the model returned {describe_output(output)}; "
        "expected a list of dicts with boxes, labels and scores (torchvision) or a "
        "(B, N, D) / (B, D, N) tensor of boxes and class scores (YOLO-style)"
    )


def _chosen(
    found: list[detection.Detection], box: detection.Box | None
) -> list[tuple[int, detection.Detection]]:
    """The detections to explain, numbered from 1: all, or the one best overlapping ``box``."""
    numbered = list(enumerate(found, start=1))
    if box is None or not numbered:
        return numbered
    boxes = torch.tensor([d.box for d in found])
    iou = detection.box_iou(boxes, torch.tensor(box))
    best = int(iou.argmax())
    return [numbered[best]] if float(iou[best]) > 0 else []


def detection_command(args: argparse.Namespace, methods: list[str]) -> int:
    """``sacam explain --task detection``: every detection of every image, explained."""
    loaded = cli_model(args)
    label = None if args.target is None else task_label(args.target, loaded)
    dense = dense_format(args)
    images = load_images(args, loaded)
    if not images:
        return EXIT_IMAGE
    out = out_folder(args)
    kind = check_detector(loaded, images[0].x, dense)
    print(f"model {loaded.name} ({kind} detections), method(s) {', '.join(methods)}")
    written = 0
    for image in images:
        found = detection.detect(
            loaded.model,
            image.x,
            score_threshold=args.score_threshold,
            classes=None if label is None else [label],
            dense=dense,
        )
        chosen = _chosen(found, args.box)
        if not chosen:
            print(f"{image.name}: {_nothing(args, len(found))}")
        for method in methods:
            written += _explain_image(args, loaded, image, method, chosen)
    print(f"wrote {written} file(s) to {out}/")
    return EXIT_IMAGE if len(images) < len(args.images) else 0


def _nothing(args: argparse.Namespace, n_found: int) -> str:
    if args.box is not None and n_found:
        return f"none of the {n_found} detection(s) overlaps the box {list(args.box)}"
    return f"no detection scores {args.score_threshold} or more"


def out_folder(args: argparse.Namespace) -> Path:
    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SacamError(f"cannot create the output folder {out}: {exc}") from None
    return out


def _explain_image(
    args: argparse.Namespace,
    loaded: LoadedModel,
    image: TaskInput,
    method: str,
    chosen: Sequence[tuple[int, detection.Detection]],
) -> int:
    """Explain ``chosen`` detections of one image with one method; returns files written."""
    options = method_options(args).get(method, {})
    records: list[Any] = []  # DetectionRecords (frozen: read-only for viz's protocol)
    for k, found in chosen:
        start = time.perf_counter()
        ex = detection.explain(
            loaded.model, image.x, found.target(), method, layer_of(args),
            dense=dense_format(args), **options,
        )  # fmt: skip
        elapsed = time.perf_counter() - start
        cam = ex.maps[0].detach().float().cpu()
        records.append(detection.DetectionRecord(found.box, found.label, found.score, cam))
        cls = class_name(loaded, found.label)
        path = save_map(args, image, cam, f"{image.name}_det{k}_{file_safe(cls)}_{method}")
        box = ", ".join(f"{v:.1f}" for v in found.box)
        print(
            f"{image.name} #{k}: {cls} {found.score:.3f} box [{box}], {method} at "
            f"{'+'.join(ex.layers)}, {elapsed:.2f} s -> {path}"
        )
    picture = draw_detections(
        image.pixels, records, class_names=_names(loaded), cmap=args.cmap, alpha=args.alpha
    )
    picture.save(args.out / f"{image.name}_detections_{method}.png")
    return 2 * len(records) + 1


def _names(loaded: LoadedModel) -> dict[int, str]:
    return dict(enumerate(loaded.class_names))


def file_safe(text: str) -> str:
    """A class name fit for a file name (without a `` (index)`` suffix)."""
    kept = "".join(c if c.isalnum() or c in "-." else "-" for c in text.split(" (")[0].strip())
    return kept.strip("-")[:40] or "class"
