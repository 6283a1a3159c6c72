"""The datasets of detection and segmentation runs: images and their objects.

A detection dataset is a folder of images and an annotations file (``--annotations``, or
``annotations.csv`` / ``annotations.json`` in the folder) listing each image's objects,
boxes ``(x0, y0, x1, y1)`` in pixels of the original image (x the column, y the row):

- CSV: columns ``file,label,x0,y0,x1,y1``, one row per object (the boxes CSV of the
  classifier's pointing game with a ``label`` column added);
- JSON: ``{"file": [{"label": 1, "box": [x0, y0, x1, y1]}, ...]}`` (an empty list: an
  image with no objects).

A label is a class index as the model numbers it, or a class name of ``--class-names``.

A segmentation dataset pairs each image with a mask image of class indices (a PNG of
mode ``L`` or ``P``, same size as the image; 0 is background and 255 "ignore", neither is
scored): the masks CSV of the classifier's pointing game, ``file,mask`` (mask paths
relative to the annotations file), or JSON ``{"file": {"mask": "m.png"}}``. Instances
instead: one binary mask per object (non-zero: the object) with its class, CSV
``file,mask,label`` (one row per instance) or JSON
``{"file": [{"label": 1, "mask": "i1.png"}, ...]}``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ...errors import InputError
from ...preprocess import Preprocess
from ..localization import Box, boxes_to_mask, load_annotations, transform_box
from .data import _safe_name

BACKGROUND, IGNORE = 0, 255


@dataclass(frozen=True)
class TaskObject:
    """One annotated object: its class and its region at the model input's size.

    ``box`` is the box in input pixels (detection; None for a segmentation class) and
    ``mask`` the ``(S, S)`` bool region the localisation metrics score against.
    """

    label: int
    box: Box | None
    mask: torch.Tensor
    instance: bool = False


@dataclass(frozen=True)
class TaskImage:
    """One image of a detection or segmentation dataset: its name, path and annotation.

    ``boxes`` holds ``(label, box)`` in original pixels (detection); ``mask`` the path of
    the class-index mask (segmentation), or ``instances`` ``(label, mask path)`` pairs.
    """

    name: str
    path: Path
    boxes: tuple[tuple[int, Box], ...] = ()
    mask: Path | None = None
    instances: tuple[tuple[int, Path], ...] = ()


def annotations_file(data_dir: Path, given: Path | None) -> Path:
    """The annotations file of a run: ``given``, else the folder's own, else a clear error."""
    if given is not None:
        return given
    for name in ("annotations.csv", "annotations.json"):
        if (data_dir / name).is_file():
            return data_dir / name
    raise InputError(
        f"{data_dir} holds no annotations.csv or annotations.json: pass --annotations FILE "
        "(detection: file,label,x0,y0,x1,y1 rows; segmentation: file,mask rows)"
    )


def _label(text: object, where: str, names: Sequence[str] | None) -> int:
    value = str(text).strip()
    if value.isdigit():
        return int(value)
    lowered = [n.lower() for n in names or []]
    if value.lower() in lowered:
        return lowered.index(value.lower())
    hint = " or one of the --class-names" if names else " (pass --class-names to use names)"
    raise InputError(f"{where}: label {value!r} is not a class index 0, 1, ...{hint}")


def _box(values: Sequence[object], where: str) -> Box:
    try:
        x0, y0, x1, y1 = (float(v) for v in values)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(f"{where}: a box is four numbers x0,y0,x1,y1, got {values!r}") from None
    if not (x1 > x0 and y1 > y0):
        raise InputError(f"{where}: box {[x0, y0, x1, y1]} needs x1 > x0 and y1 > y0 (corners)")
    return x0, y0, x1, y1


def read_detection(
    path: Path, names: Sequence[str] | None = None
) -> dict[str, list[tuple[int, Box]]]:
    """``{file: [(label, box), ...]}`` from a detection annotations file (module docstring)."""
    out: dict[str, list[tuple[int, Box]]] = {}
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise InputError(f"{path}: expected {{file: [{{label, box}}, ...]}}")
        for file, objects in data.items():
            where = f"{path}: {file}"
            if not isinstance(objects, list) or not all(
                isinstance(o, dict) and {"label", "box"} <= o.keys() for o in objects
            ):
                raise InputError(f"{where}: list the objects as [{{'label': 1, 'box': [...]}}]")
            out[file] = [(_label(o["label"], where, names), _box(o["box"], where)) for o in objects]
        return out
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = {"file", "label", "x0", "y0", "x1", "y1"} - set(reader.fieldnames or [])
        if missing:
            raise InputError(
                f"{path}: a detection annotations CSV has columns file,label,x0,y0,x1,y1; "
                f"{', '.join(sorted(missing))} missing"
            )
        for line, row in enumerate(reader, start=2):
            where = f"{path}, line {line}"
            box = _box([row[k] for k in ("x0", "y0", "x1", "y1")], where)
            out.setdefault(row["file"], []).append((_label(row["label"], where, names), box))
    return out


