"""Detection targets: what score of a detector's output a map explains.

:class:`DetectionTarget` (one detection) and :class:`ClassTarget` (every detection of a
class) score one image's predictions; :class:`DetectionScores` is the
``output_transform`` that scores every row of a detector's output for a list of targets,
and :class:`Column` the engine target that reads one of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..errors import TargetError
from .boxes import DenseFormat, box_iou, detections_of

__all__ = [
    "NO_GRADIENT",
    "Box",
    "ClassTarget",
    "Column",
    "DetectionScores",
    "DetectionTarget",
    "Target",
]

Box = tuple[float, float, float, float]

NO_GRADIENT = (
    "the detector's scores carry no gradient: its post-processing runs under "
    "torch.no_grad() or calls .detach(); use a gradient-free method such as eigen-cam, "
    "ablation-cam, recipro-cam, score-cam"
)


def _check_box(box: Sequence[float]) -> Box:
    values = tuple(float(v) for v in box)
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise TargetError(f"a reference box is 4 finite numbers (x1, y1, x2, y2), got {box!r}")
    x1, y1, x2, y2 = values
    if x2 <= x1 or y2 <= y1:
        raise TargetError(
            f"a reference box is (x1, y1, x2, y2) with x2 > x1 and y2 > y1, got {values}; "
            "convert a centre box (cx, cy, w, h) first"
        )
    return values


@dataclass(frozen=True)
class DetectionTarget:
    """One detection: its class score, followed across passes by label and box (or index).

    On each forward pass (each image, each perturbed copy), the predictions of ``label``
    that overlap ``box`` with an IoU of at least ``min_iou`` are the candidates; the score
    is the largest ``score × IoU`` among them (``iou_weighted=True``), or the score of the
    candidate with the highest IoU (``iou_weighted=False``). No candidate scores 0.
    Without ``box`` nor ``index``, the best score of ``label`` anywhere is explained.

    Args:
        label: the class, as the model numbers it (torchvision: its ``labels``; dense
            outputs: the class column, 0 for the first class).
        box: the reference box, ``(x1, y1, x2, y2)`` pixels, e.g. the detection's box on
            the clean image.
        index: for dense outputs only, the prediction (anchor) to explain: its score of
            ``label``, whatever its box.
        min_iou: the least IoU of a candidate with ``box``.
        iou_weighted: weigh each candidate's score by its IoU with ``box``.

    Example:
        >>> out = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]),
        ...         "labels": torch.tensor([1, 1]), "scores": torch.tensor([0.9, 0.6])}]
        >>> DetectionScores([DetectionTarget(1, box=(20, 20, 30, 30))])(out)
        tensor([[0.6000]])
    """

    label: int
    box: Box | None = None
    index: int | None = None
    min_iou: float = 0.5
    iou_weighted: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.label, bool) or not isinstance(self.label, int):
            raise TargetError(f"label must be an int class, got {self.label!r}")
        if self.box is not None and self.index is not None:
            raise TargetError("give a detection's box or its index, not both")
        if self.box is not None:
            object.__setattr__(self, "box", _check_box(self.box))
        if self.index is not None and (isinstance(self.index, bool) or self.index < 0):
            raise TargetError(f"index must be a prediction index of 0 or more, got {self.index!r}")
        if not 0.0 <= self.min_iou <= 1.0:
            raise TargetError(f"min_iou must be in [0, 1], got {self.min_iou}")

    def score(self, boxes: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The score on one image: ``boxes`` ``(n, 4)`` xyxy, ``scores`` ``(n,)`` of ``label``.

        ``valid`` ``(n,)`` marks the predictions that may match (those of ``label``).
        """
        if self.index is not None:
            if self.index >= len(scores):
                raise TargetError(
                    f"prediction index {self.index} is out of range: the model makes "
                    f"{len(scores)} predictions per image"
                )
            return scores[self.index]
        zero = scores.sum() * 0.0  # keeps the graph where there is one
        if self.box is None:
            return torch.where(valid, scores, zero).max() if len(scores) else zero
        iou = box_iou(boxes, torch.tensor(self.box, device=boxes.device))
        candidates = valid & (iou >= self.min_iou) & (iou > 0)
        if not bool(candidates.any()):
            return zero
        if self.iou_weighted:
            return torch.where(candidates, scores * iou.detach(), zero).max()
        best = torch.where(candidates, iou.detach(), torch.full_like(iou.detach(), -1.0)).argmax()
        return scores[best]


