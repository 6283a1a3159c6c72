"""Detectors for the detection tests: synthetic scenes, a trained tiny detector, its views.

:func:`scenes` draws 64×64 grey images with one or two coloured squares (class 1 reddish,
class 2 bluish) at random places, with their true boxes. :func:`trained_detector` trains
:class:`sacam.examples.TinyDetector` on them (seeded, CPU, a few seconds). The views show
the same network through other output conventions: :class:`DenseView` as a YOLO-style
tensor, :class:`DetachedDetector` with its post-processing under ``torch.no_grad()``.
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from sacam.examples import TinyDetector

SIZE = 64
COLOURS = {1: (0.85, 0.2, 0.15), 2: (0.15, 0.3, 0.85)}


def scenes(
    n: int, seed: int, objects: tuple[int, ...] = (1, 2), distinct: bool = False
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """``n`` images ``(n, 3, 64, 64)``, and per image its boxes ``(k, 4)`` and labels ``(k,)``.

    Each image holds a number of squares drawn from ``objects`` (sides 12 to 20 pixels,
    not overlapping), on a grey background with noise; ``distinct`` gives two squares
    different classes.
    """
    g = torch.Generator().manual_seed(seed)
    images = torch.empty(n, 3, SIZE, SIZE)
    all_boxes, all_labels = [], []
    for i in range(n):
        grey = 0.35 + 0.3 * float(torch.rand((), generator=g))
        img = grey + 0.04 * torch.randn(3, SIZE, SIZE, generator=g)
        k = objects[int(torch.randint(len(objects), (), generator=g))]
        boxes: list[list[float]] = []
        labels: list[int] = []
        while len(boxes) < k:
            side = int(torch.randint(12, 21, (), generator=g))
            x, y = (int(v) for v in torch.randint(0, SIZE - side + 1, (2,), generator=g))
            box = [float(x), float(y), float(x + side), float(y + side)]
            if any(_overlap(box, b) for b in boxes):
                continue
            label = 1 + int(torch.randint(2, (), generator=g))
            if distinct and labels:
                label = 3 - labels[0]
            colour = torch.tensor(COLOURS[label]) + 0.08 * torch.randn(3, generator=g)
            img[:, y : y + side, x : x + side] = colour[:, None, None]
            boxes.append(box)
            labels.append(label)
        images[i] = img.clamp(0, 1)
        all_boxes.append(torch.tensor(boxes))
        all_labels.append(torch.tensor(labels))
    return images, all_boxes, all_labels


def _overlap(a: list[float], b: list[float], margin: float = 2.0) -> bool:
    return not (
        a[2] + margin <= b[0]
        or b[2] + margin <= a[0]
        or a[3] + margin <= b[1]
        or b[3] + margin <= a[1]
    )


def _grid_targets(
    boxes: list[torch.Tensor], labels: list[torch.Tensor], stride: int, cells: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per cell: class (0 background), box values ``(dx, dy, dw, dh)`` and a positive mask."""
    n = len(boxes)
    cls = torch.zeros(n, cells, cells, dtype=torch.long)
    reg = torch.zeros(n, 4, cells, cells)
    for i, (bs, ls) in enumerate(zip(boxes, labels, strict=True)):
        for box, label in zip(bs.tolist(), ls.tolist(), strict=True):
            cx, cy = (box[0] + box[2]) / 2 / stride, (box[1] + box[3]) / 2 / stride
            j, r = min(int(cx), cells - 1), min(int(cy), cells - 1)
            w, h = (box[2] - box[0]) / stride, (box[3] - box[1]) / stride
            cls[i, r, j] = label
            reg[i, :, r, j] = torch.tensor(
                [cx - j - 0.5, cy - r - 0.5, torch.log(torch.tensor(w)), torch.log(torch.tensor(h))]
            )
    return cls, reg, cls > 0


@functools.lru_cache(maxsize=2)
def trained_detector(seed: int = 0, steps: int = 300) -> TinyDetector:
    """A :class:`TinyDetector` trained on :func:`scenes` (Adam, batches of 32), in eval mode.

    Cached: callers must not change it (sacam leaves a model as it found it).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: faster than several threads, and fair
    try:
        return _train(seed, steps)
    finally:
        torch.set_num_threads(threads)


def _train(seed: int, steps: int) -> TinyDetector:
    torch.manual_seed(seed)
    net = TinyDetector(classes=2, width=32)
    images, boxes, labels = scenes(512, seed=seed + 100)
    cls, reg, pos = _grid_targets(boxes, labels, net.stride, SIZE // net.stride)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    weight = torch.tensor([0.3, 1.0, 1.0])
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(images), (32,), generator=g)
        raw = net.raw(images[idx])
        loss = F.cross_entropy(raw[:, 4:], cls[idx], weight=weight)
        mask = pos[idx][:, None].expand(-1, 4, -1, -1)
        if mask.any():
            loss = loss + F.smooth_l1_loss(raw[:, :4][mask], reg[idx][mask])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


class DenseView(nn.Module):
    """A :class:`TinyDetector` as a YOLO-style dense output (no post-processing).

    Rows are the grid cells: box (``box_format``), then objectness ``1 - p(background)``
    and the class scores ``p(c) / (1 - p(background))`` when ``objectness``, else the
    class probabilities ``p(c)``; ``layout="bdn"`` transposes to ``(B, D, N)``.
    """

    def __init__(
        self,
        net: TinyDetector,
        objectness: bool = False,
        layout: Literal["bnd", "bdn"] = "bnd",
        box_format: Literal["xywh", "xyxy"] = "xywh",
    ) -> None:
        super().__init__()
        self.net = net
        self.objectness, self.layout, self.box_format = objectness, layout, box_format

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        boxes, probs = self.net.decode(self.net.raw(images))
        if self.box_format == "xywh":
            boxes = torch.cat(
                [(boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]], -1
            )
        classes = probs[..., 1:]
        if self.objectness:
            obj = 1 - probs[..., :1]
            rows = torch.cat([boxes, obj, classes / obj.clamp_min(1e-6)], -1)
        else:
            rows = torch.cat([boxes, classes], -1)
        return rows.transpose(1, 2) if self.layout == "bdn" else rows


class DetachedDetector(nn.Module):
    """A :class:`TinyDetector` whose post-processing runs under ``torch.no_grad()``."""

    def __init__(self, net: TinyDetector) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        raw = self.net.raw(images)
        with torch.no_grad():
            return self.net.postprocess(*self.net.decode(raw))
