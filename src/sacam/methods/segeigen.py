"""Seg-Eigen-CAM (Chung & Ying, Applied Sciences 2025): Eigen-CAM for segmentation outputs."""

from __future__ import annotations

import torch

from ..core import BaseCAM
from ..explanation import CallContext, LayerData
from ..registry import register_method

__all__ = ["SegEigenCAM", "max_abs_projection"]

SEG_EIGEN_URL = "https://doi.org/10.3390/app15137562"


def max_abs_projection(features: torch.Tensor) -> torch.Tensor:
    r"""Centred first-principal-component projection, signed so that ``|max| ≥ |min|``.

    For each sample, ``X`` is the ``(hw, K)`` matrix of positions × channels with each
    channel's mean over positions subtracted, ``X = U Σ V^T`` its SVD and ``p = X v_1``.
    An SVD fixes ``v_1`` only up to sign; ``p`` is flipped when ``|min p| > |max p|``
    (Seg-Eigen-CAM's Eq. 13: the most extreme response is the salient one, and is shown
    positive), so the result does not depend on the SVD implementation except where
    ``|min p| = |max p|`` exactly.

    Args:
        features: ``(B, K, h, w)``.

    Returns:
        ``(B, h, w)`` in the dtype of ``features`` (the SVD runs in float32 at least).

    Example:
        >>> f = torch.tensor([[[[4.0, 4.0], [4.0, 0.0]], [[3.0, 3.0], [3.0, 0.0]]]])
        >>> [round(v, 4) for v in max_abs_projection(f).flatten().tolist()]
        [-1.25, -1.25, -1.25, 3.75]
    """
    b, k, h, w = features.shape
    work = features.float() if features.dtype in (torch.float16, torch.bfloat16) else features
    x = work.flatten(2).transpose(1, 2)  # (B, hw, K)
    x = x - x.mean(dim=1, keepdim=True)
    if k == 0 or h * w == 0:
        return torch.zeros(b, h, w, dtype=features.dtype, device=features.device)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    proj = torch.bmm(x, vh[:, :1, :].transpose(1, 2))[:, :, 0]  # (B, hw)
    flip = proj.amin(dim=1).abs() > proj.amax(dim=1).abs()
    proj = torch.where(flip[:, None], -proj, proj)
    return proj.view(b, h, w).to(features.dtype)


@register_method(
    "seg-eigen-cam",
    paper="Chung & Ying, Applied Sciences 2025",
    url=SEG_EIGEN_URL,
    description="Eigen-CAM of the absolute gradient ⊙ activations, signed so that the largest "
    "response is positive; made for segmentation targets.",
    family="decomposition",
)
class SegEigenCAM(BaseCAM):
    r"""Seg-Eigen-CAM (Chung & Ying, Appl. Sci. 15(13) 7562, 2025, https://doi.org/10.3390/app15137562).

    Eigen-CAM for semantic segmentation: the activations are weighted position by
    position by the absolute gradient of the target (for a segmentation model, a
    :class:`~sacam.SemanticSegmentationTarget`: one class's scores summed over a region),
    then projected on their first principal component:

    .. math:: L = \mathrm{ReLU}(P\, v_1),\quad
              P = \Big(\Big|\frac{\partial y}{\partial A}\Big| \odot A\Big)
              \text{ as a } (hw, K) \text{ matrix, centred over positions}

    with the sign of ``v_1`` chosen so that ``|max| ≥ |min|`` (:func:`max_abs_projection`,
    the paper's Eq. 13). The absolute gradient keeps positions whose activations lower
    the score as well as those that raise it (a segmentation score sums over many
    pixels, whose gradients have both signs). Same as pytorch-grad-cam 1.5.7's
    ``SegEigenCAM``; torchcam 0.5.0 has none. Works on classifiers too (any target).
    One forward and one backward pass; ``eigen_smooth`` does not apply.

    Example:
        >>> import torch, sacam
        >>> from torch import nn
        >>> seg = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1))
        >>> mask = torch.zeros(16, 16)
        >>> mask[4:12, 4:12] = 1
        >>> target = sacam.SemanticSegmentationTarget(1, mask)
        >>> sacam.explain(seg, torch.rand(1, 3, 16, 16), method="seg-eigen-cam", layer="1",
        ...               targets=[target]).shape
        torch.Size([1, 16, 16])
    """

    def layer_map(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """Sign-corrected first-component projection of ``|g| ⊙ A``, ``(B, h, w)``."""
        return max_abs_projection(layer.grads.abs() * layer.activations)
