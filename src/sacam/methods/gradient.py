"""Gradient-weighted CAMs: Grad-CAM and Grad-CAM++."""

from __future__ import annotations

from typing import Any, Literal

import torch

from ..core import BaseCAM, CallContext, LayerData
from ..errors import MethodError
from ..registry import register_method


def _grads(layer: LayerData) -> torch.Tensor:
    if layer.gradients is None:  # pragma: no cover - the engine always provides them
        raise RuntimeError("gradient method called without gradients")
    return layer.gradients


@register_method(
    "grad-cam",
    paper="Selvaraju et al., ICCV 2017",
    url="https://arxiv.org/abs/1610.02391",
    description="Channel weights are the spatial mean of the score's gradient.",
    family="gradient",
)
class GradCAM(BaseCAM):
    r"""Grad-CAM (Selvaraju et al., 2017, https://arxiv.org/abs/1610.02391).

    .. math:: w^c_k = \frac{1}{hw}\sum_{ij} \frac{\partial y^c}{\partial A^k_{ij}},\quad
              L^c = \mathrm{ReLU}\Big(\sum_k w^c_k A^k\Big)

    ``y^c`` is the target score (the logit by default). One forward and one backward pass
    to the target layer. pytorch-grad-cam and torchcam compute the same weights.

    Example:
        >>> import torch, sacam
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 2))
        >>> sacam.explain(net, torch.rand(2, 3, 16, 16), method="grad-cam").shape
        torch.Size([2, 16, 16])
    """

    def weights(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """Spatial mean of the gradient, ``(B, K)``."""
        return _grads(layer).mean(dim=(2, 3))


@register_method(
    "grad-cam++",
    paper="Chattopadhyay et al., WACV 2018",
    url="https://arxiv.org/abs/1710.11063",
    description="Gradient weights with per-position coefficients from higher-order terms.",
    family="gradient",
)
class GradCAMPlusPlus(BaseCAM):
    r"""Grad-CAM++ (Chattopadhyay et al., 2018, https://arxiv.org/abs/1710.11063).

    With ``g = ∂y^c/∂A^k`` (``y^c`` the logit, under the paper's exponential assumption):

    .. math:: \alpha^{kc}_{ij} = \frac{g_{ij}^2}{2 g_{ij}^2 + g_{ij}^3 \sum_{ab} A^k_{ab}},\quad
              w^c_k = \sum_{ij} \alpha^{kc}_{ij}\,\mathrm{ReLU}(g_{ij})

    ``variant="paper"`` (default) follows the paper and its authors' code (and
    pytorch-grad-cam 1.5.7). ``variant="torchcam"`` reproduces torchcam 0.5.0, whose
    denominator is ``2 g_{ij}^2 + Σ_ab g_{ab}^3 A^k_{ab}`` (a sum of products). Where
    ``g_{ij} = 0`` or the denominator is 0, ``α`` is 0.

    Example:
        >>> import torch, sacam
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 2))
        >>> sacam.explain(net, torch.rand(1, 3, 16, 16), method="grad-cam++").shape
        torch.Size([1, 16, 16])
    """

    def __init__(
        self, *args: Any, variant: Literal["paper", "torchcam"] = "paper", **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        if variant not in ("paper", "torchcam"):
            raise MethodError(f"grad-cam++ variant must be 'paper' or 'torchcam', got {variant!r}")
        self.variant = variant

    def weights(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """Grad-CAM++ channel weights, ``(B, K)``."""
        g = _grads(layer)
        a = layer.activations
        g2 = g * g
        g3 = g2 * g
        if self.variant == "paper":
            denom = 2 * g2 + g3 * a.sum(dim=(2, 3), keepdim=True)
        else:
            denom = 2 * g2 + (g3 * a).sum(dim=(2, 3), keepdim=True)
        ok = (g != 0) & (denom != 0)
        alpha = torch.where(ok, g2 / torch.where(ok, denom, torch.ones_like(denom)), 0.0)
        return (alpha * g.clamp_min(0)).sum(dim=(2, 3))
