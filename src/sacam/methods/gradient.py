"""Gradient-weighted CAMs.

Channel weights from gradients (Grad-CAM, Grad-CAM++, XGrad-CAM) and element-wise gradient
maps (Layer-CAM, HiRes-CAM, Grad-CAM element-wise); Smooth Grad-CAM++ is in
:mod:`sacam.methods.smoothgrad`.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from ..core import BaseCAM
from ..explanation import CallContext, LayerData, spatial_dims
from ..registry import register_method
from ._options import check_variant


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
        >>> from sacam.examples import tiny_cnn
        >>> sacam.explain(tiny_cnn(), torch.rand(2, 3, 16, 16), method="grad-cam").shape
        torch.Size([2, 16, 16])
    """

    graph_safe = True
    volumes = True

    def weights(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """Spatial mean of the gradient, ``(B, K)``."""
        g = layer.grads
        return g.mean(dim=spatial_dims(g))


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

    ``variant="paper"`` (default) follows the paper and its authors' code.
    ``variant="pytorch-grad-cam"`` reproduces pytorch-grad-cam 1.5.7, which adds
    ``ε = 10⁻⁶`` to the denominator: where ``g² ≪ ε`` (intermediate layers of a deep
    network, e.g. most positions at EfficientNet-Lite0's ``_blocks.10``)
    that turns ``α`` into about ``g²/ε`` and changes the map (refine-cam's parity rows in
    docs/parity.md). ``variant="torchcam"`` reproduces torchcam 0.5.0, whose denominator
    is ``2 g_{ij}^2 + Σ_ab g_{ab}^3 A^k_{ab}`` (a sum of products). Where ``g_{ij} = 0``
    or the denominator is 0, ``α`` is 0. Near ``g_{ij} Σ_ab A^k_{ab} = -2`` the
    paper's denominator nears 0 and ``α`` grows without bound: one position can then carry
    most of a channel's weight, and the map follows the rounding of that cancellation,
    which differs between CPUs (docs/results.md shows a case). The formula is kept as
    published. torchcam 0.5.0's output does not follow its own formula: its in-place
    division acts on a boolean-mask copy (``alpha[mask].div_(...)``), so its α stays
    ``g²``, and its maps differ from both variants (docs/performance.md).

    Example:
        >>> import torch, sacam
        >>> from sacam.examples import tiny_cnn
        >>> sacam.explain(tiny_cnn(), torch.rand(1, 3, 16, 16), method="grad-cam++").shape
        torch.Size([1, 16, 16])
    """

    graph_safe = True
    volumes = True

    def __init__(
        self,
        *args: Any,
        variant: Literal["paper", "pytorch-grad-cam", "torchcam"] = "paper",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        check_variant("grad-cam++", variant, ("paper", "pytorch-grad-cam", "torchcam"))
        self.variant = variant

    def weights(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """Grad-CAM++ channel weights, ``(B, K)``."""
        g = layer.grads
        g2 = g * g
        alpha = gradcampp_alpha(g2, g2 * g, layer.activations, self.variant)
        return (alpha * g.clamp_min(0)).sum(dim=spatial_dims(g))


def gradcampp_alpha(
    g2: torch.Tensor, g3: torch.Tensor, acts: torch.Tensor, variant: str
) -> torch.Tensor:
    """Grad-CAM++'s ``α`` from the second and third derivative terms; 0 where undefined."""
    space = spatial_dims(acts)
    if variant == "torchcam":
        denom = 2 * g2 + (g3 * acts).sum(dim=space, keepdim=True)
    else:
        denom = 2 * g2 + g3 * acts.sum(dim=space, keepdim=True)
    if variant == "pytorch-grad-cam":
        denom = denom + 1e-6
    ok = (g2 != 0) & (denom != 0)
    return torch.where(ok, g2 / torch.where(ok, denom, torch.ones_like(denom)), 0.0)


@register_method(
    "xgrad-cam",
    paper="Fu et al., BMVC 2020",
    url="https://arxiv.org/abs/2008.02312",
    description="Gradients averaged with each channel's own activations as weights (axiom-based).",
    family="gradient",
)
class XGradCAM(BaseCAM):
    r"""XGrad-CAM, axiom-based Grad-CAM (Fu et al., 2020, https://arxiv.org/abs/2008.02312).

    .. math:: w^c_k = \sum_{ij} \frac{A^k_{ij}}{\sum_{ab} A^k_{ab}}
              \frac{\partial y^c}{\partial A^k_{ij}},\quad
              L^c = \mathrm{ReLU}\Big(\sum_k w^c_k A^k\Big)

    A channel whose activations sum to 0 gets weight 0 (default ``variant="paper"``);
    torchcam 0.5.0 divides without a guard, and for an all-zero channel the NaN weight is
    dropped by its ``nansum``, the same result. ``variant="pytorch-grad-cam"`` reproduces
    pytorch-grad-cam 1.5.7, which adds ``ε = 1e-7`` to every denominator instead (so a
    zero-sum channel with signed activations can get a huge weight). One forward and one
    backward pass.

    Example:
        >>> import torch, sacam
        >>> from sacam.examples import tiny_cnn
        >>> sacam.explain(tiny_cnn(), torch.rand(2, 3, 16, 16), method="xgrad-cam").shape
        torch.Size([2, 16, 16])
    """

    graph_safe = True
    volumes = True

    def __init__(
        self,
        *args: Any,
        variant: Literal["paper", "pytorch-grad-cam"] = "paper",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        check_variant("xgrad-cam", variant, ("paper", "pytorch-grad-cam"))
        self.variant = variant

    def weights(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """Activation-weighted sums of the gradient, ``(B, K)``."""
        a = layer.activations
        num = (a * layer.grads).sum(dim=spatial_dims(a))
        total = a.sum(dim=spatial_dims(a))
        if self.variant == "pytorch-grad-cam":
            return num / (total + 1e-7)
        ok = total != 0
        return torch.where(ok, num / torch.where(ok, total, torch.ones_like(total)), 0.0)


@register_method(
    "layer-cam",
    paper="Jiang et al., IEEE TIP 2021",
    url="https://doi.org/10.1109/TIP.2021.3089943",
    description="Each activation weighted by its own positive gradient, summed over channels.",
    family="gradient",
)
class LayerCAM(BaseCAM):
    r"""Layer-CAM (Jiang et al., IEEE TIP 30, 2021, https://doi.org/10.1109/TIP.2021.3089943).

    A weight per position instead of per channel:

    .. math:: L^c = \mathrm{ReLU}\Big(\sum_k \mathrm{ReLU}\Big(
              \frac{\partial y^c}{\partial A^k}\Big) \odot A^k\Big)

    pytorch-grad-cam 1.5.7 and torchcam 0.5.0 compute the same single-layer map. For
    several layers the paper (and torchcam's ``LayerCAM.fuse_cams``) first scales each
    layer's map by ``tanh(2·map)``; sacam fuses normalised maps by ``fusion`` ("max" by
    default) without that scaling. Works with ``eigen_smooth=True`` (projection of the
    element-wise terms). One forward and one backward pass.

    Example:
        >>> import torch, sacam
        >>> from sacam.examples import tiny_cnn
        >>> sacam.explain(tiny_cnn(), torch.rand(2, 3, 16, 16), method="layer-cam").shape
        torch.Size([2, 16, 16])
    """

    graph_safe = True
    volumes = True

    def channel_maps(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """``ReLU(g) ⊙ A``, ``(B, K, h, w)``."""
        return layer.grads.clamp_min(0) * layer.activations


@register_method(
    "hires-cam",
    paper="Draelos & Carin, arXiv 2020",
    url="https://arxiv.org/abs/2011.08891",
    description="Element-wise product of gradient and activation, summed over channels.",
    family="gradient",
)
class HiResCAM(BaseCAM):
    r"""HiRes-CAM (Draelos & Carin, 2020, https://arxiv.org/abs/2011.08891).

    .. math:: L^c = \mathrm{ReLU}\Big(\sum_k \frac{\partial y^c}{\partial A^k}
              \odot A^k\Big)

    Grad-CAM with the spatial averaging of the gradient removed, so the map is faithful
    to the score for networks ending in one linear layer. Same as pytorch-grad-cam 1.5.7's
    ``HiResCAM`` (torchcam 0.5.0 has none). Works with ``eigen_smooth=True``.

    Example:
        >>> import torch, sacam
        >>> from sacam.examples import tiny_cnn
        >>> sacam.explain(tiny_cnn(), torch.rand(2, 3, 16, 16), method="hires-cam").shape
        torch.Size([2, 16, 16])
    """

    graph_safe = True
    volumes = True

    def channel_maps(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """``g ⊙ A``, ``(B, K, h, w)``."""
        return layer.grads * layer.activations


@register_method(
    "grad-cam-elementwise",
    paper="pytorch-grad-cam (Gildenblat et al.), 2021",
    url="https://github.com/jacobgil/pytorch-grad-cam",
    description="Positive part of each gradient-activation product, summed over channels.",
    family="gradient",
)
class GradCAMElementWise(BaseCAM):
    r"""Grad-CAM element-wise, pytorch-grad-cam's ``GradCAMElementWise``.

    From pytorch-grad-cam (https://github.com/jacobgil/pytorch-grad-cam), where it has no
    paper of its own: HiRes-CAM with the ReLU moved inside the channel sum,

    .. math:: L^c = \sum_k \mathrm{ReLU}\Big(\frac{\partial y^c}{\partial A^k}
              \odot A^k\Big)

    (the engine's final ReLU then changes nothing). Same as pytorch-grad-cam 1.5.7;
    torchcam 0.5.0 has none. Works with ``eigen_smooth=True``.

    Example:
        >>> import torch, sacam
        >>> from sacam.examples import tiny_cnn
        >>> sacam.explain(tiny_cnn(), torch.rand(2, 3, 16, 16), method="grad-cam-elementwise").shape
        torch.Size([2, 16, 16])
    """

    graph_safe = True
    volumes = True

    def channel_maps(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """``ReLU(g ⊙ A)``, ``(B, K, h, w)``."""
        return (layer.grads * layer.activations).clamp_min(0)
