"""The engine's passes through the model: one forward (and backward) that reads target layers.

:func:`layer_pass` is the pass every layer-reading call makes: a forward with capture
hooks on the target layers and, for gradient methods, ``torch.autograd.grad`` of the
summed target scores on the stored layer outputs (a double backward as well for
second-order methods). Gradient-free passes run under ``torch.inference_mode()``, their
results copied out of it. :func:`gradient_pass` is one more forward and backward pass on
other inputs, for methods that need the layer on noisy or edited copies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ._hooks import Capture
from ._layers import LayerRef, ambiguity_message
from .errors import LayerError
from .targets import ScoreFn, TargetsLike, evaluate_scores, resolve_targets
from .tokens import Layout

__all__ = ["LayerPass", "gradient_pass", "layer_pass", "layer_tensors", "stored_outputs"]

Model = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class LayerPass:
    """What one pass read: the output, the targets and each layer's tensors (as captured).

    Attributes:
        output: the model's logits (with their graph for gradient passes).
        score_fn: batch callable, output -> ``(B,)`` target scores.
        class_idx: target class per sample, or ``None`` for callable targets.
        scores: ``score_fn(output)``.
        activations: each layer's output, detached unless the graph is kept.
        gradients: ``dy/dA`` per layer (``None`` in gradient-free passes).
        hvps: ``H A`` per layer for second-order passes, else ``None``.
    """

    output: torch.Tensor
    score_fn: ScoreFn
    class_idx: torch.Tensor | None
    scores: torch.Tensor
    activations: list[torch.Tensor]
    gradients: list[torch.Tensor | None]
    hvps: list[torch.Tensor | None]

    def layers(self) -> list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]]:
        """``(A, dy/dA, H A)`` of each layer."""
        return list(zip(self.activations, self.gradients, self.hvps, strict=True))


def stored_outputs(cap: Capture, refs: Sequence[LayerRef]) -> list[torch.Tensor]:
    """The outputs ``cap`` stored for ``refs``; a clear error for a layer that did not run."""
    missing = [r.label for r in refs if r.label not in cap.stored]
    if missing:
        raise LayerError(f"layer(s) {missing} did not run in this forward pass")
    return [cap.stored[r.label] for r in refs]


def _hvps(
    stored: Sequence[torch.Tensor], grads: Sequence[torch.Tensor | None], keep: bool
) -> list[torch.Tensor | None]:
    """``H A`` per layer: a double backward of each layer's gradient with ``A`` as its vector.

    ``H`` is the Hessian of the summed scores w.r.t. that layer alone. A gradient without a
    graph (a piecewise-linear network after the layer) gives zeros.
    """
    out: list[torch.Tensor | None] = []
    for a, g in zip(stored, grads, strict=True):
        h = None
        if g is not None and g.requires_grad:
            (h,) = torch.autograd.grad(
                g,
                a,
                grad_outputs=a.detach(),
                allow_unused=True,
                retain_graph=True,
                create_graph=keep,
            )
        if h is None:
            out.append(torch.zeros_like(a.detach()))
        else:
            out.append(h if keep else h.detach())
    return out


def _with_gradients(
    model: Model,
    images: torch.Tensor,
    refs: list[LayerRef],
    targets: TargetsLike,
    cap: Capture,
    second_order: bool,
    keep: bool,
) -> LayerPass:
    with torch.enable_grad():
        output = model(images)
        score_fn, class_idx = resolve_targets(targets, output.detach())
        scores = evaluate_scores(score_fn, output)
        stored = stored_outputs(cap, refs)
        if not scores.requires_grad:
            raise LayerError(
                "the target score does not depend on the target layer(s) "
                f"{[r.label for r in refs]}: pick a layer on the path to the output"
            )
        grads = torch.autograd.grad(
            scores.sum(), stored, allow_unused=True, create_graph=keep or second_order
        )
        for ref, g in zip(refs, grads, strict=True):
            if g is None:
                raise LayerError(
                    f"the target score does not depend on layer {ref.label!r}: "
                    "pick a layer on the path to the output"
                )
        hvps: list[torch.Tensor | None] = [None] * len(refs)
        if second_order:
            hvps = _hvps(stored, grads, keep)
    acts = list(stored) if keep else [a.detach() for a in stored]
    grad_list: list[torch.Tensor | None] = [g if keep else g.detach() for g in grads]
    return LayerPass(output, score_fn, class_idx, scores, acts, grad_list, hvps)


def _without_gradients(
    model: Model,
    images: torch.Tensor,
    refs: list[LayerRef],
    targets: TargetsLike,
    cap: Capture,
    keep: bool,
) -> LayerPass:
    with torch.enable_grad() if keep else torch.inference_mode():
        output = model(images)
        score_fn, class_idx = resolve_targets(targets, output)
        scores = evaluate_scores(score_fn, output)
    acts = [a.clone() for a in stored_outputs(cap, refs)]  # leave inference mode
    class_idx = class_idx.clone() if class_idx is not None else None
    none: list[torch.Tensor | None] = [None] * len(refs)
    return LayerPass(output.clone(), score_fn, class_idx, scores.clone(), acts, none, list(none))


def layer_pass(
    model: Model,
    images: torch.Tensor,
    refs: list[LayerRef],
    targets: TargetsLike,
    gradients: bool,
    second_order: bool = False,
    keep: bool = False,
) -> LayerPass:
    """One forward pass reading ``refs`` (and one backward pass when ``gradients``).

    Args:
        model: the logits model (the user's model behind the engine's output reader).
        images: the input batch.
        refs: the target layers.
        targets: the call's targets (see :func:`sacam.targets.resolve_targets`).
        gradients: take ``dy/dA`` of the summed target scores for every layer.
        second_order: also ``H A`` by a double backward (gradient passes only).
        keep: keep the graph (activations and gradients not detached), so that a map
            built from them stays differentiable w.r.t. the input.
    """
    with Capture(refs, with_grad=gradients) as cap:
        if gradients:
            return _with_gradients(model, images, refs, targets, cap, second_order, keep)
        return _without_gradients(model, images, refs, targets, cap, keep)


def gradient_pass(
    model: Model, images: torch.Tensor, ref: LayerRef, score_fn: ScoreFn
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, dy/dA)`` of ``ref`` on ``images``, both detached, as the layer outputs them."""
    with Capture([ref], with_grad=True) as cap, torch.enable_grad():
        output = model(images)
        scores = evaluate_scores(score_fn, output)
        (stored,) = stored_outputs(cap, [ref])
        if not scores.requires_grad:
            raise LayerError(
                f"the target score does not depend on layer {ref.label!r}: pick a layer "
                "on the path to the output"
            )
        (grad,) = torch.autograd.grad(scores.sum(), stored)
    return stored.detach(), grad.detach()


