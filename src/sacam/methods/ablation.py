"""Ablation-CAM: channel weights from the score drop when each channel is zeroed."""

from __future__ import annotations

import functools
from typing import Any, Literal

import torch

from ..explanation import CallContext, LayerData
from ..registry import register_method
from ._options import check_variant
from ._perturb import PerturbationCAM, batch_target_scores, strongest_channels
from ._tail import LayerTail, Strategy, check_tail_options

ABLATION_CAM_URL = (
    "https://openaccess.thecvf.com/content_WACV_2020/papers/Desai_Ablation-CAM_Visual_"
    "Explanations_for_Deep_Convolutional_Network_via_Gradient-free_Localization_WACV_2020_"
    "paper.pdf"
)


@register_method(
    "ablation-cam",
    paper="Desai & Ramaswamy, WACV 2020",
    url=ABLATION_CAM_URL,
    description="Channel weights are the relative drop of the score when the channel is zeroed.",
    family="perturbation",
)
class AblationCAM(PerturbationCAM):
    r"""Ablation-CAM (Desai & Ramaswamy, WACV 2020).

    Paper:
    https://openaccess.thecvf.com/content_WACV_2020/papers/Desai_Ablation-CAM_Visual_Explanations_for_Deep_Convolutional_Network_via_Gradient-free_Localization_WACV_2020_paper.pdf

    With ``y^c`` the target score (the logit by default) and ``y^c_k`` the same score
    when channel ``k`` of the target layer is set to 0 (the rest of the network then runs
    on the ablated output):

    .. math:: w^c_k = \frac{y^c - y^c_k}{y^c},\quad
              L^c = \mathrm{ReLU}\Big(\sum_k w^c_k A^k\Big)

    Where ``y^c = 0`` the division is skipped (``w^c_k = -y^c_k``).
    ``variant="pytorch-grad-cam"`` follows pytorch-grad-cam 1.5.7, which sets the
    channel to 0 only where the layer's minimum activation is 0 and otherwise to that
    minimum minus ``1e7`` (sacam takes the minimum of the image's clean activations;
    pytorch-grad-cam's running minimum also sees rows ablated earlier in its batch).
    torchcam 0.5.0 has no Ablation-CAM.

    The ablation is a forward hook on the target layer (present only during these passes,
    removed even if one raises) that replaces its output with the image's clean
    activations, channel ``start + i`` set to the fill value in row ``i`` (as
    pytorch-grad-cam's ablation layer does). K rows per image, ``inputs_per_pass`` at a time;
    ``strategy`` says how the image is fed, as for Recipro-CAM: ``"expand"`` once per
    batch of rows, so the layers before the target run ``⌈K / inputs_per_pass⌉`` times,
    not ``K`` times (with ``inputs_per_pass="auto"`` a pass takes as many rows as fit
    ``max_memory_mb``: at a classifier's head, often all of them);
    ``"repeat"`` once per row (any network); ``"auto"`` (default) tries ``"expand"`` and
    falls back to ``"repeat"``. Needs the layer's own ``(B, K, h, w)`` output (no
    ``reshape_transform``). ``top_channels=n`` (off by default, not exact) ablates only
    the ``n`` channels with the largest mean activation and gives the others weight 0
    (pytorch-grad-cam's ``ratio_channels_to_ablate`` also ablates a subset): ``K / n``
    times fewer rows.

    Example:
        >>> import torch, sacam
        >>> from sacam.examples import tiny_cnn
        >>> sacam.explain(tiny_cnn(), torch.rand(1, 3, 16, 16), method="ablation-cam").shape
        torch.Size([1, 16, 16])
    """

    def __init__(
        self,
        *args: Any,
        variant: Literal["paper", "pytorch-grad-cam"] = "paper",
        top_channels: int | None = None,
        strategy: Strategy = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        check_variant("ablation-cam", variant, ("paper", "pytorch-grad-cam"))
        self.strategy, self.top_channels = check_tail_options(
            self, strategy, top_channels, "zeroes channels of the layer's own output"
        )
        self.variant = variant

    def fill_value(self, acts: torch.Tensor) -> float:
        """Value an ablated channel takes, for one image's activations ``(K, h, w)``."""
        low = float(acts.min())
        if self.variant == "paper" or low == 0:
            return 0.0
        return low - 1e7

    def weights(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """Relative score drop when each channel is ablated, ``(B, K)``."""
        acts = layer.activations
        y = batch_target_scores(ctx.output, ctx, "logit").float()  # as y_k
        out = torch.zeros(acts.shape[:2], dtype=torch.float32, device=acts.device)
        batches = self.tail_batches(
            ctx, layer.ref, self.scored_channels(acts.shape[1]), self.strategy
        )  # measured before the ablation hook exists
        tail = LayerTail(
            "ablation-cam", layer.ref, ctx, self.strategy, batches=batches, bf16=self.bf16
        )
        with tail:
            for b in range(acts.shape[0]):
                chosen = strongest_channels(acts[b], self.top_channels)
                build = functools.partial(self._ablated, acts[b], chosen, self.fill_value(acts[b]))
                y_k = tail.scores(b, len(chosen), build, "logit").float()
                yb = y[b]
                out[b, chosen] = (yb - y_k) / yb if yb != 0 else -y_k
        return out

    @staticmethod
    def _ablated(
        acts: torch.Tensor, chosen: torch.Tensor, fill: float, start: int, stop: int
    ) -> torch.Tensor:
        """Rows ``start..stop-1``: the clean activations, channel ``chosen[i]`` filled."""
        ks = chosen[start:stop]
        rows = acts[None].repeat(len(ks), 1, 1, 1)
        rows[torch.arange(len(ks), device=rows.device), ks] = fill
        return rows
