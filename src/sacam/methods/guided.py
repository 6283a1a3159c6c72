"""Guided Grad-CAM (Selvaraju et al., ICCV 2017): guided backpropagation × Grad-CAM."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .._locks import this_thread_only
from ..core import BaseCAM
from ..errors import MethodError
from ..explanation import CallContext, LayerData, normalize_maps
from ..registry import register_method
from ..targets import ScoreFn, evaluate_scores

__all__ = ["GuidedGradCAM", "guided_backprop"]

Reduce = Literal["max-abs", "sum-abs", "sum"]
REDUCTIONS = ("max-abs", "sum-abs", "sum")


class _GuidedGate(torch.autograd.Function):
    """Identity forward; backward lets only positive gradients through (guided backprop)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clone()  # a new tensor: later in-place ops never touch the ReLU's output

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.clamp_min(0)


def guided_backprop(
    model: nn.Module,
    images: torch.Tensor,
    score_fn: ScoreFn,
    relu_types: tuple[type[nn.Module], ...] = (nn.ReLU, nn.ReLU6),
) -> torch.Tensor:
    r"""Guided backpropagation (Springenberg et al., 2015): ``(B, C, H, W)`` input gradients.

    The gradient of the summed target scores with respect to the input, where every
    ReLU module (instances of ``relu_types``) passes back only positive gradients at
    positive inputs: ``∂/∂x = 1[x > 0] · ReLU(∂/∂out)`` (for ReLU6, ``1[0 < x < 6]``).

    The model itself is not changed: each such module gets a forward hook that returns
    its output through an identity whose backward is ``ReLU(grad)``; the module's own
    backward then applies its input mask. The hooks act only on this thread's passes
    and are removed in a ``finally``. Functional ReLUs (``F.relu`` in ``forward``) have no
    module to hook and stay ordinary. Call it inside :func:`sacam._hooks.model_guard`
    (eval mode, frozen parameters), as the engine does.

    Example:
        >>> net = nn.Sequential(nn.Linear(1, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> with torch.no_grad():
        ...     _ = net[0].weight.copy_(torch.tensor([[1.0], [1.0]])), net[0].bias.zero_()
        ...     _ = net[2].weight.copy_(torch.tensor([[1.0, -3.0]]))
        >>> x = torch.tensor([[2.0]])
        >>> guided_backprop(net, x, lambda out: out[:, 0]).item()  # plain gradient: -2
        1.0
    """
    handles: list[torch.utils.hooks.RemovableHandle] = []

    def gate(_module: nn.Module, _inp: object, out: object) -> object:
        return _GuidedGate.apply(out) if isinstance(out, torch.Tensor) else None

    hook = this_thread_only(gate)
    try:
        for module in model.modules():
            if isinstance(module, relu_types):
                handles.append(module.register_forward_hook(hook))
        x = images.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            scores = evaluate_scores(score_fn, model(x))
            (grad,) = torch.autograd.grad(scores.sum(), x)
    finally:
        for h in handles:
            h.remove()
    return grad.detach()


@register_method(
    "guided-grad-cam",
    paper="Selvaraju et al., ICCV 2017 (with guided backpropagation, Springenberg et al. 2015)",
    url="https://arxiv.org/abs/1610.02391",
    description="Grad-CAM upsampled to the input and multiplied by the guided-backpropagation "
    "gradient: an input-resolution map.",
    family="gradient",
)
class GuidedGradCAM(BaseCAM):
    r"""Guided Grad-CAM (Selvaraju et al., ICCV 2017, https://arxiv.org/abs/1610.02391).

    The Grad-CAM map, bilinearly upsampled to the input and min-max normalised
    (``M``, a constant map is 0), times the guided-backpropagation gradient ``G`` of the
    target score (Springenberg et al., https://arxiv.org/abs/1412.6806,
    :func:`guided_backprop`), reduced over the input channels:

    .. math:: L^c_{xy} = \mathrm{reduce}_{ch}\big(M_{xy}\, G_{ch,xy}\big),\quad
              M = \mathrm{minmax}\big(\mathrm{up}(\mathrm{ReLU}(\textstyle\sum_k w^c_k A^k))\big)

    The paper shows ``M ⊙ G`` as a colour image; sacam returns one map per image:
    ``channels="max-abs"`` (default: ``max_ch |·|``, the usual reduction of gradient
    saliency, Simonyan et al. 2014), ``"sum-abs"`` or ``"sum"`` (signed sum, then the
    engine's ReLU). The map has the input's resolution, with ``upsample=False`` too.
    ``Explanation.extras["guided_backprop"]`` holds ``G`` (``(B, C, H, W)``).

    ReLU modules are guided only inside the call, through forward hooks that are removed
    afterwards (the model's modules, their ``inplace`` flags and its hooks are left as
    they were). By default ``nn.ReLU`` and ``nn.ReLU6`` are guided (the default model,
    EfficientNet-Lite0, uses ReLU6). ``variant="pytorch-grad-cam"`` guides ``nn.ReLU``
    only, as pytorch-grad-cam 1.5.7's ``GuidedBackpropReLUModel`` (which swaps the
    modules for the call and puts back new non-in-place ``nn.ReLU()``); on a ReLU6
    network its "guided" gradient is the plain gradient. torchcam 0.5.0 has none.

    Cost: Grad-CAM's forward and backward pass plus one forward and backward pass to the
    input. ``eigen_smooth`` does not apply.

    Example:
        >>> import torch, sacam
        >>> from sacam.examples import tiny_cnn
        >>> net = tiny_cnn()
        >>> out = sacam.explain_full(net, torch.rand(2, 3, 16, 16), method="guided-grad-cam")
        >>> out.maps.shape, out.extras["guided_backprop"].shape
        (torch.Size([2, 16, 16]), torch.Size([2, 3, 16, 16]))
    """

    def __init__(
        self,
        *args: Any,
        channels: Reduce = "max-abs",
        variant: Literal["paper", "pytorch-grad-cam"] = "paper",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if channels not in REDUCTIONS:
            raise MethodError(
                f"guided-grad-cam channels must be one of {', '.join(REDUCTIONS)}, got {channels!r}"
            )
        if variant not in ("paper", "pytorch-grad-cam"):
            raise MethodError(
                f"guided-grad-cam variant must be 'paper' or 'pytorch-grad-cam', got {variant!r}"
            )
        self.channels = channels
        self.variant = variant

    def guided_gradient(self, ctx: CallContext) -> torch.Tensor:
        """Guided backpropagation of the call's targets, computed once per call."""
        if "guided_backprop" not in ctx.extras:
            kinds: tuple[type[nn.Module], ...] = (
                (nn.ReLU,) if self.variant == "pytorch-grad-cam" else (nn.ReLU, nn.ReLU6)
            )
            ctx.extras["guided_backprop"] = guided_backprop(
                ctx.model, ctx.images, ctx.score_fn, kinds
            )
        return ctx.extras["guided_backprop"]

    def layer_map(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """``reduce(M ⊙ G)`` at the input's resolution, ``(B, H, W)``."""
        weights = layer.grads.mean(dim=(2, 3))
        raw = torch.einsum("bk,bkhw->bhw", weights, layer.activations).clamp_min(0)
        size = tuple(ctx.images.shape[-2:])
        up = F.interpolate(raw[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        cam, _ = normalize_maps(torch.nan_to_num(up))
        product = cam[:, None].to(ctx.images.dtype) * self.guided_gradient(ctx)
        if self.channels == "max-abs":
            return product.abs().amax(dim=1)
        if self.channels == "sum-abs":
            return product.abs().sum(dim=1)
        return product.sum(dim=1)
