"""Boxes and detector outputs: formats, IoU, non-maximum suppression, reading predictions.

:func:`detections_of` reads a detector's output (torchvision's list of dicts, or a
YOLO-style dense tensor as :class:`DenseFormat` says) as boxes and scores per image.
Boxes are ``(..., 4)`` tensors; ``xyxy`` is ``(x1, y1, x2, y2)`` (torchvision's
convention) and ``xywh`` is ``(centre x, centre y, width, height)`` (YOLO's). Every
function keeps the autograd graph of its inputs (no ``.detach()``), so a score built from
an IoU stays differentiable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import TargetError

__all__ = ["BoxFormat", "DenseFormat", "box_iou", "detections_of", "nms", "to_xyxy"]

BoxFormat = Literal["xyxy", "xywh"]


def to_xyxy(boxes: torch.Tensor, box_format: BoxFormat) -> torch.Tensor:
    """``boxes`` in ``box_format`` as ``xyxy`` corners.

    Example:
        >>> to_xyxy(torch.tensor([[10.0, 20.0, 4.0, 6.0]]), "xywh").tolist()
        [[8.0, 17.0, 12.0, 23.0]]
    """
    if box_format == "xyxy":
        return boxes
    centre, size = boxes[..., :2], boxes[..., 2:4]
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)


def box_iou(boxes: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """IoU of each ``xyxy`` box of ``boxes`` ``(..., 4)`` with one ``xyxy`` box ``(4,)``.

    Degenerate boxes (no area) have IoU 0 with everything.

    Example:
        >>> box_iou(torch.tensor([[0.0, 0, 2, 2], [1, 1, 3, 3]]), torch.tensor([0.0, 0, 2, 2]))
        tensor([1.0000, 0.1429])
    """
    box = box.to(boxes.dtype)
    lo = torch.maximum(boxes[..., :2], box[:2])
    hi = torch.minimum(boxes[..., 2:4], box[2:4])
    inter = (hi - lo).clamp_min(0).prod(-1)
    area = (boxes[..., 2:4] - boxes[..., :2]).clamp_min(0).prod(-1)
    ref_area = (box[2:4] - box[:2]).clamp_min(0).prod(-1)
    union = area + ref_area - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(inter))


def nms(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou: float
) -> torch.Tensor:
    """Indices of the boxes kept by greedy class-aware non-maximum suppression, best first.

    A box is dropped when a better-scoring box of the same label overlaps it with an IoU
    above ``iou``, as torchvision's ``batched_nms``.

    Example:
        >>> b = torch.tensor([[0.0, 0, 2, 2], [0, 0, 2, 2.2], [0, 0, 2, 2]])
        >>> nms(b, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([1, 1, 2]), 0.5).tolist()
        [0, 2]
    """
    plain = boxes.detach()
    lo = torch.maximum(plain[:, None, :2], plain[None, :, :2])
    hi = torch.minimum(plain[:, None, 2:4], plain[None, :, 2:4])
    inter = (hi - lo).clamp_min(0).prod(-1)
    area = (plain[:, 2:4] - plain[:, :2]).clamp_min(0).prod(-1)
    union = area[:, None] + area[None, :] - inter
    overlap = torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(inter)) > iou
    overlap &= labels[:, None] == labels[None, :]
    remaining = torch.argsort(scores.detach(), descending=True)
    kept: list[torch.Tensor] = []
    while remaining.numel():  # one step per kept box
        best, rest = remaining[0], remaining[1:]
        kept.append(best)
        remaining = rest[~overlap[best, rest]]
    if not kept:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    return torch.stack(kept)


@dataclass(frozen=True)
class DenseFormat:
    """How to read a YOLO-style dense output tensor.

    Args:
        box_format: the model's box columns: ``"xywh"`` (centre x, centre y, width,
            height, the default: YOLOv5 and YOLOv8) or ``"xyxy"`` (corners).
        objectness: a column after the box with each prediction's objectness, which
            multiplies the class scores (``True`` for YOLOv5's ``5 + C`` columns).
        layout: ``"bnd"`` (``(B, N, D)``, one row per prediction: YOLOv5), ``"bdn"``
            (``(B, D, N)``: YOLOv8's export) or ``"auto"``: the axis of size
            ``D = 4 + objectness + num_classes`` when ``num_classes`` is given, else the
            shorter axis (there are more predictions than columns); a square output is
            refused.
        num_classes: the number of classes, to tell the layout apart and check it.

    The class scores are read as they are (probabilities in YOLO's inference output).
    """

    box_format: BoxFormat = "xywh"
    objectness: bool = False
    layout: Literal["auto", "bnd", "bdn"] = "auto"
    num_classes: int | None = None

    def __post_init__(self) -> None:
        if self.box_format not in ("xyxy", "xywh"):
            raise TargetError(f"box_format must be 'xywh' or 'xyxy', got {self.box_format!r}")
        if self.layout not in ("auto", "bnd", "bdn"):
            raise TargetError(f"layout must be 'auto', 'bnd' or 'bdn', got {self.layout!r}")

    def rows(self, output: torch.Tensor) -> torch.Tensor:
        """``output`` as ``(B, N, D)``, one row per prediction."""
        if output.ndim != 3:
            raise TargetError(
                f"a dense detection output is (B, N, D) or (B, D, N), got {tuple(output.shape)}"
            )
        width = None if self.num_classes is None else 4 + self.objectness + self.num_classes
        layout = self.layout
        if layout == "auto":
            a, b = output.shape[1:]
            if width is not None and (a == width) != (b == width):
                layout = "bdn" if a == width else "bnd"
            elif width is None and a != b:
                layout = "bdn" if a < b else "bnd"
            else:
                raise TargetError(
                    f"cannot tell the layout of the dense output {tuple(output.shape)}: pass "
                    "DenseFormat(layout='bnd') for (B, N, D) or layout='bdn' for (B, D, N)"
                )
        rows = output.transpose(1, 2) if layout == "bdn" else output
        if width is not None and rows.shape[2] != width:
            raise TargetError(
                f"the dense output {tuple(output.shape)} has {rows.shape[2]} columns per "
                f"prediction, not 4 + {int(self.objectness)} + {self.num_classes} = {width}"
            )
        if rows.shape[2] <= 4 + self.objectness:
            raise TargetError(f"the dense output {tuple(output.shape)} has no class columns")
        return rows

    def predictions(self, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes ``(B, N, 4)`` (``xyxy``) and class scores ``(B, N, C)`` (times objectness)."""
        rows = self.rows(output)
        boxes = to_xyxy(rows[..., :4], self.box_format)
        scores = rows[..., 4 + self.objectness :]
        if self.objectness:
            scores = scores * rows[..., 4:5]
        return boxes, scores


def _dicts(output: object) -> list[Mapping[str, torch.Tensor]] | None:
    """A torchvision-style output as a list of dicts, or ``None`` for anything else."""
    if isinstance(output, list | tuple) and output and all(isinstance(o, Mapping) for o in output):
        for o in output:
            missing = {"boxes", "labels", "scores"} - set(o)
            if missing:
                raise TargetError(
                    f"a detection dict needs boxes, labels and scores; this one lacks "
                    f"{sorted(missing)} (it has {sorted(map(str, o))})"
                )
        return list(output)
    return None


def _dense(output: object) -> torch.Tensor | None:
    """A dense output's tensor (a tuple's first element, as YOLOv5's ``(pred, aux)``)."""
    if isinstance(output, list | tuple) and output and isinstance(output[0], torch.Tensor):
        output = output[0]
    return output if isinstance(output, torch.Tensor) and output.ndim == 3 else None


def detections_of(
    output: object, dense: DenseFormat | None = None
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """Each image's predictions: ``(boxes (n, 4) xyxy, scores, labels)``.

    For torchvision-style outputs ``scores`` is ``(n,)`` and ``labels`` ``(n,)``; for
    dense outputs ``scores`` is ``(N, C)`` (one column per class) and ``labels`` ``None``.

    Raises:
        TargetError: the output is neither a list of detection dicts nor a 3-D tensor.
    """
    found = _dicts(output)
    if found is not None:
        return [(o["boxes"], o["scores"], o["labels"]) for o in found]
    tensor = _dense(output)
    if tensor is None:
        raise TargetError(
            f"a detection target reads a list of dicts with boxes, labels and scores "
            f"(torchvision) or a (B, N, D) / (B, D, N) tensor (YOLO), not a "
            f"{type(output).__name__}: pass output_transform to turn the output into one"
        )
    boxes, scores = (dense or DenseFormat()).predictions(tensor)
    return [(boxes[i], scores[i], None) for i in range(len(boxes))]
