"""The engine every CAM method stands on.

A method subclasses :class:`BaseCAM` and overrides one function: :meth:`BaseCAM.weights`
(channel weights, shape ``(B, K)``), :meth:`BaseCAM.channel_maps` (per-channel, per-position
contributions ``(B, K, h, w)`` whose channel sum is the raw map, for element-wise methods)
or, where a method needs it, :meth:`BaseCAM.layer_map` (the whole raw map, shape
``(B, h, w)``). The base owns everything else: input checks, hooks, targets, the weighted
sum (or, with ``eigen_smooth=True``, the first-principal-component projection of the
contributions), ReLU, upsampling, normalisation and multi-layer fusion.

Hook discipline:

- forward hooks only; gradients come from ``torch.autograd.grad`` on the stored layer
  output, so in-place operations after the layer are harmless (the hook hands the rest of
  the network a copy);
- during a call the model is put in eval mode and its parameters stop requiring grad (the
  graph then starts at the target layer: a backward pass goes no further than needed);
  every training flag and ``requires_grad`` flag is restored, and every hook removed, in
  ``finally`` blocks, after success and after an exception;
- every call holds the model's lock (:func:`sacam._hooks.model_lock`), so calls on one
  model from several threads are serialised and never see each other's flags or hooks;
  hooks act only on forward passes of the calling thread;
- nothing of a call (activations, gradients, graphs) is kept on the model or the method;
- gradient-free passes run under ``torch.inference_mode()``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from ._hooks import Capture, check_images, model_guard
from ._layers import LayerRef, LayersLike, probe, resolve_layers
from ._outputs import LogitsModel, OutputTransform, logits_model
from ._projection import principal_projection
from .errors import InputError, LayerError, MethodError, ModelError
from .targets import ScoreFn, TargetsLike, evaluate_scores, resolve_targets

ReshapeTransform = Callable[[torch.Tensor], torch.Tensor]
# set by BaseCAM.explain_graph for the duration of one call (per thread / task)
_KEEP_GRAPH: ContextVar[bool] = ContextVar("sacam_keep_graph", default=False)

__all__ = [
    "BaseCAM",
    "CallContext",
    "Explanation",
    "LayerData",
    "normalize_maps",
    "spatial_dims",
    "volume_methods",
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


def predict(
    model: nn.Module, images: torch.Tensor, output_transform: OutputTransform | None = None
) -> torch.Tensor:
    """Top-1 class of each image (eval mode, no graph), as an ordinary tensor.

    The model's output is read as logits by :func:`sacam._outputs.to_logits`
    (``output_transform`` for outputs it cannot read).

    Example:
        >>> from torch import nn
        >>> predict(nn.Flatten(), torch.tensor([[[[0.0, 2.0, 1.0]]]])).tolist()
        [1]
    """
    with model_guard(model), torch.inference_mode():
        top = logits_model(model, output_transform)(images).argmax(1)
    return top.clone()  # an ordinary tensor, usable outside inference mode


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


def volume_methods() -> list[str]:
    """Names of the methods that explain 5-D inputs ``(B, C, T, H, W)`` (3D CNNs, video).

    A method opts in with ``volumes = True`` in its own class body (not inherited, so a
    subclass that builds its map another way does not claim it by accident).

    Example:
        >>> import sacam
        >>> "grad-cam" in volume_methods(), "score-cam" in volume_methods()
        (True, False)
    """
    found: list[str] = []
    todo = list(BaseCAM.__subclasses__())
    while todo:
        cls = todo.pop(0)
        todo.extend(cls.__subclasses__())
        if cls.name and cls.accepts_volumes() and cls.name not in found:
            found.append(cls.name)
    return found


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


class BaseCAM:
    """Private base of every CAM method; subclasses override :meth:`weights` or :meth:`layer_map`.

    Args:
        model: a ``torch.nn.Module`` mapping ``(B, C, H, W)`` images to an output tensor.
        layer: the target layer(s): a module, a dotted name (``"_blocks.15"``, ``"_swish@1"``
            for the second call of a module run twice), a list of them, or ``None`` for the
            last layer with a 4-D output of spatial size above 1.
        reshape_transform: maps a layer output to ``(B, K, h, w)``, e.g. tokens
            ``(B, N, C)`` of a transformer block.
        fusion: how maps of several layers combine: ``"max"`` (element-wise maximum of the
            normalised maps, torchcam's choice) or ``"mean"``.
        eval_mode: run the model in eval mode during the call (restored afterwards).
            ``False`` runs it in its own mode (batch statistics, dropout for a training-mode
            model); batch-norm running statistics updated by the call's forward passes
            are restored afterwards, so the model is left exactly as it was.
        eigen_smooth: replace the channel sum of the contributions (``w_k A^k``, or the
            element-wise terms of Layer-CAM, HiRes-CAM, ...) by their projection on their
            first principal component, as pytorch-grad-cam's ``eigen_smooth`` (centred SVD
            over positions); sacam fixes the sign so the projection correlates positively
            with the unsmoothed map, where pytorch-grad-cam keeps the SVD's arbitrary sign.
            Methods that build their map another way (Eigen-CAM, Group-CAM, SA-CAM, ...)
            refuse it.
        output_transform: a callable from the model's output to the ``(B, classes)``
            tensor to explain, for outputs sacam cannot read by itself. Without it, a
            tensor is used as is, an object with ``.logits`` (Hugging Face) gives its
            ``logits``, a dict its ``"logits"`` entry (else its only tensor value) and a
            tuple or list its first element (:func:`sacam._outputs.to_logits`). Targets
            (callables included) see the converted output.

    5-D inputs ``(B, C, T, H, W)`` (3D CNNs, video) are explained by the methods that set
    ``volumes = True`` (:func:`volume_methods`: the gradient and decomposition
    families); the target layer is then a 5-D ``(B, K, t, h, w)`` output, weights average
    over ``t, h, w`` and the maps ``(B, T, H, W)`` are upsampled trilinearly. Other methods
    refuse 5-D inputs with an error that names those that accept them.
    """

    name: ClassVar[str] = ""
    uses_gradients: ClassVar[bool] = True
    #: the map is built from the layer's activations and gradients with torch operations
    #: only, so :meth:`explain_graph` can differentiate it w.r.t. the input
    graph_safe: ClassVar[bool] = False
    volumes: ClassVar[bool] = False
    #: the engine's backward keeps its graph and fills :attr:`LayerData.hvp` by a double
    #: backward, in the same pass as the gradients
    second_order: ClassVar[bool] = False
    #: many forward passes per image outside the perturbation family (the web app runs it as a job)
    many_passes: ClassVar[bool] = False

    def __init__(
        self,
        model: nn.Module,
        layer: LayersLike = None,
        *,
        reshape_transform: ReshapeTransform | None = None,
        fusion: Literal["max", "mean"] = "max",
        eval_mode: bool = True,
        eigen_smooth: bool = False,
        output_transform: OutputTransform | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise MethodError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(model, torch.jit.ScriptModule):
            raise ModelError(
                "TorchScript modules take no forward hooks, so their layers cannot be read: "
                "export the model with torch.export.save (a .pt2 file) or load the "
                "architecture with its state dict instead"
            )
        if fusion not in ("max", "mean"):
            raise MethodError(f"fusion must be 'max' or 'mean', got {fusion!r}")
        if not isinstance(eigen_smooth, bool):
            raise MethodError(f"eigen_smooth must be True or False, got {eigen_smooth!r}")
        if eigen_smooth and type(self).layer_map is not BaseCAM.layer_map:
            raise MethodError(
                f"{self.name or type(self).__name__} builds its map without a channel sum, so "
                "eigen_smooth does not apply to it"
            )
        self.eigen_smooth = eigen_smooth
        self.model = model
        self.output_transform = output_transform
        # every forward pass of the engine and of the methods goes through this wrapper
        self.logits_model: LogitsModel = logits_model(model, output_transform)
        self.layer = layer
        self.reshape_transform = reshape_transform
        self.fusion = fusion
        self.eval_mode = eval_mode

    # ----------------------------------------------------------------- to override
    def weights(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """Channel weights ``w^c_k`` of shape ``(B, K)``; the default map is ReLU(Σ_k w_k A^k)."""
        raise NotImplementedError(f"{type(self).__name__} must override weights() or layer_map()")

    def channel_maps(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """Contributions ``(B, K, h, w)`` whose sum over channels is the raw map.

        The default is ``w_k A^k`` from :meth:`weights`; element-wise methods override it.
        """
        w = self.weights(layer, ctx)
        a = layer.activations
        return w.to(a.dtype).reshape(w.shape + (1,) * (a.ndim - 2)) * a

    def layer_map(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """Raw map of one layer, ``(B, h, w)``, before ReLU and normalisation."""
        if self.eigen_smooth:
            contrib = self.channel_maps(layer, ctx)
            return principal_projection(contrib, center=True, reference=contrib.sum(1))
        if type(self).channel_maps is BaseCAM.channel_maps:
            # the weighted sum, without building the (B, K, h, w) products
            w = self.weights(layer, ctx)
            a = layer.activations
            spec = "bk,bkhw->bhw" if a.ndim == 4 else "bk,bk...->b..."
            return torch.einsum(spec, w.to(a.dtype), a)
        return self.channel_maps(layer, ctx).sum(1)

    def expected_rows(self, shape: tuple[int, ...], image_size: tuple[int, int]) -> int:
        """Rows the model's forward passes produce to explain one image (an estimate).

        For progress reports (the web app's jobs count the rows of each pass's output).
        ``shape`` is the target layer's output shape ``(1, K, h, w)``, ``image_size`` the
        model's input size. The default is the layer probe and the engine's clean pass.
        """
        return 2

    # ----------------------------------------------------------------- public API
    def __call__(
        self, images: torch.Tensor, targets: TargetsLike = None, *, upsample: bool = True
    ) -> torch.Tensor:
        """Return the maps ``(B, H, W)`` in [0, 1] (``(B, h, w)`` if ``upsample=False``).

        5-D inputs ``(B, C, T, H, W)`` give ``(B, T, H, W)`` (methods in
        :func:`volume_methods`).
        """
        return self.explain(images, targets, upsample=upsample).maps

    def supports_graph(self) -> bool:
        """Whether :meth:`explain_graph` gives maps differentiable w.r.t. the input."""
        return self.graph_safe

    def explain_graph(self, images: torch.Tensor, targets: TargetsLike = None) -> Explanation:
        """Like :meth:`explain`, with maps that stay differentiable w.r.t. ``images``.

        For attacks that differentiate a map w.r.t. the input: activations and gradients
        are not detached, and the gradient w.r.t. the layer is taken with
        ``create_graph=True`` (differentiating the map is then a double backward). Only
        for methods whose :meth:`supports_graph` is True.
        """
        if not self.supports_graph():
            raise MethodError(
                f"{self.name or type(self).__name__} (with these options) does not build a "
                "map that is differentiable w.r.t. the input"
            )
        token = _KEEP_GRAPH.set(True)
        try:
            return self.explain(images, targets)
        finally:
            _KEEP_GRAPH.reset(token)

    def explain(
        self, images: torch.Tensor, targets: TargetsLike = None, *, upsample: bool = True
    ) -> Explanation:
        """Explain a batch and return an :class:`Explanation` with maps and details.

        Args:
            images: ``(B, C, H, W)`` float tensor on the model's device, normalised as the
                model expects; ``(B, C, T, H, W)`` for the methods of
                :func:`volume_methods`.
            targets: ``None`` (top-1 class per sample), an ``int``, one ``int`` per sample,
                or callables mapping the model output to one score per sample.
            upsample: resize maps bilinearly (trilinearly for 5-D inputs) to the input size
                (else keep layer size).
        """
        model = self.model
        keep_graph = _KEEP_GRAPH.get()
        checked = self.check_input(images)
        images = images if keep_graph else checked
        with model_guard(model, eval_mode=self.eval_mode, freeze=True):
            record = probe(model, checked)
            refs = resolve_layers(model, self.layer, record, ndim=checked.ndim)
            ctx, layers = self._forward(images, refs, targets, keep_graph)
            raw = {ld.ref.label: self.layer_map(ld, ctx) for ld in layers}
        return self._finish(raw, ctx, images, upsample)

    @classmethod
    def accepts_volumes(cls) -> bool:
        """Whether this class itself declares 5-D inputs (``volumes = True`` in its body)."""
        return bool(cls.__dict__.get("volumes", False))

    def check_input(self, images: object) -> torch.Tensor:
        """:func:`sacam._hooks.check_images`, with 5-D inputs for :func:`volume_methods` only."""
        if isinstance(images, torch.Tensor) and images.ndim == 5 and not self.accepts_volumes():
            raise InputError(
                f"{self.name or type(self).__name__} explains 4-D images (B, C, H, W), got 5-D "
                f"input {tuple(images.shape)}; 5-D inputs (B, C, T, H, W) are explained by: "
                f"{', '.join(volume_methods())}"
            )
        return check_images(images, self.model, volumes=True)

    # ----------------------------------------------------------------- internals
    def _forward(
        self, images: torch.Tensor, refs: list[LayerRef], targets: TargetsLike, keep: bool = False
    ) -> tuple[CallContext, list[LayerData]]:
        with Capture(refs, with_grad=self.uses_gradients) as cap:
            if self.uses_gradients:
                with torch.enable_grad():
                    output = self.logits_model(images)
                    score_fn, class_idx = resolve_targets(targets, output.detach())
                    scores = evaluate_scores(score_fn, output)
                    stored = self._stored(cap, refs)
                    if not scores.requires_grad:
                        raise LayerError(
                            "the target score does not depend on the target layer(s) "
                            f"{[r.label for r in refs]}: pick a layer on the path to the output"
                        )
                    grads = torch.autograd.grad(
                        scores.sum(),
                        stored,
                        allow_unused=True,
                        create_graph=keep or self.second_order,
                    )
                    for ref, g in zip(refs, grads, strict=True):
                        if g is None:
                            raise LayerError(
                                f"the target score does not depend on layer {ref.label!r}: "
                                "pick a layer on the path to the output"
                            )
                    hvps: list[torch.Tensor | None] = [None] * len(refs)
                    if self.second_order:
                        hvps = _hvps(stored, grads, keep)
                acts = list(stored) if keep else [a.detach() for a in stored]
                grad_list: list[torch.Tensor | None] = [g if keep else g.detach() for g in grads]
            else:
                with torch.enable_grad() if keep else torch.inference_mode():
                    output = self.logits_model(images)
                    score_fn, class_idx = resolve_targets(targets, output)
                    scores = evaluate_scores(score_fn, output)
                acts = [a.clone() for a in self._stored(cap, refs)]  # leave inference mode
                grad_list = [None] * len(refs)
                hvps = [None] * len(refs)
                output, scores = output.clone(), scores.clone()
                class_idx = class_idx.clone() if class_idx is not None else None
        layers = [
            LayerData(ref, *self._to_maps(ref, a, g, images.ndim), self._reshaped(h))
            for ref, a, g, h in zip(refs, acts, grad_list, hvps, strict=True)
        ]
        ctx = self.context(images, output, score_fn, class_idx, scores)
        return ctx, layers

    def context(
        self,
        images: torch.Tensor,
        output: torch.Tensor,
        score_fn: ScoreFn,
        class_idx: torch.Tensor | None,
        scores: torch.Tensor,
    ) -> CallContext:
        """The call's :class:`CallContext` (logits and scores detached)."""
        return CallContext(
            self.logits_model, images, output.detach(), score_fn, class_idx, scores.detach()
        )

    @staticmethod
    def _stored(cap: Capture, refs: list[LayerRef]) -> list[torch.Tensor]:
        missing = [r.label for r in refs if r.label not in cap.stored]
        if missing:
            raise LayerError(f"layer(s) {missing} did not run in this forward pass")
        return [cap.stored[r.label] for r in refs]

    def gradient_pass(
        self, images: torch.Tensor, ref: LayerRef, score_fn: ScoreFn
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One more forward and backward pass: ``(A, dy/dA)`` of ``ref`` on ``images``.

        For methods that need the layer on other inputs (noisy copies, ...). It uses the
        engine's own capture hook, only for this pass, and ``torch.autograd.grad`` on the
        stored layer output, so nothing is accumulated in ``.grad``; the caller runs it
        inside the call (model in eval mode, parameters frozen). Both come back detached,
        as ``(B, K, h, w)`` (after ``reshape_transform``; ``(B, K, t, h, w)`` for 5-D
        inputs).
        """
        with Capture([ref], with_grad=True) as cap, torch.enable_grad():
            output = self.logits_model(images)
            scores = evaluate_scores(score_fn, output)
            (stored,) = self._stored(cap, [ref])
            if not scores.requires_grad:
                raise LayerError(
                    f"the target score does not depend on layer {ref.label!r}: pick a layer "
                    "on the path to the output"
                )
            (grad,) = torch.autograd.grad(scores.sum(), stored)
        a, g = self._to_maps(ref, stored.detach(), grad.detach(), images.ndim)
        return a, cast(torch.Tensor, g)

    def _reshaped(self, t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None or self.reshape_transform is None:
            return t
        return self.reshape_transform(t)

    def _to_maps(
        self, ref: LayerRef, a: torch.Tensor, g: torch.Tensor | None, ndim: int = 4
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``ndim``: that of the input; a layer's output must have the same (4 or 5)."""
        a, g = cast(torch.Tensor, self._reshaped(a)), self._reshaped(g)
        if a.ndim != ndim:
            if ndim == 5:
                raise LayerError(
                    f"layer {ref.label!r} outputs shape {tuple(a.shape)}, not (B, K, t, h, w): "
                    "for 5-D inputs pick a 3-D convolutional layer (e.g. an nn.Conv3d's output)"
                )
            raise LayerError(
                f"layer {ref.label!r} outputs shape {tuple(a.shape)}, not (B, K, h, w): pick a "
                "convolutional layer, or pass reshape_transform for token outputs"
            )
        return a, g

    def _finish(
        self,
        raw: dict[str, torch.Tensor],
        ctx: CallContext,
        images: torch.Tensor,
        upsample: bool,
    ) -> Explanation:
        if upsample:
            size = tuple(images.shape[2:])
        else:
            size = max((tuple(m.shape[1:]) for m in raw.values()), key=math.prod)
        mode = "bilinear" if len(size) == 2 else "trilinear"
        layer_maps: dict[str, torch.Tensor] = {}
        constant_any = torch.zeros(images.shape[0], dtype=torch.bool, device=images.device)
        for label, m in raw.items():
            m = m if m.dtype == torch.float64 else m.float()  # float64 models keep float64 maps
            m = torch.nan_to_num(m, nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0.0)
            if tuple(m.shape[1:]) != size:
                m = F.interpolate(m[:, None], size=size, mode=mode, align_corners=False)[:, 0]
            m, constant = normalize_maps(m)
            layer_maps[label] = m
            constant_any |= constant
        stack = torch.stack(list(layer_maps.values()))
        if len(layer_maps) == 1:
            maps, constant = stack[0], constant_any
        else:
            fused = stack.amax(0) if self.fusion == "max" else stack.mean(0)
            maps, constant = normalize_maps(fused)
        probs = None
        if ctx.class_idx is not None and ctx.output.ndim == 2:
            probs = torch.softmax(ctx.output.float(), 1).gather(1, ctx.class_idx[:, None])[:, 0]
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

    @classmethod
    def option_names(cls) -> list[str]:
        """Keyword options this method's constructor accepts (besides model and layer)."""
        names: list[str] = []
        for klass in cls.__mro__:
            if "__init__" not in vars(klass):
                continue
            for p in inspect.signature(vars(klass)["__init__"]).parameters.values():
                if p.kind is p.KEYWORD_ONLY and p.name not in names:
                    names.append(p.name)
        return names
