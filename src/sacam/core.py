"""The engine every CAM method stands on: :class:`BaseCAM`, the template of a call.

A method subclasses :class:`BaseCAM` and overrides one function: :meth:`BaseCAM.weights`
(channel weights, shape ``(B, K)``), :meth:`BaseCAM.channel_maps` (per-channel, per-position
contributions ``(B, K, h, w)`` whose channel sum is the raw map, for element-wise methods)
or, where a method needs it, :meth:`BaseCAM.layer_map` (the whole raw map, shape
``(B, h, w)``). The base owns everything else: input checks, hooks, targets, the weighted
sum (or, with ``eigen_smooth=True``, the first-principal-component projection of the
contributions), ReLU, upsampling, normalisation and multi-layer fusion.

Methods that explain several layers together, or whose map does not come from the target
layers' activations, override one more step of the same template (:meth:`BaseCAM.explain`):

- :meth:`BaseCAM.raw_maps`: the call's raw maps, by label. The default probes the model,
  reads the layers of :meth:`BaseCAM.select_layers` (default: ``layer``) in one pass
  (forward, and backward for gradient methods) and returns :meth:`BaseCAM.combine` of
  them (default: each layer's :meth:`BaseCAM.layer_map`; Poly-CAM multiplies its stages
  from deep to shallow). Maps at the input's resolution (FullGrad, SESS), attention maps
  (LeGrad) and another method's maps (Finer-CAM, Refine-CAM) override ``raw_maps``.
- Each raw map is ReLU'd, resized to :meth:`BaseCAM.fusion_size` (default: the output's
  size) and normalised; :meth:`BaseCAM.fuse` makes several into one (default:
  ``fusion``), which is resized to the output's size and normalised again if needed.

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
from collections.abc import Callable
from contextvars import ContextVar
from typing import ClassVar, Literal, cast

import torch
from torch import nn

from ._hooks import check_images, model_guard
from ._layers import LayerRef, LayersLike, ProbeRecord, probe, resolve_layers
from ._outputs import Activation, LogitsModel, OutputTransform, logits_model
from ._passes import gradient_pass, layer_pass, layer_tensors
from ._projection import principal_projection
from .errors import InputError, MethodError, ModelError
from .explanation import (
    CallContext,
    Explanation,
    LayerData,
    collect,
    largest_size,
    layer_outputs,
    normalize_maps,
    resize_maps,
)
from .targets import ScoreFn, TargetsLike

ReshapeTransform = Callable[[torch.Tensor], torch.Tensor]
# set by BaseCAM.explain_graph for the duration of one call (per thread / task)
_KEEP_GRAPH: ContextVar[bool] = ContextVar("sacam_keep_graph", default=False)

__all__ = ["BaseCAM", "volume_methods"]


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
        activation: what the output's scores mean, for the probabilities a call reports
            and the methods that score probabilities (Recipro-CAM, Score-CAM, ...):
            ``"softmax"`` (one class per image), ``"sigmoid"`` (independent labels: a
            multi-label classifier) or ``"none"`` (the output holds probabilities). ``None``
            decides from the model: sigmoid for a one-logit output, ``"none"`` for an
            ``nn.Sigmoid``'s output, else softmax (:func:`sacam._outputs.activation_of`).

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
        activation: Activation | None = None,
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
        self.logits_model: LogitsModel = logits_model(model, output_transform, activation)
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

    def select_layers(self, record: ProbeRecord, images: torch.Tensor) -> list[LayerRef]:
        """The layers a call explains (default: ``layer``); ``record``: the model's probe."""
        return resolve_layers(self.model, self.layer, record, ndim=images.ndim)

    def combine(self, layers: list[LayerData], ctx: CallContext) -> dict[str, torch.Tensor]:
        """The call's raw maps from its layers: one :meth:`layer_map` per layer label."""
        return {ld.ref.label: self.layer_map(ld, ctx) for ld in layers}

    def raw_maps(
        self, images: torch.Tensor, targets: TargetsLike, keep: bool = False
    ) -> tuple[CallContext, dict[str, torch.Tensor]]:
        """The call's context and raw maps ``{label: (B, h, w)}``, before ReLU and resizing.

        Runs inside the call's model guard (eval mode, parameters frozen, model lock). The
        default probes the model, reads the :meth:`select_layers` layers in one pass and
        returns :meth:`combine` of them. ``keep``: keep the graph, for :meth:`explain_graph`.
        """
        refs = self.select_layers(probe(self.model, images.detach()), images)
        grads, second = self.uses_gradients, self.second_order
        read = layer_pass(self.logits_model, images, refs, targets, grads, second, keep)
        layers = [
            LayerData(ref, *layer_tensors(ref, tensors, images.ndim, self.reshape_transform))
            for ref, tensors in zip(refs, read.layers(), strict=True)
        ]
        ctx = CallContext.detached(
            self.logits_model, images, read.output, read.score_fn, read.class_idx, read.scores
        )
        return ctx, self.combine(layers, ctx)

    def fusion_size(self, raw: dict[str, torch.Tensor], size: tuple[int, ...]) -> tuple[int, ...]:
        """The grid the maps are normalised and fused on; default: the output's ``size``."""
        return size

    def fuse(
        self, layer_maps: dict[str, torch.Tensor], raw: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The call's map from several normalised per-layer maps, and its constant flags.

        ``layer_maps`` are the normalised maps, all on one grid; ``raw`` the raw maps they
        came from. The default combines them by ``fusion`` (element-wise maximum or mean)
        and normalises the result (:func:`~sacam.explanation.normalize_maps`).
        """
        stack = torch.stack(list(layer_maps.values()))
        return normalize_maps(stack.amax(0) if self.fusion == "max" else stack.mean(0))

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
        keep_graph = _KEEP_GRAPH.get()
        checked = self.check_input(images)
        images = images if keep_graph else checked
        with model_guard(self.model, eval_mode=self.eval_mode, freeze=True):
            ctx, raw = self.raw_maps(images, targets, keep_graph)
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

    def gradient_pass(
        self, images: torch.Tensor, ref: LayerRef, score_fn: ScoreFn
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One more forward and backward pass: ``(A, dy/dA)`` of ``ref`` on ``images``.

        For methods that need the layer on other inputs (noisy copies, ...), run inside the
        call; nothing accumulates in ``.grad``. Both detached, after ``reshape_transform``.
        """
        stored, grad = gradient_pass(self.logits_model, images, ref, score_fn)
        a, g, _ = layer_tensors(ref, (stored, grad, None), images.ndim, self.reshape_transform)
        return a, cast(torch.Tensor, g)

    def _finish(
        self, raw: dict[str, torch.Tensor], ctx: CallContext, images: torch.Tensor, upsample: bool
    ) -> Explanation:
        """Normalise the raw maps, fuse them and collect the :class:`Explanation`."""
        size = tuple(images.shape[2:]) if upsample else largest_size(raw)
        layer_maps, constant = layer_outputs(raw, self.fusion_size(raw, size))
        if len(layer_maps) == 1:
            (maps,) = layer_maps.values()
        else:
            maps, constant = self.fuse(layer_maps, raw)
        if tuple(maps.shape[1:]) != size:
            maps, constant = normalize_maps(resize_maps(maps, size))
        return collect(ctx, maps, constant, layer_maps)

    @classmethod
    def option_defaults(cls) -> dict[str, object]:
        """Keyword options of this method's constructor (besides model and layer), in order.

        Each maps to its default, read from the most derived constructor that declares it;
        ``inspect.Parameter.empty`` marks an option without one.
        """
        found: dict[str, object] = {}
        for init in (vars(klass)["__init__"] for klass in cls.__mro__ if "__init__" in vars(klass)):
            for p in inspect.signature(init).parameters.values():
                if p.kind is p.KEYWORD_ONLY:
                    found.setdefault(p.name, p.default)
        return found

    @classmethod
    def option_names(cls) -> list[str]:
        """Keyword options this method's constructor accepts (besides model and layer)."""
        return list(cls.option_defaults())
