"""One map per label or class, in one call: multi-label classifiers and segmentation outputs.

:func:`explain_labels` explains every label a multi-label (or any) classifier gives an
image: the labels whose probability reaches a threshold, or its top ``k``.
:func:`explain_segmentation` explains every class a segmentation output ``(B, K, H, W)``
predicts somewhere in an image, each by the pixels predicted as that class. Both run the
method once, on a batch holding one copy of an image per (image, label) pair with that
pair's target, and return the maps per image, keyed by label.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._hooks import model_guard
from ._layers import LayersLike
from ._outputs import Activation, check_activation, logits_model, probabilities
from .api import build_method
from .errors import InputError, TargetError
from .targets import SemanticSegmentationTarget

__all__ = ["explain_labels", "explain_segmentation"]


def _forward(
    model: nn.Module, images: torch.Tensor, activation: Activation | None
) -> tuple[nn.Module, torch.Tensor]:
    wrapped = logits_model(model, None, check_activation(activation))
    with model_guard(model), torch.inference_mode():
        out = wrapped(images)
    return wrapped, out.clone()


def _explain_pairs(
    model: nn.Module,
    images: torch.Tensor,
    pairs: list[tuple[int, int]],
    targets: list[Any],
    method: str,
    layer: LayersLike,
    options: dict[str, Any],
) -> list[dict[int, torch.Tensor]]:
    result: list[dict[int, torch.Tensor]] = [{} for _ in range(images.shape[0])]
    if not pairs:
        return result
    batch = images[[b for b, _ in pairs]]
    maps = build_method(model, method, layer, **options)(batch, targets)
    for (b, label), m in zip(pairs, maps, strict=True):
        result[b][label] = m
    return result


def explain_labels(
    model: nn.Module,
    images: torch.Tensor,
    method: str = "sa-cam",
    layer: LayersLike = None,
    *,
    threshold: float | None = 0.5,
    top: int | None = None,
    activation: Activation | None = "sigmoid",
    **method_options: Any,
) -> list[dict[int, torch.Tensor]]:
    """One map per predicted label of each image, in one run of the method.

    Args:
        model: a classifier; its output ``(B, labels)``.
        images: ``(B, C, H, W)``, normalised as the model expects.
        method: a registered method's name.
        layer: the target layer (``None``: the automatic choice).
        threshold: explain the labels whose probability is at least this (``None``: no
            threshold, use ``top``).
        top: explain each image's ``top`` most probable labels (with ``threshold``: at
            most ``top`` of those above it).
        activation: how the output becomes probabilities: ``"sigmoid"`` (independent
            labels, the default here), ``"softmax"``, ``"none"`` (the output holds
            probabilities) or ``None`` (sacam decides, see :class:`sacam.core.BaseCAM`).
        method_options: options of the method.

    Returns:
        One dict per image, ``{label: (H, W) map in [0, 1]}``, most probable label first.

    Example:
        >>> import torch
        >>> from sacam.examples import tiny_cnn
        >>> torch.manual_seed(0) and None
        >>> maps = explain_labels(tiny_cnn(classes=3), torch.rand(2, 3, 16, 16), "grad-cam",
        ...                       threshold=None, top=2)
        >>> [len(m) for m in maps], maps[0][next(iter(maps[0]))].shape
        ([2, 2], torch.Size([16, 16]))
    """
    if threshold is None and top is None:
        raise TargetError("pass threshold= (a probability), top= (a count) or both")
    if top is not None and (not isinstance(top, int) or isinstance(top, bool) or top < 1):
        raise TargetError(f"top must be a positive int, got {top!r}")
    wrapped, out = _forward(model, images, activation)
    if out.ndim != 2:
        raise TargetError(
            f"explain_labels needs a (B, labels) output, got {tuple(out.shape)}; for a "
            "segmentation output (B, K, H, W) use explain_segmentation"
        )
    probs = probabilities(wrapped, out)
    pairs: list[tuple[int, int]] = []
    for b, row in enumerate(probs):
        order = row.argsort(descending=True).tolist()
        chosen = [c for c in order if threshold is None or float(row[c]) >= threshold]
        pairs += [(b, c) for c in chosen[:top]]
    options = {"activation": activation, **method_options}
    return _explain_pairs(model, images, pairs, [c for _, c in pairs], method, layer, options)


def explain_segmentation(
    model: nn.Module,
    images: torch.Tensor,
    method: str = "grad-cam",
    layer: LayersLike = None,
    *,
    classes: list[int] | None = None,
    min_pixels: int = 1,
    **method_options: Any,
) -> list[dict[int, torch.Tensor]]:
    """One map per class a segmentation model predicts in each image, in one run of the method.

    The map of class ``c`` explains the sum of ``c``'s scores over the pixels the model
    labels ``c`` (:class:`~sacam.targets.SemanticSegmentationTarget` with that mask).

    Args:
        model: a segmentation model; its output (read as sacam reads outputs, e.g. a dict's
            only tensor or ``"logits"``) ``(B, K, H, W)``.
        images: ``(B, C, H, W)``.
        method: a registered method's name.
        layer: the target layer (``None``: the automatic choice).
        classes: the classes to explain where present (``None``: every class).
        min_pixels: a class is present where the model labels at least this many pixels.
        method_options: options of the method.

    Returns:
        One dict per image, ``{class: (H, W) map in [0, 1]}``, in class order.
    """
    wrapped, out = _forward(model, images, None)
    if out.ndim != 4:
        raise TargetError(
            f"explain_segmentation needs a (B, K, H, W) output, got {tuple(out.shape)}"
        )
    if min_pixels < 1:
        raise InputError(f"min_pixels must be at least 1, got {min_pixels}")
    wanted = range(out.shape[1]) if classes is None else classes
    labels = out.argmax(1)
    pairs: list[tuple[int, int]] = []
    targets: list[Any] = []
    for b in range(out.shape[0]):
        for c in wanted:
            mask = labels[b] == c
            if int(mask.sum()) >= min_pixels:
                pairs.append((b, c))
                targets.append(SemanticSegmentationTarget(c, mask))
    return _explain_pairs(model, images, pairs, targets, method, layer, dict(method_options))
