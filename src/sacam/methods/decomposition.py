"""Decomposition CAMs: the first principal component of the layer (Eigen-CAM family)."""

from __future__ import annotations

from typing import Any, Literal

import torch

from .._projection import numpy_2d_projection, principal_projection
from ..core import BaseCAM
from ..errors import MethodError
from ..explanation import CallContext, LayerData
from ..registry import register_method
from ._options import check_bool, check_variant

Variant = Literal["paper", "pytorch-grad-cam"]


def _centering(method: str, variant: object, center: object, default: bool) -> bool:
    """The ``center`` a variant runs with; pytorch-grad-cam's always centres."""
    check_variant(method, variant, ("paper", "pytorch-grad-cam"))
    if center is not None:
        check_bool("center", center)
    if variant == "pytorch-grad-cam":
        if center is False:
            raise MethodError(
                f"{method} variant 'pytorch-grad-cam' always centres (its get_2d_projection "
                "is a PCA): leave center unset, or use variant='paper' with center=False"
            )
        return True
    return default if center is None else bool(center)


class _Decomposition(BaseCAM):
    """The options of the Eigen-CAM family: ``center`` and ``variant``."""

    center_default = False  # ``center`` when it is left unset with variant "paper"

    def __init__(
        self, *args: Any, center: bool | None = None, variant: Variant = "paper", **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.center = _centering(self.name, variant, center, default=self.center_default)
        self.variant = variant

    def supports_graph(self) -> bool:
        """The torch SVD of ``variant="paper"`` is differentiable; NumPy's is not."""
        return self.variant == "paper"


@register_method(
    "eigen-cam",
    paper="Muhammad & Yeasin, IJCNN 2020",
    url="https://arxiv.org/abs/2008.00299",
    description="Projection of the activations on their first principal component (no gradients).",
    family="decomposition",
)
class EigenCAM(_Decomposition):
    r"""Eigen-CAM (Muhammad & Yeasin, 2020, https://arxiv.org/abs/2008.00299).

    With ``O`` the ``(hw, K)`` matrix of the layer's activations (a row per position) and
    ``O = U Σ V^T`` its SVD, the map is the projection on the first right singular vector:

    .. math:: L = \mathrm{ReLU}(O\, v_1) \text{ reshaped to } (h, w)

    Gradient-free and class-agnostic: the target only sets the reported class and score.
    By default (``variant="paper"``, ``center=False``) ``O`` is the raw activations, as
    the paper factorises them; ``center=True`` subtracts each channel's mean over
    positions first (PCA proper).

    Sign: an SVD fixes ``v_1`` only up to sign, and the ReLU keeps one side of the
    projection, so the sign decides what the map shows. sacam orients ``O v_1`` so that
    its positive part carries most of its energy (``Σ ReLU(p)² ≥ Σ ReLU(−p)²``; the
    ``"energy"`` rule of :func:`sacam._projection.principal_projection`). On a layer with
    non-negative activations (after a ReLU or swish) that is the all-positive
    orientation the paper's factorisation gives; on a layer with signed activations (a
    linear projection such as EfficientNet's ``_blocks.15``, transformer tokens) it keeps
    the map from being empty, which a rule "agree with the mean activation" does not: an
    uncentred projection can be negative at every position and still correlate with it.

    ``variant="pytorch-grad-cam"`` reproduces pytorch-grad-cam 1.5.7's ``EigenCAM``
    (``get_2d_projection``): centred, factorised by NumPy's SVD on a CPU copy, with the
    sign LAPACK returns (arbitrary, but the same as pytorch-grad-cam's; see
    :func:`sacam._projection.numpy_2d_projection`). torchcam 0.5.0 has no Eigen-CAM. One
    forward pass.

    Example:
        >>> import torch, sacam
        >>> from sacam.examples import tiny_cnn
        >>> sacam.explain(tiny_cnn(), torch.rand(2, 3, 16, 16), method="eigen-cam").shape
        torch.Size([2, 16, 16])
    """

    uses_gradients = False
    volumes = True
    center_default = False

    def layer_map(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """First-component projection of ``A``, ``(B, h, w)``."""
        acts = layer.activations
        if self.variant == "pytorch-grad-cam":
            return numpy_2d_projection(acts)
        return principal_projection(
            acts, center=self.center, reference=acts.mean(dim=1), sign="energy"
        )


@register_method(
    "eigen-grad-cam",
    paper="pytorch-grad-cam's EigenGradCAM, after Muhammad & Yeasin 2020",
    url="https://arxiv.org/abs/2008.00299",
    description="Eigen-CAM on the gradient-activation products, so the map depends on the class.",
    family="decomposition",
)
class EigenGradCAM(_Decomposition):
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
    map), the class evidence, except that an orientation whose positive part is empty is
    never kept (an uncentred projection can be negative everywhere). pytorch-grad-cam
    keeps the SVD's arbitrary sign: ``variant="pytorch-grad-cam"`` reproduces it (NumPy's
    SVD, as for ``eigen-cam``). torchcam 0.5.0 has none. One forward and one backward pass.

    Example:
        >>> import torch, sacam
        >>> from sacam.examples import tiny_cnn
        >>> sacam.explain(tiny_cnn(), torch.rand(2, 3, 16, 16), method="eigen-grad-cam").shape
        torch.Size([2, 16, 16])
    """

    volumes = True
    center_default = True

    def layer_map(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """First-component projection of ``g ⊙ A``, ``(B, h, w)``."""
        prod = layer.grads * layer.activations
        if self.variant == "pytorch-grad-cam":
            return numpy_2d_projection(prod)
        return principal_projection(prod, center=self.center, reference=prod.sum(dim=1))
