"""Projection of per-position feature vectors on their first principal direction.

Shared by Eigen-CAM / Eigen-Grad-CAM (:mod:`sacam.methods.decomposition`) and the
engine's ``eigen_smooth`` option (:mod:`sacam.smoothing`).

An SVD's singular vectors have no sign of their own (``-v_1`` is as good as ``v_1``),
and a CAM shows only the positive part of the projection ``p`` (the engine's ReLU), so
the sign decides what the map shows. Two rules:

- ``"correlation"`` (default): ``p`` correlates positively (Pearson, over positions)
  with ``reference`` (default: the channel mean of the features); where that
  correlation is exactly 0, the uncentred inner product decides.
- ``"energy"``: the positive part of ``p`` carries at least half of its energy,
  ``Σ ReLU(p)² ≥ Σ ReLU(−p)²``; ties fall back to ``"correlation"``. For a layer
  with non-negative activations ``v_1`` can be taken non-negative (Perron-Frobenius),
  and then both rules give the same ``p ≥ 0``; for signed activations (a linear
  projection, transformer tokens) the correlation rule can orient an uncentred ``p``
  that is negative everywhere, which the ReLU turns into an empty map.

Whatever the rule, an orientation whose positive part is empty while the other's is
not is never kept: it would show nothing. Where every rule ties the sign is left as
the SVD gave it.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

__all__ = ["numpy_2d_projection", "principal_projection"]

SignRule = Literal["correlation", "energy"]


def principal_projection(
    features: torch.Tensor,
    *,
    center: bool,
    reference: torch.Tensor | None = None,
    sign: SignRule = "correlation",
) -> torch.Tensor:
    r"""Project each position's ``K``-vector on the first right singular vector.

    For each sample, ``X`` is the ``(hw, K)`` matrix of positions × channels (centred over
    positions when ``center``), ``X = U Σ V^T`` its SVD and the result ``p = X v_1``,
    reshaped to ``(h, w)``.

    The sign of ``v_1`` is fixed by ``sign`` (see the module's docstring).

    Args:
        features: ``(B, K, h, w)``, or ``(B, K, t, h, w)`` (every spatial axis is a position).
        center: subtract each channel's mean over positions before the SVD (PCA proper,
            as pytorch-grad-cam's ``get_2d_projection``).
        reference: ``(B, h, w)`` (``(B, t, h, w)``) map the projection should agree with.
        sign: ``"correlation"`` or ``"energy"``, see above.

    Returns:
        ``(B, h, w)`` (``(B, t, h, w)``) in the dtype of ``features`` (the SVD runs in
        float32 at least).

    Example:
        >>> import torch
        >>> f = torch.tensor([[[[1.0, 2.0]], [[2.0, 4.0]]]])  # two proportional channels
        >>> p = principal_projection(f, center=False)  # v_1 = (1, 2)/√5: √5 · (1, 2)
        >>> [round(v, 4) for v in p.flatten().tolist()]
        [2.2361, 4.4721]
        >>> g = -f  # a signed layer: the energy rule keeps the projection positive
        >>> [round(v, 4) for v in principal_projection(g, center=False, sign="energy")
        ...  .flatten().tolist()]
        [2.2361, 4.4721]
    """
    if sign not in ("correlation", "energy"):
        raise ValueError(f"sign must be 'correlation' or 'energy', got {sign!r}")
    b, k = features.shape[:2]
    space = tuple(features.shape[2:])
    work = features.float() if features.dtype in (torch.float16, torch.bfloat16) else features
    x = work.flatten(2).transpose(1, 2)  # (B, hw, K)
    if center:
        x = x - x.mean(dim=1, keepdim=True)
    if k == 0 or math.prod(space) == 0:
        return torch.zeros(b, *space, dtype=features.dtype, device=features.device)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    proj = torch.bmm(x, vh[:, :1, :].transpose(1, 2))[:, :, 0]  # (B, hw)
    ref = (work.mean(dim=1) if reference is None else reference.to(work.dtype)).flatten(1)
    sgn = _orientation(proj, ref, sign)
    return (proj * sgn[:, None]).view(b, *space).to(features.dtype)


def numpy_2d_projection(features: torch.Tensor) -> torch.Tensor:
    r"""pytorch-grad-cam 1.5.7's ``get_2d_projection``, sign convention included.

    For each sample: the ``(hw, K)`` matrix of positions × channels, centred over
    positions, factorised by NumPy's ``np.linalg.svd(..., full_matrices=True)`` (LAPACK
    ``gesdd``) in float32, and projected on the first row of ``V^T``, keeping the sign
    LAPACK returns. ``torch.linalg.svd`` is another implementation (another LAPACK build
    on CPU, cuSOLVER on CUDA) whose singular vectors may come out with the opposite sign,
    so the projection is computed with NumPy on a CPU copy, as pytorch-grad-cam does.

    Args:
        features: ``(B, K, h, w)`` or ``(B, K, t, h, w)``, on any device.

    Returns:
        ``(B, h, w)`` (``(B, t, h, w)``) on the device and in the dtype of ``features``.
    """
    b, k = features.shape[:2]
    space = tuple(features.shape[2:])
    n = math.prod(space)
    acts = features.detach().to("cpu", torch.float32).numpy()
    out = np.zeros((b, n), dtype=np.float32)
    for i in range(b):
        rows = acts[i].reshape(k, n).transpose()
        rows = rows - rows.mean(axis=0)
        if rows.size == 0:
            continue
        _, _, vt = np.linalg.svd(rows, full_matrices=True)
        out[i] = rows @ vt[0, :]
    return torch.from_numpy(out).view(b, *space).to(device=features.device, dtype=features.dtype)


def _orientation(proj: torch.Tensor, ref: torch.Tensor, sign: SignRule) -> torch.Tensor:
    """The sign ``(B,)`` (±1) that orients each projection ``(B, hw)`` by ``sign``'s rule."""
    corr = ((proj - proj.mean(1, keepdim=True)) * (ref - ref.mean(1, keepdim=True))).sum(1)
    dot = (proj * ref).sum(1)
    decider = torch.where(corr != 0, corr, dot)
    if sign == "energy":
        energy = (proj.clamp_min(0) ** 2).sum(1) - (proj.clamp_max(0) ** 2).sum(1)
        decider = torch.where(energy != 0, energy, decider)
    flip = decider < 0
    # never keep an orientation that shows nothing when the other shows something
    shows = proj.amax(1) > 0
    shows_flipped = proj.amin(1) < 0
    flip = torch.where(flip & ~shows_flipped & shows, False, flip)
    flip = torch.where(~flip & ~shows & shows_flipped, True, flip)
    return torch.where(flip, -1.0, 1.0).to(proj.dtype)
