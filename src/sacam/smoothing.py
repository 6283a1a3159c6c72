"""Smoothing that works with any method: test-time augmentation and eigen-smoothing.

- :func:`tta` explains flipped and rescaled copies of the images and averages the maps
  brought back to the original geometry (``sacam.explain(..., tta=True)``).
  pytorch-grad-cam 1.5.7's ``aug_smooth`` differs: it multiplies the image by 0.9, 1.0
  and 1.1 (brightness, not size), with and without a flip, and averages the maps
  without renormalising. torchcam 0.5.0 has no TTA.
- Eigen-smoothing replaces the channel sum of a method's contributions by their first
  principal component: the engine option ``eigen_smooth=True`` of every method that forms
  its map as a channel sum (``sacam.explain(..., eigen_smooth=True)``); :func:`eigen_smooth`
  is the same operation on a tensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ._hooks import check_images, model_guard
from ._outputs import probabilities
from ._projection import principal_projection
from .core import BaseCAM
from .errors import MethodError
from .explanation import Explanation, normalize_maps
from .targets import TargetsLike, scored_output

__all__ = ["DEFAULT_SCALES", "eigen_smooth", "tta"]

DEFAULT_SCALES: tuple[float, ...] = (1.0, 0.75, 1.25)


def eigen_smooth(contributions: torch.Tensor) -> torch.Tensor:
    """Eigen-smoothing of per-channel contributions ``(B, K, h, w)`` into maps ``(B, h, w)``.

    The projection of each position's ``K`` contributions on their first principal
    component (centred over positions), as pytorch-grad-cam's ``eigen_smooth``; its sign is
    fixed so that it correlates positively with the plain channel sum. This is what the
    engine does with ``eigen_smooth=True``, before ReLU and normalisation.

    Example:
        >>> import torch
        >>> c = torch.rand(2, 5, 4, 4)
        >>> eigen_smooth(c).shape
        torch.Size([2, 4, 4])
    """
    if contributions.ndim != 4:
        raise MethodError(
            f"eigen_smooth needs contributions (B, K, h, w), got {tuple(contributions.shape)}"
        )
    return principal_projection(contributions, center=True, reference=contributions.sum(dim=1))


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def tta(
    cam: BaseCAM,
    images: torch.Tensor,
    targets: TargetsLike = None,
    *,
    scales: Sequence[float] = DEFAULT_SCALES,
    hflip: bool = True,
) -> Explanation:
    """Test-time augmentation: the average of the maps of augmented copies of the images.

    Each augmentation (every scale in ``scales``, each with and without a horizontal flip
    when ``hflip``) is explained by ``cam`` at its own size; its maps are flipped back,
    resized bilinearly to the original ``(H, W)``, averaged over the augmentations and
    min-max normalised again (a constant average is flagged in ``constant``). Scaling
    resizes the whole image bilinearly (``round(H·s) × round(W·s)``), so the model must
    accept other input sizes.

    The targets are fixed on the original images first (``None`` becomes each image's
    top-1 class there), so every augmentation explains the same class. Callable targets
    pass as they are (masks do not follow the flip or scale: use class targets).

    Args:
        cam: a method instance (``sacam.build_method(model, "grad-cam")``).
        images: ``(B, C, H, W)``.
        targets: as for :func:`sacam.explain`.
        scales: image scale factors (1.0 is the original size).
        hflip: add the horizontally flipped copy of every scale.

    Returns:
        An :class:`~sacam.explanation.Explanation` at the input resolution; ``class_idx``,
        ``scores`` and ``probabilities`` are those of the original images, and
        ``extras["tta"]`` lists the ``(scale, flipped)`` augmentations.

    Example:
        >>> import torch, sacam
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
        ...                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> out = tta(sacam.build_method(net, "grad-cam"), torch.rand(2, 3, 16, 16))
        >>> out.maps.shape, len(out.extras["tta"])
        (torch.Size([2, 16, 16]), 6)
    """
    scale_list = _checked_scales(cam, scales, hflip)
    images = check_images(images, cam.model)
    scores, class_idx, probs = _fixed_targets(cam, images, targets)
    fixed: TargetsLike = class_idx if class_idx is not None else targets
    augmentations = [(s, f) for s in scale_list for f in ((False, True) if hflip else (False,))]
    total, per_layer = _augmented_sums(cam, images, fixed, augmentations)
    maps, constant = normalize_maps(total / len(augmentations))
    layer_maps = {k: normalize_maps(v / len(augmentations))[0] for k, v in per_layer.items()}
    return Explanation(
        maps=maps,
        layer_maps=layer_maps,
        class_idx=class_idx,
        scores=scores,
        probabilities=probs,
        constant=constant,
        layers=list(layer_maps),
        extras={"tta": augmentations},
    )


def _checked_scales(cam: BaseCAM, scales: Sequence[float], hflip: bool) -> list[float]:
    """The scales as floats, after checking the arguments of :func:`tta`."""
    if not isinstance(cam, BaseCAM):
        raise MethodError(f"tta needs a method instance (BaseCAM), got {type(cam).__name__}")
    scale_list = [float(s) for s in scales]
    if not scale_list or not all(math.isfinite(s) and s > 0 for s in scale_list):
        raise MethodError(f"scales must be a non-empty list of positive numbers, got {scales!r}")
    if not isinstance(hflip, bool):
        raise MethodError(f"hflip must be True or False, got {hflip!r}")
    return scale_list


def _fixed_targets(
    cam: BaseCAM, images: torch.Tensor, targets: TargetsLike
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Target scores, classes and their probabilities on the original images."""
    with model_guard(cam.model, eval_mode=cam.eval_mode, freeze=True):
        output, _, class_idx, scores = scored_output(cam.logits_model, images, targets)
    probs = None
    if class_idx is not None and output.ndim == 2:
        probs = probabilities(cam.logits_model, output).gather(1, class_idx[:, None])[:, 0]
    return scores, class_idx, probs


def _augmented_sums(
    cam: BaseCAM,
    images: torch.Tensor,
    fixed: TargetsLike,
    augmentations: list[tuple[float, bool]],
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sums over the augmentations of the maps and of each layer's maps, at the input size."""
    size = (int(images.shape[-2]), int(images.shape[-1]))
    total: torch.Tensor | None = None
    per_layer: dict[str, torch.Tensor] = {}
    for scale, flipped in augmentations:
        new_size = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
        x = _resize(images, new_size)
        if flipped:
            x = x.flip(-1)
        exp = cam.explain(x, fixed, upsample=True)

        def back(m: torch.Tensor, flipped: bool = flipped) -> torch.Tensor:
            m = m.flip(-1) if flipped else m
            return _resize(m[:, None], size)[:, 0]

        total = back(exp.maps) if total is None else total + back(exp.maps)
        for label, m in exp.layer_maps.items():
            per_layer[label] = back(m) + per_layer[label] if label in per_layer else back(m)
    assert total is not None  # augmentations is never empty
    return total, per_layer
