"""KPCA-CAM (Karmani et al., 2024): Eigen-CAM with kernel PCA, implemented in torch."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch

from ..core import BaseCAM
from ..errors import MethodError
from ..explanation import CallContext, LayerData
from ..registry import register_method

Kernel = Literal["rbf", "linear", "poly", "sigmoid", "cosine"]
KERNELS = ("rbf", "linear", "poly", "sigmoid", "cosine")

__all__ = ["KPCACAM", "kernel_matrix", "kernel_pca_projection"]


def kernel_matrix(
    x: torch.Tensor,
    kernel: Kernel,
    gamma: float | None = None,
    *,
    degree: int = 3,
    coef0: float = 1.0,
) -> torch.Tensor:
    r"""Kernel matrices of batches of row vectors: ``(B, n, d)`` -> ``(B, n, n)``.

    scikit-learn's conventions (``sklearn.metrics.pairwise``), ``γ`` defaulting to ``1/d``:
    linear ``x·y``; poly ``(γ x·y + c₀)^{degree}``; rbf ``exp(-γ‖x - y‖²)``;
    sigmoid ``tanh(γ x·y + c₀)``; cosine ``x·y / (‖x‖‖y‖)`` (0 for a zero vector).

    Example:
        >>> x = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
        >>> kernel_matrix(x, "linear").tolist(), kernel_matrix(x, "cosine").tolist()
        ([[[1.0, 0.0], [0.0, 4.0]]], [[[1.0, 0.0], [0.0, 1.0]]])
    """
    g = 1.0 / x.shape[-1] if gamma is None else gamma
    if kernel == "cosine":
        norm = x.norm(dim=-1, keepdim=True)
        x = x / torch.where(norm > 0, norm, torch.ones_like(norm))
        return x @ x.transpose(-1, -2)
    if kernel == "rbf":
        sq = (x * x).sum(-1)
        dist = (sq[..., :, None] + sq[..., None, :] - 2 * (x @ x.transpose(-1, -2))).clamp_min(0)
        dist.diagonal(dim1=-2, dim2=-1).zero_()  # exact zeros on the diagonal
        return torch.exp(-g * dist)
    dot = x @ x.transpose(-1, -2)
    if kernel == "linear":
        return dot
    if kernel == "poly":
        return (g * dot + coef0) ** degree
    if kernel == "sigmoid":
        return torch.tanh(g * dot + coef0)
    raise MethodError(f"kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")


def kernel_pca_projection(kmat: torch.Tensor) -> torch.Tensor:
    r"""First kernel principal component of each sample: ``(B, n, n)`` kernels -> ``(B, n)``.

    With ``K̃ = (I - 1/n) K (I - 1/n)`` the centred kernel matrix (feature vectors centred
    in the kernel's feature space) and ``(λ₁, v₁)`` its largest eigenpair, the projections
    of the ``n`` training points are ``√max(λ₁, 0) · v₁`` (as scikit-learn's
    ``KernelPCA.fit_transform``). A ``λ₁`` within rounding of 0 (below ``n·ε·max|K|``,
    ``ε`` the dtype's machine epsilon) counts as 0, so constant activations give a zero
    projection rather than normalised rounding noise. The sign of ``v₁`` is arbitrary
    here; callers fix it.

    Example:
        >>> k = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # two points, linear kernel
        >>> [round(abs(v), 4) for v in kernel_pca_projection(k)[0].tolist()]
        [0.7071, 0.7071]
    """
    n = kmat.shape[-1]
    row = kmat.mean(dim=-1, keepdim=True)
    col = kmat.mean(dim=-2, keepdim=True)
    centred = kmat - row - col + kmat.mean(dim=(-2, -1), keepdim=True)
    centred = (centred + centred.transpose(-1, -2)) / 2  # exactly symmetric for eigh
    if n == 0:
        return centred.sum(-1)
    values, vectors = torch.linalg.eigh(centred)  # ascending eigenvalues
    # forming K̃ perturbs its eigenvalues by up to about n·ε·max|K| (rounding): a top
    # eigenvalue below that is indistinguishable from 0 (e.g. constant activations), and
    # its eigenvector is rounding noise, so the projection is 0 there
    scale = kmat.abs().amax(dim=(-2, -1))
    tol = n * torch.finfo(kmat.dtype).eps * scale
    top = torch.where(values[..., -1] > tol, values[..., -1], torch.zeros_like(scale))
    return vectors[..., :, -1] * top.sqrt()[..., None]


@register_method(
    "kpca-cam",
    paper="Karmani et al., arXiv 2024",
    url="https://arxiv.org/abs/2410.00267",
    description="Eigen-CAM with kernel PCA: the activations' first kernel principal component.",
    family="decomposition",
)
class KPCACAM(BaseCAM):
    r"""KPCA-CAM (Karmani et al., 2024, https://arxiv.org/abs/2410.00267).

    Eigen-CAM with kernel PCA in place of PCA. ``X`` is the ``(hw, K)`` matrix of the
    layer's activations (a row per position) with each channel's mean over positions
    subtracted; ``K_{ij} = κ(x_i, x_j)`` its kernel matrix (:func:`kernel_matrix`,
    ``kernel`` one of ``"rbf"``, ``"linear"``, ``"poly"``, ``"sigmoid"``, ``"cosine"``,
    ``gamma`` defaulting to ``1/K``); with ``K̃ = (I - 1/n) K (I - 1/n)`` and ``(λ₁, v₁)``
    its largest eigenpair,

    .. math:: L = \mathrm{ReLU}\big(\sqrt{λ_1}\, v_1\big) \text{ reshaped to } (h, w)

    Defaults follow pytorch-grad-cam 1.5.7's ``KPCA_CAM`` (contributed with the paper):
    ``kernel="sigmoid"``, ``gamma=None``, channel centring first, then scikit-learn's
    ``KernelPCA(n_components=1)``, here computed in torch (no scikit-learn dependency).
    With ``kernel="linear"`` the map equals ``eigen-cam`` with ``center=True``.

    Sign: ``v₁`` is only defined up to sign. By default (``sign="sklearn"``) sacam takes
    scikit-learn's (``svd_flip``: the entry of ``v₁`` largest in absolute value is
    positive, so the most extreme position is the map's peak), which the paper's code
    and pytorch-grad-cam use: the maps equal pytorch-grad-cam's. ``sign="activation"``
    takes the sign for which the map correlates positively with the mean activation
    over channels, as sacam's ``eigen-cam`` does (on the development images the two
    signs disagree on about a third of the maps). Gradient-free and class-agnostic; one
    forward pass, then an ``hw × hw`` eigendecomposition per image (``O((hw)³)``: 49 × 49
    at 7 × 7).

    Example:
        >>> import torch, sacam
        >>> from sacam.examples import tiny_cnn
        >>> net = tiny_cnn()
        >>> sacam.explain(net, torch.rand(2, 3, 16, 16), method="kpca-cam", kernel="rbf").shape
        torch.Size([2, 16, 16])
    """

    uses_gradients = False
    volumes = True

    def __init__(
        self,
        *args: Any,
        kernel: Kernel = "sigmoid",
        gamma: float | None = None,
        sign: Literal["sklearn", "activation"] = "sklearn",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if kernel not in KERNELS:
            raise MethodError(
                f"kpca-cam kernel must be one of {', '.join(KERNELS)}, got {kernel!r}"
            )
        if gamma is not None and (
            isinstance(gamma, bool)
            or not isinstance(gamma, int | float)
            or not math.isfinite(gamma)
            or gamma <= 0
        ):
            raise MethodError(f"kpca-cam gamma must be None or a number > 0, got {gamma!r}")
        if sign not in ("sklearn", "activation"):
            raise MethodError(f"kpca-cam sign must be 'sklearn' or 'activation', got {sign!r}")
        self.kernel = kernel
        self.gamma = None if gamma is None else float(gamma)
        self.sign = sign

    def layer_map(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """First kernel principal component of the positions' activation vectors, ``(B, h, w)``."""
        acts = layer.activations
        work = acts.float() if acts.dtype in (torch.float16, torch.bfloat16) else acts
        x = work.flatten(2).transpose(1, 2)  # (B, hw, K)
        x = x - x.mean(dim=1, keepdim=True)
        proj = kernel_pca_projection(kernel_matrix(x, self.kernel, self.gamma))  # (B, hw)
        if self.sign == "sklearn":
            idx = proj.abs().argmax(dim=1, keepdim=True)
            decider = proj.gather(1, idx)[:, 0]
        else:
            ref = work.mean(dim=1).flatten(1)
            decider = ((proj - proj.mean(1, keepdim=True)) * (ref - ref.mean(1, keepdim=True))).sum(
                1
            )
        sign = torch.where(decider < 0, -1.0, 1.0).to(proj.dtype)
        return (proj * sign[:, None]).view(acts.shape[:1] + acts.shape[2:]).to(acts.dtype)
