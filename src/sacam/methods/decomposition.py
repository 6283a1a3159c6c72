"""Decomposition CAMs: the first principal component of the layer (Eigen-CAM family)."""

from __future__ import annotations

from typing import Any

import torch

from .._projection import principal_projection
from ..core import BaseCAM, CallContext, LayerData
from ..errors import MethodError
from ..registry import register_method


def _check_center(center: object) -> bool:
    if not isinstance(center, bool):
        raise MethodError(f"center must be True or False, got {center!r}")
    return center


@register_method(
    "eigen-cam",
    paper="Muhammad & Yeasin, IJCNN 2020",
    url="https://arxiv.org/abs/2008.00299",
    description="Projection of the activations on their first principal component (no gradients).",
    family="decomposition",
)
class EigenCAM(BaseCAM):
    r"""Eigen-CAM (Muhammad & Yeasin, 2020, https://arxiv.org/abs/2008.00299).

    With ``O`` the ``(hw, K)`` matrix of the layer's activations (a row per position) and
    ``O = U Σ V^T`` its SVD, the map is the projection on the first right singular vector:

    .. math:: L = \mathrm{ReLU}(O\, v_1) \text{ reshaped to } (h, w)

    Gradient-free and class-agnostic: the target only sets the reported class and score.
    By default (``center=False``) ``O`` is the raw activations, as the paper factorises
    them; ``center=True`` subtracts each channel's mean over positions first (PCA proper),
    as pytorch-grad-cam 1.5.7's ``EigenCAM`` does. torchcam 0.5.0 has no Eigen-CAM.

    Sign: an SVD fixes ``v_1`` only up to sign (pytorch-grad-cam keeps whichever LAPACK
    returns). sacam takes the sign for which the projection correlates positively with the
    mean activation over channels, so the map highlights where the layer is active (see
    :func:`sacam._projection.principal_projection`). One forward pass.

    Example:
        >>> import torch, sacam
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 2))
        >>> sacam.explain(net, torch.rand(2, 3, 16, 16), method="eigen-cam").shape
        torch.Size([2, 16, 16])
    """

    uses_gradients = False

    def __init__(self, *args: Any, center: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.center = _check_center(center)

    def layer_map(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """First-component projection of ``A``, ``(B, h, w)``."""
        acts = layer.activations
        return principal_projection(acts, center=self.center, reference=acts.mean(dim=1))


@register_method(
    "eigen-grad-cam",
    paper="pytorch-grad-cam's EigenGradCAM, after Muhammad & Yeasin 2020",
    url="https://arxiv.org/abs/2008.00299",
    description="Eigen-CAM on the gradient-activation products, so the map depends on the class.",
    family="decomposition",
)
class EigenGradCAM(BaseCAM):
    r"""Eigen-Grad-CAM: Eigen-CAM (https://arxiv.org/abs/2008.00299) on ``g ⊙ A``.

    Introduced by pytorch-grad-cam (``EigenGradCAM``), not by a paper: the first principal
    component of the element-wise products of gradient and activation, which makes
    Eigen-CAM class-discriminative:

    .. math:: L^c = \mathrm{ReLU}(P\, v_1),\quad
              P = \Big(\frac{\partial y^c}{\partial A} \odot A\Big)
              \text{ as a } (hw, K) \text{ matrix}

    Defaults to ``center=True`` (PCA over positions), as pytorch-grad-cam 1.5.7, its
    origin, does; ``center=False`` projects the raw products like ``eigen-cam``'s default.
    The sign is fixed so the map correlates positively with ``Σ_k g^k ⊙ A^k`` (the HiRes-CAM
    map); pytorch-grad-cam keeps the SVD's arbitrary sign. torchcam 0.5.0 has none. One
    forward and one backward pass.

    Example:
        >>> import torch, sacam
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 2))
        >>> sacam.explain(net, torch.rand(2, 3, 16, 16), method="eigen-grad-cam").shape
        torch.Size([2, 16, 16])
    """

    def __init__(self, *args: Any, center: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.center = _check_center(center)

    def layer_map(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """First-component projection of ``g ⊙ A``, ``(B, h, w)``."""
        if layer.gradients is None:  # pragma: no cover - the engine always provides them
            raise RuntimeError("eigen-grad-cam called without gradients")
        prod = layer.gradients * layer.activations
        return principal_projection(prod, center=self.center, reference=prod.sum(dim=1))