@dataclass(frozen=True)
class ClassTarget:
    """Every detection of a class: the sum of the scores of ``label`` at or above a threshold.

    For dense outputs the sum runs over all predictions (before non-maximum suppression),
    so set ``score_threshold`` to the confidence your pipeline keeps.

    Example:
        >>> out = [{"boxes": torch.zeros(3, 4), "labels": torch.tensor([1, 2, 1]),
        ...         "scores": torch.tensor([0.5, 0.9, 0.25])}]
        >>> DetectionScores([ClassTarget(1)])(out)
        tensor([[0.7500]])
    """

    label: int
    score_threshold: float = 0.0

    def score(self, boxes: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The summed scores of ``label`` on one image (as :meth:`DetectionTarget.score`)."""
        keep = valid & (scores.detach() >= self.score_threshold)
        return torch.where(keep, scores, torch.zeros_like(scores)).sum()


Target = DetectionTarget | ClassTarget


class DetectionScores:
    """An ``output_transform`` from a detector's output to ``(rows, targets)`` scores.

    Column ``t`` holds target ``t``'s score on every row (every image or perturbed copy);
    :meth:`column` is the engine target that reads it. :attr:`detached` records whether a
    pass under autograd met scores that carry no gradient, so that
    :func:`~sacam.detection.explain` can say why a gradient method found none.

    Args:
        targets: the detection targets (:class:`DetectionTarget`, :class:`ClassTarget`).
        dense: how to read dense outputs (default :class:`DenseFormat`'s defaults).

    Example:
        >>> dense = torch.tensor([[[5.0, 5, 10, 10, 0.2, 0.7]]])  # (1, 1, 4 + 2): xywh
        >>> fmt = DenseFormat(num_classes=2)
        >>> DetectionScores([DetectionTarget(1, box=(0, 0, 10, 10))], fmt)(dense)
        tensor([[0.7000]])
    """

    def __init__(self, targets: Sequence[Target], dense: DenseFormat | None = None) -> None:
        if not targets or not all(isinstance(t, DetectionTarget | ClassTarget) for t in targets):
            raise TargetError(
                "detection targets are a non-empty list of DetectionTarget or ClassTarget, "
                f"got {targets!r}"
            )
        self.targets = tuple(targets)
        self.dense = dense
        #: set when a pass under autograd met a detector output whose scores carry no
        #: gradient (post-processing under ``torch.no_grad()`` or ``.detach()``)
        self.detached = False

    def __call__(self, output: object) -> torch.Tensor:
        """The ``(rows, targets)`` scores of ``output`` (see the class docstring)."""
        images = detections_of(output, self.dense)
        if images and torch.is_grad_enabled():
            self.detached |= not any(scores.requires_grad for _, scores, _ in images)
        rows = [torch.stack([self._score(t, *image) for t in self.targets]) for image in images]
        return torch.stack(rows)

    def _score(
        self, target: Target, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor | None
    ) -> torch.Tensor:
        if labels is None:  # dense: one column per class
            if not 0 <= target.label < scores.shape[1]:
                raise TargetError(
                    f"label {target.label} is out of range: the dense output has "
                    f"{scores.shape[1]} classes (0..{scores.shape[1] - 1})"
                )
            column = scores[:, target.label]
            return target.score(boxes, column, torch.ones_like(column, dtype=torch.bool))
        if isinstance(target, DetectionTarget) and target.index is not None:
            raise TargetError(
                "a torchvision-style detector ranks its detections anew on every pass, so "
                "index does not follow one: give the detection's box instead"
            )
        return target.score(boxes, scores, labels == target.label)

    def column(self, t: int) -> Column:
        """The engine target for target ``t``: column ``t`` of the transformed output."""
        if not 0 <= t < len(self.targets):
            raise TargetError(f"target {t} is out of range: there are {len(self.targets)}")
        return Column(t)


@dataclass(frozen=True)
class Column:
    """An engine target: column ``t`` of a ``(rows, targets)`` output, one score per row."""

    t: int

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        """Return ``output[:, t]``."""
        return output[:, self.t]
