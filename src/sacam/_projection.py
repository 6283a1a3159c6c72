"""Projection of per-position feature vectors on their first principal direction.

Shared by Eigen-CAM / Eigen-Grad-CAM (:mod:`sacam.methods.decomposition`) and the
engine's ``eigen_smooth`` option (:mod:`sacam.smoothing`).
"""

from __future__ import annotations

import torch

__all__ = ["principal_projection"]


def principal_projection(
    features: torch.Tensor, *, center: bool, reference: torch.Tensor | None = None
) -> torch.Tensor:
    r"""Project each position's ``K``-vector on the first right singular vector.

    For each sample, ``X`` is the ``(hw, K)`` matrix of positions × channels (centred over
    positions when ``center``), ``X = U Σ V^T`` its SVD and the result ``X v_1``, reshaped to
    ``(h, w)``.

    An SVD's singular vectors have no sign of their own (``-v_1`` is as good as ``v_1``),
    so the sign is fixed: the projection is made to correlate positively (Pearson, over
    positions) with ``reference`` (default: the channel mean of ``features``). Where that
    correlation is exactly 0 (for instance a constant reference), the uncentred inner
    product decides, and where that is 0 too the sign is left as the SVD gave it.

    Args:
        features: ``(B, K, h, w)``.
        center: subtract each channel's mean over positions before the SVD (PCA proper,
            pytorch-grad-cam's ``get_2d_projection``).
        reference: ``(B, h, w)`` map the projection should agree with.

    Returns:
        ``(B, h, w)`` in the dtype of ``features`` (the SVD runs in float32 at least).

    Example:
        >>> import torch
        >>> f = torch.tensor([[[[1.0, 2.0]], [[2.0, 4.0]]]])  # two proportional channels
        >>> p = principal_projection(f, center=False)  # v_1 = (1, 2)/√5: √5 · (1, 2)
        >>> [round(v, 4) for v in p.flatten().tolist()]
        [2.2361, 4.4721]
    """
    b, k, h, w = features.shape
    work = features.float() if features.dtype in (torch.float16, torch.bfloat16) else features
    x = work.flatten(2).transpose(1, 2)  # (B, hw, K)
    if center:
        x = x - x.mean(dim=1, keepdim=True)
    if k == 0 or h * w == 0:
        return torch.zeros(b, h, w, dtype=features.dtype, device=features.device)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    proj = torch.bmm(x, vh[:, :1, :].transpose(1, 2))[:, :, 0]  # (B, hw)
    ref = (work.mean(dim=1) if reference is None else reference.to(work.dtype)).flatten(1)
    corr = ((proj - proj.mean(1, keepdim=True)) * (ref - ref.mean(1, keepdim=True))).sum(1)
    dot = (proj * ref).sum(1)
    decider = torch.where(corr != 0, corr, dot)
    sign = torch.where(decider < 0, -1.0, 1.0).to(proj.dtype)
    return (proj * sign[:, None]).view(b, h, w).to(features.dtype)
