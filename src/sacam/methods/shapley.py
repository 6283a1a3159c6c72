"""Shapley-CAM (Cai, 2025): gradient and Hessian-vector-product channel weights."""

from __future__ import annotations

import torch

from ..core import BaseCAM
from ..errors import MethodError
from ..explanation import CallContext, LayerData, spatial_dims
from ..registry import register_method


@register_method(
    "shapley-cam",
    paper="Cai, arXiv 2025",
    url="https://arxiv.org/abs/2501.06261",
    description="Channel weights are the spatial mean of the gradient minus half the "
    "Hessian-vector product with the activations (a second-order Shapley estimate).",
    family="gradient",
)
class ShapleyCAM(BaseCAM):
    r"""Shapley-CAM (Cai, "CAMs as Shapley Value-based Explainers", 2025, https://arxiv.org/abs/2501.06261).

    A second-order Taylor estimate of each activation's Shapley value in the game where
    the players are the activations of the layer. With ``g = ∂y^c/∂A`` and
    ``H = ∂²y^c/∂A²`` the Hessian of the target score with respect to the whole layer,

    .. math:: w^c_k = \frac{1}{hw}\sum_{ij}\Big(g - \tfrac12 H A\Big)^k_{ij},\quad
              L^c = \mathrm{ReLU}\Big(\sum_k w^c_k A^k\Big)

    ``H A`` is a Hessian-vector product computed by double backward
    (``torch.autograd.grad`` of ``g`` with ``grad_outputs = A``), never the Hessian itself.
    Where the network after the layer is piecewise linear (ReLU, max-pooling, linear
    layers), ``H A = 0`` almost everywhere and the map is Grad-CAM's. Same weights as
    pytorch-grad-cam 1.5.7's ``ShapleyCAM`` (torchcam 0.5.0 has none); the paper pairs it
    with its ReST score ``y_c + log softmax(y)_c``, which is a target callable here:
    ``targets=lambda out: out[:, c] + out.log_softmax(1)[:, c]`` (the default explains
    the logit, as pytorch-grad-cam does).

    Cost: one forward pass and a backward pass that keeps its graph
    (``create_graph=True``), then a double backward to the layer for ``H A``
    (``second_order = True``: the engine fills :attr:`~sacam.explanation.LayerData.hvp`).
    Multiplying ``A`` by the rows of ``H`` uses the whole layer (every channel and
    position), as the paper does. Works with ``eigen_smooth=True``.

    Example:
        >>> import torch, sacam
        >>> from torch import nn
        >>> from sacam.examples import tiny_cnn
        >>> net = tiny_cnn(activation=nn.Softplus)
        >>> sacam.explain(net, torch.rand(2, 3, 16, 16), method="shapley-cam", layer="0").shape
        torch.Size([2, 16, 16])
    """

    volumes = True
    second_order = True

    def weights(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """Spatial mean of ``g - H A / 2``, ``(B, K)``."""
        g, hvp = layer.gradients, layer.hvp
        if g is None or hvp is None:
            raise MethodError(
                "shapley-cam needs the layer's gradients and H A from the engine's pass "
                "(second_order = True on the method that runs it)"
            )
        return (g - 0.5 * hvp).mean(dim=spatial_dims(g))
