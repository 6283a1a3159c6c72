"""Maps of detections: :func:`explain` for targets, :func:`explain_detections` for an image.

:func:`detect` runs the detector once and lists its detections; :func:`explain_detections`
explains each of them and returns it with its map (a :class:`DetectionRecord`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._hooks import check_images, model_guard
from .._layers import LayersLike
from ..api import explain_full
from ..errors import LayerError, MethodError, ModelError, TargetError
from ..explanation import Explanation
from .boxes import DenseFormat, detections_of, nms
from .targets import NO_GRADIENT, Box, ClassTarget, DetectionScores, DetectionTarget, Target

__all__ = [
    "DEFAULT_METHOD",
    "Detection",
    "DetectionRecord",
    "detect",
    "explain",
    "explain_detections",
]

DEFAULT_METHOD = "grad-cam"
"""The method that explains a detection when none is named: here, in ``sacam explain
--task detection`` and in ``sacam serve --task detection``.

Grad-CAM: the score of one detection is read at one cell of the detector's grid, so its
Grad-CAM map is positive on that object's cells and negative over the background. SA-CAM
diffuses that map along its attention, and at its default temperature the background's
negative evidence outweighs the object's cells, which can leave no positive value (a
constant map). A larger ``temperature`` keeps SA-CAM on the object, where its map comes
close to Grad-CAM's (see the detection tutorial).
"""


def explain(
    model: nn.Module,
    images: torch.Tensor,
    targets: Target | Sequence[Target],
    method: str = DEFAULT_METHOD,
    layer: LayersLike = None,
    *,
    dense: DenseFormat | None = None,
    upsample: bool = True,
    **method_options: Any,
) -> Explanation:
    """Explain detection targets with a registered method, one map per image.

    Args:
        model: the detector (left as it was, as by :func:`sacam.explain`).
        images: ``(B, C, H, W)`` batch, as the detector takes it.
        targets: one target for every image, or one per image.
        method: a registered method (:func:`sacam.list_methods`), by default
            :data:`DEFAULT_METHOD`; SA-CAM keeps to the object with ``temperature=50``.
        layer: the layer to explain (a module or dotted name): the detector's backbone
            output, say; ``None`` picks the last 4-D layer, often a head.
        dense: how to read a dense (YOLO-style) output.
        upsample: resize the maps to the input size.
        **method_options: the method's options (not ``output_transform``, which this
            function sets, nor ``tta``, whose flips would move the boxes).

    Returns the :class:`~sacam.explanation.Explanation`, whose ``scores`` are the targets'
    scores on the clean images. A gradient method on a detector whose scores carry no
    gradient raises :class:`~sacam.errors.ModelError`, which says so.

    Example:
        >>> import torch
        >>> from sacam import detection
        >>> from sacam.examples import tiny_detector
        >>> _ = torch.manual_seed(0)
        >>> net = tiny_detector()
        >>> target = detection.ClassTarget(label=1)
        >>> e = detection.explain(net, torch.rand(2, 3, 64, 64), target, "grad-cam", "backbone")
        >>> e.maps.shape
        torch.Size([2, 64, 64])
    """
    for name in ("output_transform", "tta"):
        if name in method_options:
            raise MethodError(f"detection.explain sets its own {name}: leave it out")
    scorer, engine_targets = _scorer(targets, check_images(images, model).shape[0], dense)
    try:
        return explain_full(
            model,
            images,
            method,
            layer,
            engine_targets,
            upsample,
            output_transform=scorer,
            **method_options,
        )
    except LayerError as error:
        if scorer.detached and str(error).startswith("the target score does not depend"):
            raise ModelError(NO_GRADIENT) from error
        raise


def _scorer(
    targets: Target | Sequence[Target], batch: int, dense: DenseFormat | None
) -> tuple[DetectionScores, Any]:
    """The output transform for ``targets`` and the engine targets that read it."""
    if isinstance(targets, DetectionTarget | ClassTarget):
        scorer = DetectionScores([targets], dense)
        return scorer, scorer.column(0)
    if len(targets) != batch:
        raise TargetError(f"got {len(targets)} detection targets for {batch} images")
    scorer = DetectionScores(targets, dense)
    return scorer, [scorer.column(b) for b in range(batch)]


@dataclass(frozen=True)
class Detection:
    """One detection of the clean image: ``box`` (``xyxy`` pixels), label, score, index.

    ``index`` is the prediction's index for dense outputs (``None`` for torchvision's).
    """

    box: Box
    label: int
    score: float
    index: int | None = None

    def target(self, min_iou: float = 0.5) -> DetectionTarget:
        """The target that follows this detection: by index (dense) or by label and box."""
        if self.index is not None:
            return DetectionTarget(self.label, index=self.index)
        return DetectionTarget(self.label, box=self.box, min_iou=min_iou)


@dataclass(frozen=True)
class DetectionRecord:
    """A detection with its map: ``box`` (``xyxy`` pixels), ``label``, ``score``, ``map``.

    ``map`` is ``(H, W)`` in [0, 1] at the image's size; ``index`` as in :class:`Detection`.
    """

    box: Box
    label: int
    score: float
    map: torch.Tensor
    index: int | None = None


def _as_batch(image: torch.Tensor) -> torch.Tensor:
    if isinstance(image, torch.Tensor) and image.ndim == 3:
        image = image[None]
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[0] != 1:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise TargetError(f"explain one image, (C, H, W) or (1, C, H, W), got {shape}")
    return image


def detect(
    model: nn.Module,
    image: torch.Tensor,
    *,
    score_threshold: float = 0.5,
    classes: Collection[int] | None = None,
    max_detections: int = 20,
    dense: DenseFormat | None = None,
    nms_iou: float = 0.45,
) -> list[Detection]:
    """The detections of one image, best first, from one forward pass (eval mode, no graph).

    A torchvision-style output is taken as it is (the model has already suppressed
    overlaps); a dense output gives each prediction its best class (score times
    objectness) and is suppressed here, class by class, at ``nms_iou``.

    Args:
        model: the detector.
        image: ``(C, H, W)`` or ``(1, C, H, W)``.
        score_threshold: the least score kept.
        classes: the labels to keep (default all).
        max_detections: keep at most this many, the best.
        dense: how to read a dense output.
        nms_iou: the overlap above which a dense prediction is suppressed.
    """
    batch = check_images(_as_batch(image), model)
    with model_guard(model), torch.inference_mode():
        (found,) = detections_of(model(batch), dense)
    boxes, scores, labels = (t.clone() if t is not None else None for t in found)
    assert boxes is not None and scores is not None
    index: torch.Tensor | None = None
    if labels is None:  # dense: best (allowed) class per prediction, then suppression
        if classes is not None:
            allowed = torch.zeros(scores.shape[1], dtype=torch.bool, device=scores.device)
            allowed[[c for c in classes if 0 <= c < scores.shape[1]]] = True
            scores = scores.masked_fill(~allowed, float("-inf"))
        scores, labels = scores.max(dim=1)
        index = torch.nonzero(scores >= score_threshold)[:, 0]
        index = index[nms(boxes[index], scores[index], labels[index], nms_iou)]
        boxes, scores, labels = boxes[index], scores[index], labels[index]
    keep = scores >= score_threshold
    if classes is not None:
        keep &= torch.isin(labels, torch.as_tensor(list(classes), device=labels.device))
    order = torch.nonzero(keep)[:, 0]
    order = order[torch.argsort(scores[order], descending=True)][:max_detections]
    return [
        Detection(
            tuple(float(v) for v in boxes[i].tolist()),  # type: ignore[arg-type]
            int(labels[i]),
            float(scores[i]),
            None if index is None else int(index[i]),
        )
        for i in order.tolist()
    ]


def explain_detections(
    model: nn.Module,
    image: torch.Tensor,
    method: str = DEFAULT_METHOD,
    layer: LayersLike = None,
    *,
    score_threshold: float = 0.5,
    classes: Collection[int] | None = None,
    max_detections: int = 20,
    dense: DenseFormat | None = None,
    min_iou: float = 0.5,
    batch_size: int = 8,
    **method_options: Any,
) -> list[DetectionRecord]:
    """Every detection of one image with its map: run the detector once, explain each.

    The detections come from :func:`detect` (same options); each is explained by its
    :meth:`Detection.target` (label and box, IoU at least ``min_iou``; dense outputs: its
    prediction index) with :func:`explain`, ``batch_size`` detections per call, by
    ``method`` (by default :data:`DEFAULT_METHOD`, Grad-CAM) with ``method_options``.

    Returns:
        One :class:`DetectionRecord` per detection, best first (none if nothing passes).

    Example:
        >>> import torch
        >>> from sacam.detection import explain_detections
        >>> from sacam.examples import tiny_detector
        >>> _ = torch.manual_seed(0)
        >>> records = explain_detections(tiny_detector(), torch.rand(3, 64, 64), "grad-cam",
        ...                              "backbone", score_threshold=0.3)
        >>> [tuple(r.map.shape) for r in records][:1]
        [(64, 64)]
    """
    if batch_size < 1:
        raise MethodError(f"batch_size must be 1 or more, got {batch_size}")
    batch = _as_batch(image)
    found = detect(
        model,
        batch,
        score_threshold=score_threshold,
        classes=classes,
        max_detections=max_detections,
        dense=dense,
    )
    records: list[DetectionRecord] = []
    for start in range(0, len(found), batch_size):
        chunk = found[start : start + batch_size]
        images = batch.repeat(len(chunk), *([1] * (batch.ndim - 1)))
        targets = [d.target(min_iou) for d in chunk]
        maps = explain(model, images, targets, method, layer, dense=dense, **method_options).maps
        records += [
            DetectionRecord(d.box, d.label, d.score, m, d.index)
            for d, m in zip(chunk, maps, strict=True)
        ]
    return records
