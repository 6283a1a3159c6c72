"""Refine-CAM: a base method's maps at several layers, multiplied (denoises shallow layers)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch

from ..core import BaseCAM
from ..explanation import CallContext, largest_size, normalize_maps
from ..registry import register_method
from ..targets import TargetsLike
from ._options import base_method, check_variant

__all__ = ["RefineCAM"]

REFINE_URL = "https://arxiv.org/abs/2605.14641"
Variant = Literal["paper", "pytorch-grad-cam", "torchcam"]


@register_method(
    "refine-cam",
    paper="How to Evaluate and Refine your CAM, arXiv 2605.14641",
    url=REFINE_URL,
    description="A base CAM (Grad-CAM++) at several layers, each normalised, multiplied "
    "element-wise: deep layers mask the noise of shallow ones.",
    family="gradient",
)
class RefineCAM(BaseCAM):
    r"""Refine-CAM ("How to Evaluate and Refine your CAM", https://arxiv.org/abs/2605.14641).

    The ``base`` method (``"grad-cam++"`` by default, as in both libraries) explains each
    target layer ``l`` on its own; each map ``M_l`` is ReLU'd and min-max normalised, and
    the refined map is their element-wise product, normalised again:

    .. math:: L = \mathrm{minmax}\Big(\prod_l M_l\Big)

    A position stays bright only where every layer agrees, so a deep, coarse layer masks
    the noise of a shallow, sharp one (pass the layers: ``layer=["_blocks.10",
    "_blocks.15"]``). With one layer it is the base method.

    Both libraries multiply the same normalised maps and differ in the grid. Default
    ``variant="paper"`` multiplies them at the output resolution (the input size, or
    with ``upsample=False`` the largest layer's grid, torchcam's grid), as
    pytorch-grad-cam 1.5.7's ``RefineCAM``, with Grad-CAM++ as its paper defines it.
    ``variant="pytorch-grad-cam"`` reproduces pytorch-grad-cam's map: the same product,
    with the base ``grad-cam++`` in its ``"pytorch-grad-cam"`` variant (``ε = 10⁻⁶`` in
    α's denominator, which changes maps at intermediate layers, where ``g² ≪ ε``).
    ``variant="torchcam"`` follows torchcam 0.5.0's ``RefineCAM``: the product on the
    largest layer's grid, then upsampled bilinearly, with ``grad-cam++``'s
    ``"torchcam"`` variant (torchcam's own Grad-CAM++ does not follow its formula; see
    ``grad-cam++``). An explicit ``base_options={"variant": ...}`` wins. The paper's
    text was not available to us; both libraries cite it for this product.

    Options: ``base`` (a registered method name), ``base_options`` (a dict for it),
    ``variant``. The :class:`~sacam.explanation.Explanation` keeps the base's per-layer maps in
    ``layer_maps``. Cost: the base method's, once for all layers.

    Example:
        >>> import torch, sacam
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
        ...                     nn.Conv2d(4, 4, 3, stride=2), nn.ReLU(),
        ...                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> sacam.explain(net, torch.rand(2, 3, 16, 16), method="refine-cam",
        ...               layer=["1", "3"]).shape
        torch.Size([2, 16, 16])
    """

    def __init__(
        self,
        *args: Any,
        base: str = "grad-cam++",
        base_options: Mapping[str, Any] | None = None,
        variant: Variant = "paper",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.variant = check_variant(
            "refine-cam", variant, ("paper", "pytorch-grad-cam", "torchcam")
        )
        if base == "grad-cam++" and variant != "paper" and isinstance(base_options, Mapping | None):
            base_options = {"variant": variant, **(base_options or {})}
        self.base = base_method(self, "refine-cam", base, base_options)
        self.uses_gradients = self.base.uses_gradients  # type: ignore[misc]

    def expected_rows(self, shape: tuple[int, ...], image_size: tuple[int, int]) -> int:
        """Its base method's rows."""
        return self.base.expected_rows(shape, image_size)

    def raw_maps(
        self, images: torch.Tensor, targets: TargetsLike, keep: bool = False
    ) -> tuple[CallContext, dict[str, torch.Tensor]]:
        """The base method's raw maps of every layer."""
        return self.base.raw_maps(images, targets, keep)

    def fusion_size(self, raw: dict[str, torch.Tensor], size: tuple[int, ...]) -> tuple[int, ...]:
        """The output's size; the largest layer's grid for ``variant="torchcam"``."""
        return largest_size(raw) if self.variant == "torchcam" else size

    def fuse(
        self, layer_maps: dict[str, torch.Tensor], raw: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The element-wise product of the normalised maps, normalised."""
        return normalize_maps(torch.stack(list(layer_maps.values())).prod(dim=0))
