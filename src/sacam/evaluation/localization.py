"""Localisation metrics: pointing game, energy-based pointing game, grid pointing game.

- Pointing game (Zhang et al., Excitation Backprop, https://arxiv.org/abs/1608.00507): a
  hit when the map's maximum lies within ``tolerance`` (15) pixels of the object (box or
  mask); accuracy per class, then the mean over classes.
- Energy-based pointing game (Wang et al., Score-CAM, https://arxiv.org/abs/1910.01279):
  the share of the map's energy inside the union of the object's boxes. Boxes here are
  ``(x0, y0, x1, y1)`` with x the column and y the row, and are never transposed (the
  reference code's trap).
- Grid pointing game (Böhle et al., B-cos, https://arxiv.org/abs/2205.10268): ``n×n``
  confidently classified images of distinct classes tiled into one grid; for each cell's
  class, the positive attribution inside that cell over the positive attribution in the
  whole grid (0 if the total is at most 1e-7). Chance is 1/n². No smoothing by default
  (``smooth=15`` applies B-cos's 15×15 average pool).
"""

from __future__ import annotations

import csv
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from ..errors import InputError
from ..preprocess import Preprocess
from .registry import MetricBatch, MetricOutput, register_metric

Box = tuple[float, float, float, float]


def transform_box(box: Box, image_size: tuple[int, int], preprocess: Preprocess) -> Box:
    """Map a box ``(x0, y0, x1, y1)`` in original pixels through ``preprocess``'s resize/crop.

    Args:
        box: the box in the original image, x = column, y = row.
        image_size: original ``(width, height)``.
        preprocess: the preprocessing applied to the image.

    Returns:
        the box in the model input's pixels (clipped to it).
    """
    w, h = image_size
    s = preprocess.size
    x0, y0, x1, y1 = box
    if preprocess.resize == "squash":
        sx, sy, ox, oy = s / w, s / h, 0.0, 0.0
    else:
        scale = s / min(w, h)
        nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
        sx, sy = nw / w, nh / h
        ox, oy = (nw - s) // 2, (nh - s) // 2
    return (
        float(np.clip(x0 * sx - ox, 0, s)),
        float(np.clip(y0 * sy - oy, 0, s)),
        float(np.clip(x1 * sx - ox, 0, s)),
        float(np.clip(y1 * sy - oy, 0, s)),
    )


def boxes_to_mask(boxes: Sequence[Box], size: tuple[int, int]) -> torch.Tensor:
    """Union of boxes as an ``(H, W)`` bool mask.

    Pixel (row r, col c) is inside when its centre ``(c + .5, r + .5)`` lies in a box.
    """
    h, w = size
    mask = torch.zeros(h, w, dtype=torch.bool)
    cols = torch.arange(w) + 0.5
    rows = torch.arange(h) + 0.5
    for x0, y0, x1, y1 in boxes:
        inside_c = (cols >= x0) & (cols <= x1)
        inside_r = (rows >= y0) & (rows <= y1)
        mask |= inside_r[:, None] & inside_c[None, :]
    return mask


def pointing_game(maps: torch.Tensor, masks: torch.Tensor, tolerance: float = 15.0) -> torch.Tensor:
    """Per-sample hit (1.0) or miss (0.0) of the pointing game.

    Args:
        maps: ``(B, H, W)`` saliency.
        masks: ``(B, H, W)`` bool object masks (boxes as :func:`boxes_to_mask`).
        tolerance: pixels between the maximum and the object that still count as a hit.

    Returns:
        ``(B,)`` of 0/1. A constant map has no maximum to point with: NaN (counted, not
        averaged in).

    Example:
        >>> m = torch.zeros(1, 40, 40); m[0, 5, 5] = 1
        >>> obj = torch.zeros(1, 40, 40, dtype=torch.bool); obj[0, 30:, 30:] = True
        >>> pointing_game(m, obj).tolist(), pointing_game(m, obj, tolerance=40).tolist()
        ([0.0], [1.0])
    """
    out = torch.empty(maps.shape[0])
    for b in range(maps.shape[0]):
        m = maps[b]
        if float(m.max()) == float(m.min()):
            out[b] = float("nan")
            continue
        r, c = divmod(int(m.argmax()), m.shape[1])
        obj = masks[b].cpu().numpy()
        if not obj.any():
            out[b] = float("nan")
            continue
        dist = ndimage.distance_transform_edt(~obj)
        out[b] = float(dist[r, c] <= tolerance)
    return out


def energy_pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Share of each map's energy inside its object mask, ``(B,)``; NaN for an all-zero map."""
    total = maps.flatten(1).sum(1).cpu()
    inside = (maps * masks.to(maps.device, maps.dtype)).flatten(1).sum(1).cpu()
    return torch.where(
        total > 0, inside / total.clamp_min(1e-12), torch.full_like(total, float("nan"))
    )


@dataclass
class Annotation:
    """Object regions of one image, in the original image's pixels."""

    boxes: list[Box]
    mask_path: Path | None = None