def read_images(
    data_dir: Path, task: str, annotations: Path, names: Sequence[str] | None = None
) -> list[TaskImage]:
    """The annotated images of a detection or segmentation dataset, checked, in file order."""
    images: list[TaskImage] = []
    if task == "detection":
        found = read_detection(annotations, names)
        entries = [TaskImage(file, Path(), boxes=tuple(objs)) for file, objs in found.items()]
    else:
        entries = _segmentation_entries(annotations, names)
    for entry in sorted(entries, key=lambda e: e.name):
        path = data_dir / _safe_name(data_dir, entry.name, str(annotations))
        if not path.is_file():
            raise InputError(f"{annotations}: {entry.name} is not an image in {data_dir}")
        for mask in [entry.mask, *(m for _, m in entry.instances)]:
            if mask is not None and not mask.is_file():
                raise InputError(f"{annotations}: the mask {mask} of {entry.name} does not exist")
        images.append(replace(entry, path=path))
    if not images:
        raise InputError(f"{annotations} lists no images")
    return images


def _segmentation_entries(annotations: Path, names: Sequence[str] | None) -> list[TaskImage]:
    """Class masks (``file,mask``) or instances (``file,mask,label``) per image."""
    instances = read_instances(annotations, names)
    if instances is not None:
        return [TaskImage(file, Path(), instances=tuple(i)) for file, i in instances.items()]
    masks = load_annotations(annotations)
    without = [f for f, a in masks.items() if a.mask_path is None]
    if without:
        raise InputError(
            f"{annotations}: segmentation needs a mask per image (file,mask rows) or per "
            f"instance (file,mask,label rows); {without[0]} has boxes"
        )
    return [TaskImage(file, Path(), mask=a.mask_path) for file, a in masks.items()]


def read_instances(
    path: Path, names: Sequence[str] | None = None
) -> dict[str, list[tuple[int, Path]]] | None:
    """``{file: [(label, mask path), ...]}`` of an instance file; None for class masks."""
    out: dict[str, list[tuple[int, Path]]] = {}
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not any(isinstance(v, list) for v in data.values()):
            return None
        for file, objects in data.items():
            where = f"{path}: {file}"
            if not isinstance(objects, list) or not all(
                isinstance(o, dict) and {"label", "mask"} <= o.keys() for o in objects
            ):
                raise InputError(f"{where}: list the instances as [{{'label': 1, 'mask': ...}}]")
            out[file] = [
                (_label(o["label"], where, names), path.parent / o["mask"]) for o in objects
            ]
        return out
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not {"file", "mask", "label"} <= set(reader.fieldnames or []):
            return None
        for line, row in enumerate(reader, start=2):
            label = _label(row["label"], f"{path}, line {line}", names)
            out.setdefault(row["file"], []).append((label, path.parent / row["mask"]))
    return out


def detection_objects(
    image: TaskImage, size: tuple[int, int], preprocess: Preprocess
) -> list[TaskObject]:
    """The image's boxes at the model input's size (``size`` is the original width, height)."""
    s = preprocess.size
    objects = []
    for label, box in image.boxes:
        inside = transform_box(box, size, preprocess)
        objects.append(TaskObject(label, inside, boxes_to_mask([inside], (s, s))))
    return objects


def _read_mask(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"))


def _binary(region: np.ndarray, preprocess: Preprocess) -> torch.Tensor:
    """A bool ``(H, W)`` region of the original image at the model input's size."""
    picture = Image.fromarray((region * 255).astype(np.uint8)).convert("RGB")
    return preprocess.pixels(picture)[0] > 0.5


def segmentation_objects(image: TaskImage, preprocess: Preprocess) -> list[TaskObject]:
    """Each class of the image's mask (not background nor ignore), or each instance.

    The regions are at the model input's size.
    """
    if image.mask is None:
        return [
            TaskObject(label, None, _binary(_read_mask(m) > 0, preprocess), instance=True)
            for label, m in image.instances
        ]
    classes = np.asarray(Image.open(image.mask))
    if classes.ndim != 2:
        raise InputError(
            f"{image.mask}: a segmentation mask holds one class index per pixel (mode L or "
            f"P), got an image of shape {classes.shape}"
        )
    objects = []
    for c in sorted(int(v) for v in np.unique(classes)):
        if c in (BACKGROUND, IGNORE):
            continue
        mask = _binary(classes == c, preprocess)
        if mask.any():
            objects.append(TaskObject(c, None, mask))
    return objects


def object_count(image: TaskImage, preprocess: Preprocess) -> int:
    """How many objects (rows per method) an image has: boxes, instances or mask classes.

    A class mask is read for it (a class its resizing leaves empty is no object).
    """
    if image.mask is not None:
        return len(segmentation_objects(image, preprocess))
    return len(image.instances) or len(image.boxes)