def layer_tensors(
    ref: LayerRef,
    tensors: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None],
    ndim: int,
    reshape: Callable[[torch.Tensor], torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """A layer's ``(A, dy/dA, H A)`` after ``reshape``, checked to have the input's ``ndim``.

    Without ``reshape``, the layout sacam recognised at the layer (``ref.layout``, see
    :mod:`sacam.tokens`) turns token and channel-last outputs into ``(B, C, h, w)``; a
    layer whose layout is ambiguous is refused. ``None`` entries stay ``None``.
    """
    if reshape is None and ndim == 4:
        if isinstance(ref.layout, tuple):
            raise LayerError(ambiguity_message(ref))
        if isinstance(ref.layout, Layout) and ref.layout.kind != "channels_first":
            reshape = ref.layout.to_maps
    a, g, h = (t if t is None or reshape is None else reshape(t) for t in tensors)
    assert a is not None  # activations are always given
    if a.ndim != ndim:
        if ndim == 5:
            raise LayerError(
                f"layer {ref.label!r} outputs shape {tuple(a.shape)}, not (B, K, t, h, w): "
                "for 5-D inputs pick a 3-D convolutional layer (e.g. an nn.Conv3d's output)"
            )
        raise LayerError(
            f"layer {ref.label!r} outputs shape {tuple(a.shape)}, not (B, K, h, w): pick a "
            "convolutional or token layer, or pass reshape_transform for other outputs"
        )
    return a, g, h
