"""Shapley-CAM (Cai, 2025): gradient and Hessian-vector-product channel weights."""

from __future__ import annotations

import torch

from .._hooks import Capture
from ..core import BaseCAM, CallContext, LayerData, spatial_dims
from ..errors import LayerError
from ..registry import register_method
from ..targets import evaluate_scores


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

    Cost: the engine's forward and backward pass, then one more forward pass with a
    double backward to the layer (the engine keeps no graph for a second derivative).
    Multiplying ``A`` by the rows of ``H`` uses the whole layer (every channel and
    position), as the paper does. Works with ``eigen_smooth=True``.

    Example:
        >>> import torch, sacam
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Softplus(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 2))
        >>> sacam.explain(net, torch.rand(2, 3, 16, 16), method="shapley-cam", layer="0").shape
        torch.Size([2, 16, 16])
    """

    volumes = True

    def weights(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """Spatial mean of ``g - H A / 2``, ``(B, K)``."""
        g, hvp = self.gradient_and_hvp(layer, ctx)
        return (g - 0.5 * hvp).mean(dim=spatial_dims(g))

    def gradient_and_hvp(
        self, layer: LayerData, ctx: CallContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(∂y/∂A, H A)`` of the target scores at ``layer``, both ``(B, K, h, w)``, detached.

        One forward pass with the engine's capture hook, a backward pass that keeps its
        graph (``create_graph=True``) and a second backward through it.
        """
        ref = layer.ref
        with Capture([ref], with_grad=True) as cap, torch.enable_grad():
            output = ctx.model(ctx.images)
            scores = evaluate_scores(ctx.score_fn, output)
            stored = self._stored(cap, [ref])[0]
            if not scores.requires_grad:
                raise LayerError(
                    f"the target score does not depend on layer {ref.label!r}: pick a layer "
                    "on the path to the output"
                )
            (g,) = torch.autograd.grad(scores.sum(), stored, create_graph=True)
            hvp = None
            if g.requires_grad:  # else g does not depend on A: a piecewise-linear tail
                (hvp,) = torch.autograd.grad(
                    g, stored, grad_outputs=stored.detach(), allow_unused=True
                )
        g = g.detach()
        hvp = torch.zeros_like(g) if hvp is None else hvp.detach()
        if self.reshape_transform is not None:
            g, hvp = self.reshape_transform(g), self.reshape_transform(hvp)
        return g, hvp
