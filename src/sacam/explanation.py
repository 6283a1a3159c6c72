"""What one call of a CAM method sees and returns, and how a raw map becomes a picture.

:class:`LayerData` (one target layer's activations and gradients), :class:`CallContext`
(the batch-level state shared by every layer) and :class:`Explanation` (the result), with
the map helpers the engine applies to every raw map: :func:`normalize_maps` and
:func:`output_map` (ReLU, resizing, min-max normalisation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import LayerRef
from ._outputs import probabilities
from .targets import ScoreFn

__all__ = [
    "CallContext",
    "Explanation",
    "LayerData",
    "collect",
    "largest_size",
    "layer_outputs",
    "normalize_maps",
    "output_map",
    "resize_maps",
    "spatial_dims",
]


def spatial_dims(t: torch.Tensor) -> tuple[int, ...]:
    """The spatial axes of a ``(B, K, h, w)`` or ``(B, K, t, h, w)`` tensor: ``(2, 3[, 4])``.

    Example:
        >>> spatial_dims(torch.zeros(1, 2, 3, 4, 5))
        (2, 3, 4)
    """
    return tuple(range(2, t.ndim))


@dataclass
class LayerData:
    """What a method sees of one target layer for one batch.

    Attributes:
        ref: the layer (module, name, call).
        activations: ``A``, shape ``(B, K, h, w)`` (``(B, K, t, h, w)`` for 5-D inputs).
        gradients: ``dy/dA`` of the summed target scores, same shape, or ``None`` for
            gradient-free methods.
        hvp: ``H A``, the Hessian of the summed target scores w.r.t. ``A`` times ``A``
            (same shape), for methods with ``second_order = True``; else ``None``.
    """

    ref: LayerRef
    activations: torch.Tensor
    gradients: torch.Tensor | None
    hvp: torch.Tensor | None = None

    @property
    def grads(self) -> torch.Tensor:
        """``gradients``, for methods the engine always gives them (gradient methods)."""
        if self.gradients is None:  # pragma: no cover - the engine always provides them
            raise RuntimeError(f"{self.ref.label}: a gradient method was called without gradients")
        return self.gradients


@dataclass
class CallContext:
    """The batch-level state of one call, shared by every layer.

    Attributes:
        model: the model as a callable that returns the logits: a
            :class:`~sacam._outputs.LogitsModel` around the user's model (whose submodules
            are the user's; in eval mode, parameters frozen, hooks active only when
            capturing). Structure (layer names) is read from the method's ``model``.
        images: the input batch ``(B, C, H, W)`` (``(B, C, T, H, W)`` for 5-D inputs).
        output: the logits on the clean images (detached; see ``output_transform``).
        score_fn: batch callable, model output -> ``(B,)`` target scores.
        class_idx: target class per sample, or ``None`` for callable targets.
        scores: ``score_fn(output)``, shape ``(B,)``.
        extras: per-call results a method wants to expose (e.g. SA-CAM's attention).
    """

    model: nn.Module
    images: torch.Tensor
    output: torch.Tensor
    score_fn: ScoreFn
    class_idx: torch.Tensor | None
    scores: torch.Tensor
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def detached(
        cls,
        model: nn.Module,
        images: torch.Tensor,
        output: torch.Tensor,
        score_fn: ScoreFn,
        class_idx: torch.Tensor | None,
        scores: torch.Tensor,
    ) -> CallContext:
        """The context of a call, with its logits and scores detached."""
        return cls(model, images, output.detach(), score_fn, class_idx, scores.detach())


@dataclass
class Explanation:
    """The full result of a call.

    Attributes:
        maps: ``(B, H, W)`` in [0, 1] (``(B, h, w)`` when not upsampled; ``(B, T, H, W)``
            for 5-D inputs); the fused map when several layers are explained.
        layer_maps: per layer label, its own normalised map.
        class_idx: the explained class of each sample (``None`` for callable targets).
        scores: the target score of each sample on the clean image.
        probabilities: softmax probability of the explained class (classification only).
        constant: ``(B,)`` bool, True where the map was constant (reported as all zeros).
        layers: labels of the explained layers.
        extras: method-specific inspection data (see each method's docs).
    """

    maps: torch.Tensor
    layer_maps: dict[str, torch.Tensor]
    class_idx: torch.Tensor | None
    scores: torch.Tensor
    probabilities: torch.Tensor | None
    constant: torch.Tensor
    layers: list[str]
    extras: dict[str, Any] = field(default_factory=dict)


def normalize_maps(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max normalise each map of ``(B, ...)`` to [0, 1].

    A constant map (max == min) has no ordering to show: it becomes all zeros and is
    flagged in the returned ``(B,)`` bool tensor rather than divided by zero.

    Example:
        >>> import torch
        >>> m, const = normalize_maps(torch.tensor([[[1.0, 3.0]], [[2.0, 2.0]]]))
        >>> m.tolist(), const.tolist()
        ([[[0.0, 1.0]], [[0.0, 0.0]]], [False, True])
    """
    flat = maps.flatten(1)
    lo = flat.min(dim=1).values
    hi = flat.max(dim=1).values
    span = hi - lo
    constant = ~(span > 0)
    shape = (-1,) + (1,) * (maps.ndim - 1)
    safe = torch.where(constant, torch.ones_like(span), span)
    out = (maps - lo.view(shape)) / safe.view(shape)
    out = torch.where(constant.view(shape), torch.zeros_like(out), out)
    return out.clamp_(0.0, 1.0), constant


def resize_maps(maps: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Resize ``(B, h, w)`` maps bilinearly (``(B, t, h, w)`` trilinearly) to ``size``.

    Example:
        >>> resize_maps(torch.ones(1, 2, 2), (4, 4)).shape
        torch.Size([1, 4, 4])
    """
    mode = "bilinear" if len(size) == 2 else "trilinear"
    return F.interpolate(maps[:, None], size=size, mode=mode, align_corners=False)[:, 0]


def output_map(raw: torch.Tensor, size: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """A raw map as the engine returns it: ReLU, resized to ``size``, min-max normalised.

    Non-finite values count as 0; float64 maps stay float64, other dtypes become float32.
    Returns the maps and the ``(B,)`` flags of constant maps (see :func:`normalize_maps`).

    Example:
        >>> m, const = output_map(torch.tensor([[[-1.0, 2.0], [4.0, float("nan")]]]), (2, 2))
        >>> m.tolist(), const.tolist()
        ([[[0.0, 0.5], [1.0, 0.0]]], [False])
    """
    m = raw if raw.dtype == torch.float64 else raw.float()
    m = torch.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0.0)
    if tuple(m.shape[1:]) != tuple(size):
        m = resize_maps(m, size)
    return normalize_maps(m)


def largest_size(raw: dict[str, torch.Tensor]) -> tuple[int, ...]:
    """The grid of the raw map with the most cells, e.g. ``(h, w)`` of ``(B, h, w)`` maps."""
    return max((tuple(m.shape[1:]) for m in raw.values()), key=math.prod)


def layer_outputs(
    raw: dict[str, torch.Tensor], size: tuple[int, ...]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Each raw map through :func:`output_map` at ``size``; ``(B,)`` flags: any was constant."""
    maps: dict[str, torch.Tensor] = {}
    constant: torch.Tensor | None = None
    for label, m in raw.items():
        maps[label], flat = output_map(m, size)
        constant = flat if constant is None else constant | flat
    if constant is None:
        raise ValueError("no raw maps to normalise")
    return maps, constant


def collect(
    ctx: CallContext,
    maps: torch.Tensor,
    constant: torch.Tensor,
    layer_maps: dict[str, torch.Tensor],
) -> Explanation:
    """The :class:`Explanation` of a call: its maps, and what its context knows.

    The probability of the explained class is :func:`sacam._outputs.probabilities` of the
    logits: their softmax, or their sigmoid for one-logit and multi-label outputs, or the
    output itself where it holds probabilities (classification outputs ``(B, classes)``
    with class targets only).
    """
    probs = None
    if ctx.class_idx is not None and ctx.output.ndim == 2:
        probs = probabilities(ctx.model, ctx.output).gather(1, ctx.class_idx[:, None])[:, 0]
    return Explanation(
        maps=maps,
        layer_maps=layer_maps,
        class_idx=ctx.class_idx,
        scores=ctx.scores,
        probabilities=probs,
        constant=constant,
        layers=list(layer_maps),
        extras=ctx.extras,
    )
