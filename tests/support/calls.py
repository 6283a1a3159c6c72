"""Reading what the engine hands a method during a call."""

from __future__ import annotations

import torch

from sacam.core import BaseCAM
from sacam.explanation import CallContext, LayerData
from sacam.targets import TargetsLike


def layer_data(
    cam: BaseCAM, images: torch.Tensor, targets: TargetsLike = None
) -> tuple[CallContext, list[LayerData]]:
    """The context and layers a call of ``cam`` hands its ``combine`` step (a spy on it)."""
    seen: list[tuple[CallContext, list[LayerData]]] = []
    combine = cam.combine

    def spy(layers: list[LayerData], ctx: CallContext) -> dict[str, torch.Tensor]:
        seen.append((ctx, layers))
        return combine(layers, ctx)

    cam.combine = spy  # type: ignore[method-assign]
    try:
        cam.explain(images, targets)
    finally:
        del cam.combine
    return seen[0]