def load_annotations(path: str | Path) -> dict[str, Annotation]:
    """Read boxes or masks per image from CSV or JSON.

    CSV: columns ``file,x0,y0,x1,y1`` (one row per box, several rows per file allowed), or
    ``file,mask`` (a mask image path, relative to the CSV; non-zero = object).
    JSON: ``{"file": [[x0, y0, x1, y1], ...]}`` or ``{"file": {"mask": "m.png"}}``.
    """
    path = Path(path)
    out: dict[str, Annotation] = {}
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text())
        for file, val in data.items():
            if isinstance(val, dict) and "mask" in val:
                out[file] = Annotation([], path.parent / val["mask"])
            else:
                out[file] = Annotation([tuple(map(float, b)) for b in val])  # type: ignore[misc]
        return out
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            ann = out.setdefault(row["file"], Annotation([]))
            if row.get("mask"):
                ann.mask_path = path.parent / row["mask"]
            else:
                try:
                    ann.boxes.append(
                        (float(row["x0"]), float(row["y0"]), float(row["x1"]), float(row["y1"]))
                    )
                except (KeyError, ValueError) as exc:
                    raise InputError(f"{path}: a row needs x0,y0,x1,y1 or mask ({exc})") from None
    return out


def annotation_mask(
    ann: Annotation, image_size: tuple[int, int], preprocess: Preprocess
) -> torch.Tensor:
    """The object mask of one image at the model input's size."""
    s = preprocess.size
    if ann.mask_path is not None:
        mask_img = Image.open(ann.mask_path).convert("L")
        pix = preprocess.pixels(mask_img.convert("RGB"))[0]
        return pix > 0.5
    return boxes_to_mask([transform_box(b, image_size, preprocess) for b in ann.boxes], (s, s))


def make_grids(
    candidates: Sequence[tuple[int, int]], n: int = 2, count: int | None = None, seed: int = 0
) -> list[list[int]]:
    """Group candidate images (``(index, class)``) into grids of ``n²`` distinct classes.

    Returns lists of candidate indices, row-major; deterministic for a seed.
    """
    rng = random.Random(seed)
    pool = list(candidates)
    rng.shuffle(pool)
    grids: list[list[int]] = []
    while count is None or len(grids) < count:
        chosen: list[tuple[int, int]] = []
        seen: set[int] = set()
        for item in pool:
            if item[1] not in seen:
                chosen.append(item)
                seen.add(item[1])
            if len(chosen) == n * n:
                break
        if len(chosen) < n * n:
            break
        grids.append([i for i, _ in chosen])
        pool = [p for p in pool if p not in chosen]
    return grids


def tile(images: torch.Tensor, n: int) -> torch.Tensor:
    """Tile ``n²`` images ``(n², C, H, W)`` into one ``(1, C, nH, nW)`` grid, row-major."""
    rows = [torch.cat(list(images[r * n : (r + 1) * n]), dim=2) for r in range(n)]
    return torch.cat(rows, dim=1)[None]


def grid_pointing_game(maps: torch.Tensor, n: int, smooth: int = 0) -> torch.Tensor:
    """Score of each cell's map on its grid: positive attribution in the cell / in the grid.

    Args:
        maps: ``(n², nH, nW)``: map ``i`` explains the class of cell ``i`` (row-major).
        n: grid side.
        smooth: average-pool kernel applied first (0 = none; B-cos uses 15).

    Returns:
        ``(n²,)`` scores in [0, 1]; 0 where the total positive attribution is <= 1e-7.
    """
    m = maps.clamp_min(0)
    if smooth:
        m = F.avg_pool2d(
            m[:, None], smooth, stride=1, padding=smooth // 2, count_include_pad=False
        )[:, 0]
    ch, cw = m.shape[-2] // n, m.shape[-1] // n
    scores = torch.empty(m.shape[0])
    for i in range(m.shape[0]):
        r, c = divmod(i, n)
        total = float(m[i].sum())
        inside = float(m[i, r * ch : (r + 1) * ch, c * cw : (c + 1) * cw].sum())
        scores[i] = inside / total if total > 1e-7 else 0.0
    return scores


def _masked(batch: MetricBatch, values: torch.Tensor) -> torch.Tensor:
    """NaN (no value) for the images without an annotation."""
    assert batch.has_mask is not None
    return torch.where(batch.has_mask.cpu(), values.cpu(), torch.full_like(values.cpu(), math.nan))


@register_metric(
    "pointing",
    values=[("pointing_game", True, "Pointing game accuracy (per class, then mean)")],
    source="Zhang et al. 1608.00507 (15 px tolerance)",
    needs=("annotations",),
)
def _pointing(batch: MetricBatch) -> MetricOutput:
    assert batch.masks is not None
    hits = pointing_game(batch.maps, batch.masks, batch.config.tolerance)
    return MetricOutput({"pointing_game": _masked(batch, hits)})


@register_metric(
    "energy_pointing",
    values=[("energy_pointing_game", True, "Energy-based pointing game")],
    source="Wang et al. 1910.01279 (Score-CAM)",
    needs=("annotations",),
)
def _energy_pointing(batch: MetricBatch) -> MetricOutput:
    assert batch.masks is not None
    share = energy_pointing_game(batch.maps, batch.masks)
    return MetricOutput({"energy_pointing_game": _masked(batch, share)})


@register_metric(
    "grid_pointing",
    values=[("grid_pointing_game", True, "Grid pointing game")],
    source="Böhle et al. 2205.10268 (B-cos); Rao et al. 2205.10435",
    unit="grid",
)
def _grid_pointing(batch: MetricBatch) -> MetricOutput:
    n = batch.config.grid_n
    return MetricOutput(
        {"grid_pointing_game": grid_pointing_game(batch.maps, n, batch.config.grid_smooth)}
    )
