"""Baselines: maps that carry no information about the model, to compare methods with."""

from __future__ import annotations

from typing import Any, Literal

import torch

from ..core import BaseCAM
from ..explanation import CallContext, LayerData
from ..registry import register_method
from ._options import check_seed, check_variant


@register_method(
    "random",
    paper="Adebayo et al., NeurIPS 2018 (sanity-check baseline)",
    url="https://arxiv.org/abs/1810.03292",
    description="A seeded uniform random map: the floor every explanation should beat.",
    family="baseline",
)
class RandomCAM(BaseCAM):
    r"""A random map, the baseline of saliency sanity checks.

    Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018,
    https://arxiv.org/abs/1810.03292: a metric that scores a method no better than a random
    map says nothing about that method.

    Default ``variant="map"``: a map of independent ``U(0, 1)`` values at the layer's
    resolution, upsampled by the engine like any map. ``variant="weights"`` draws channel
    weights ``w_k ~ U(-1, 1)`` instead, ``L = ReLU(Σ_k w_k A^k)``, as pytorch-grad-cam
    1.5.7's ``RandomCAM`` (which draws them from NumPy's global, unseeded generator and
    anew for every image). torchcam 0.5.0 has none.

    Reproducible and independent of the batch: the values come from a CPU
    ``torch.Generator`` seeded with ``seed`` alone (never from the image or its position
    in the batch), so every image of a call gets the same draw and a batch gives exactly
    the maps of its images explained one by one; the same seed gives the same map on any
    device. Use different seeds for independent random maps. Gradient-free: one forward
    pass.

    Example:
        >>> import torch, sacam
        >>> from sacam.examples import tiny_cnn
        >>> net = tiny_cnn()
        >>> x = torch.rand(2, 3, 16, 16)
        >>> a = sacam.explain(net, x, method="random", seed=3)
        >>> a.shape, torch.equal(a, sacam.explain(net, x, method="random", seed=3))
        (torch.Size([2, 16, 16]), True)
    """

    uses_gradients = False
    graph_safe = True

    def __init__(
        self, *args: Any, seed: int = 0, variant: Literal["map", "weights"] = "map", **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        check_variant("random", variant, ("map", "weights"))
        self.seed = check_seed(seed)
        self.variant = variant

    def layer_map(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """The random map, ``(B, h, w)``, the same for every image."""
        acts = layer.activations
        b, k, h, w = acts.shape
        gen = torch.Generator().manual_seed(self.seed)
        if self.variant == "map":
            m = torch.rand((h, w), generator=gen, dtype=torch.float32)
            return m.to(device=acts.device, dtype=acts.dtype).expand(b, h, w).clone()
        weights = (2 * torch.rand(k, generator=gen, dtype=torch.float32) - 1).to(
            device=acts.device, dtype=acts.dtype
        )
        return torch.einsum("k,bkhw->bhw", weights, acts)
