"""FEM, the Feature Explanation Method (Fuad et al., IPTA 2020): gradient-free channel weights."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..core import BaseCAM
from ..errors import MethodError
from ..explanation import CallContext, LayerData
from ..registry import register_method

FEM_URL = "https://hal.science/hal-02963298/document"


@register_method(
    "fem",
    paper="Fuad et al., IPTA 2020",
    url=FEM_URL,
    description="Channel weights are the fraction of positions above the channel's mean + k·std.",
    family="activation",
)
class FEM(BaseCAM):
    r"""FEM, Feature Explanation Method (Fuad et al., IPTA 2020, https://hal.science/hal-02963298/document).

    A k-sigma rule per channel: with ``μ_k`` and ``σ_k`` the mean and (population)
    standard deviation of ``A^k`` over the ``h·w`` positions,

    .. math:: w_k = \frac{1}{hw}\sum_{ij} \mathbb{1}\big[A^k_{ij} > μ_k + k\,σ_k\big],\quad
              L = \mathrm{ReLU}\Big(\sum_k w_k A^k\Big)

    so a channel counts in proportion to how many unusually strong (outlying) responses
    it has. ``k`` defaults to 2. Gradient-free and class-agnostic (the target only sets
    the reported class and score): one forward pass under ``torch.inference_mode()``.
    The comparison is strict, so a constant channel (``σ = 0``) gets weight 0. Same as
    pytorch-grad-cam 1.5.7's ``FEM`` (``np.std``, ``ddof = 0``); torchcam 0.5.0 has none.

    Example:
        >>> import torch, sacam
        >>> from sacam.examples import tiny_cnn
        >>> sacam.explain(tiny_cnn(), torch.rand(2, 3, 16, 16), method="fem", k=1.5).shape
        torch.Size([2, 16, 16])
    """

    uses_gradients = False

    def __init__(self, *args: Any, k: float = 2.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if isinstance(k, bool) or not isinstance(k, int | float) or not math.isfinite(k):
            raise MethodError(f"fem's k must be a finite number (σ multiplier), got {k!r}")
        self.k = float(k)

    def weights(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """Fraction of each channel's positions above ``μ + kσ``, ``(B, K)``."""
        acts = layer.activations
        mean = acts.mean(dim=(2, 3), keepdim=True)
        std = acts.std(dim=(2, 3), correction=0, keepdim=True)
        above = acts > mean + self.k * std
        return above.to(acts.dtype).mean(dim=(2, 3))
