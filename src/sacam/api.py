"""The stable functional surface: :func:`explain`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ._layers import LayersLike
from .core import BaseCAM
from .errors import MethodError
from .explanation import Explanation
from .registry import check_options
from .targets import TargetsLike


def build_method(
    model: nn.Module, method: str = "sa-cam", layer: LayersLike = None, **method_options: Any
) -> BaseCAM:
    """Instantiate a registered method, with a clear error for unknown options.

    The options are checked by :func:`sacam.registry.check_options`.
    """
    cls = check_options(method, method_options)
    return cls(model, layer, **method_options)


def explain(
    model: nn.Module,
    images: torch.Tensor,
    method: str = "sa-cam",
    layer: LayersLike = None,
    targets: TargetsLike = None,
    upsample: bool = True,
    *,
    tta: bool | Mapping[str, Any] = False,
    **method_options: Any,
) -> torch.Tensor:
    """Explain a batch of images with a registered CAM method.

    Args:
        model: a classifier (or any model whose output a target reduces to one score per
            sample). It is left exactly as it was: training flags, ``requires_grad`` flags
            and hooks are restored after the call, also after an exception. Its forward
            may return a tensor, a tuple or list (logits first), a dict (``"logits"``, or
            its only tensor) or an object with ``.logits`` (Hugging Face); pass
            ``output_transform=`` (output -> ``(B, classes)`` tensor) for anything else.
        images: ``(B, C, H, W)`` float tensor, normalised as the model expects, on the
            model's device. The maps stay on that device. ``(B, C, T, H, W)`` (3D CNNs,
            video) for the gradient and decomposition methods
            (:func:`sacam.core.volume_methods`): maps ``(B, T, H, W)``.
        method: a name from :func:`sacam.list_methods` (default ``"sa-cam"``; ``"grad-cam"``, ...
        layer: target layer(s): a module, a dotted name (``"_blocks.15"``; ``"name@k"`` for
            call ``k`` of a module run several times; a bare name means its last call), a
            list of them (one map each, fused), or ``None`` for the last layer whose output
            is 4-D with a spatial size above 1.
        targets: ``None`` for each sample's top-1 class, an ``int`` class, one ``int`` per
            sample, or callables mapping the model output to one score per sample.
        upsample: resize to the input size (bilinear); ``False`` keeps the layer's size.
        tta: test-time augmentation (:func:`sacam.smoothing.tta`): ``True`` averages the
            maps of the flipped and rescaled images (scales 1, 0.75, 1.25); a dict sets
            its options (``{"scales": (1.0, 1.5), "hflip": False}``). Needs ``upsample``.
        **method_options: options of the method (see its class docstring), and the
            engine's ``reshape_transform``, ``fusion``, ``eval_mode``, ``eigen_smooth``
            (first-principal-component smoothing) and ``output_transform``.

    Returns:
        ``(B, H, W)`` tensor with values in [0, 1] per image (``(B, h, w)`` at layer
        resolution when ``upsample=False``). A constant map comes back as all zeros; use
        :func:`explain_full` to see which maps were constant.

    Example:
        >>> import torch, sacam
        >>> from sacam.examples import tiny_cnn
        >>> net = tiny_cnn(channels=8, classes=5, padding=1)
        >>> maps = sacam.explain(net, torch.rand(2, 3, 32, 32), method="grad-cam", targets=3)
        >>> maps.shape, bool(maps.min() >= 0), bool(maps.max() <= 1)
        (torch.Size([2, 32, 32]), True, True)
    """
    return explain_full(
        model, images, method, layer, targets, upsample, tta=tta, **method_options
    ).maps


def explain_full(
    model: nn.Module,
    images: torch.Tensor,
    method: str = "sa-cam",
    layer: LayersLike = None,
    targets: TargetsLike = None,
    upsample: bool = True,
    *,
    tta: bool | Mapping[str, Any] = False,
    **method_options: Any,
) -> Explanation:
    """Like :func:`explain`, but return the full :class:`~sacam.explanation.Explanation`.

    It carries the per-layer maps, the explained class and its probability, the flags of
    constant maps and method-specific inspection data (``extras``).
    """
    cam = build_method(model, method, layer, **method_options)
    if tta is False or tta is None:
        return cam.explain(images, targets, upsample=upsample)
    if not (tta is True or isinstance(tta, Mapping)):
        raise MethodError(f"tta must be True, False or a dict of tta options, got {tta!r}")
    if not upsample:
        raise MethodError(
            "test-time augmentation averages maps at the input resolution: use upsample=True"
        )
    from .smoothing import tta as run_tta

    options = dict(tta) if isinstance(tta, Mapping) else {}
    unknown = sorted(set(options) - {"scales", "hflip"})
    if unknown:
        raise MethodError(f"unknown tta option(s) {', '.join(unknown)}; valid: scales, hflip")
    return run_tta(cam, images, targets, **options)
