"""Perturbation CAMs: channel weights from the model's scores on masked inputs."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F

from ..core import BaseCAM, CallContext, LayerData, normalize_maps
from ..errors import MethodError
from ..registry import register_method


@register_method(
    "score-cam",
    paper="Wang et al., CVPR-W 2020",
    url="https://arxiv.org/abs/1910.01279",
    description="Channel weights are the class probability of the input masked by each channel.",
    family="perturbation",
)
class ScoreCAM(BaseCAM):
    r"""Score-CAM (Wang et al., 2020, https://arxiv.org/abs/1910.01279).

    For each channel ``k``: ``M^k = minmax(upsample(A^k))`` (per image), and

    .. math:: w^c_k = p^c(x \odot M^k),\quad L^c = \mathrm{ReLU}\Big(\sum_k w^c_k A^k\Big)

    ``p^c`` is the softmax probability of the class (for callable targets: the target
    score itself). As in the authors' code, the mask multiplies the model's (normalised)
    input tensor, constant channels are skipped (weight 0), and there is no softmax across
    channels and no baseline.

    ``variant="softmax"`` reproduces pytorch-grad-cam 1.5.7 and torchcam 0.5.0 (the two
    agree): the weights are a softmax across channels of the class *logits* on the masked
    inputs (torchcam subtracts a baseline logit first, which the softmax cancels).

    Costs K masked forward passes per image, run in batches of ``batch_size`` under
    ``torch.inference_mode()`` with the hooks removed; nothing of one batch is kept for
    the next.

    Example:
        >>> import torch, sacam
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 2))
        >>> sacam.explain(net, torch.rand(1, 3, 16, 16), method="score-cam").shape
        torch.Size([1, 16, 16])
    """

    uses_gradients = False

    def __init__(
        self,
        *args: Any,
        batch_size: int = 32,
        variant: Literal["paper", "softmax"] = "paper",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise MethodError(f"batch_size must be a positive int, got {batch_size!r}")
        if variant not in ("paper", "softmax"):
            raise MethodError(f"score-cam variant must be 'paper' or 'softmax', got {variant!r}")
        self.batch_size = batch_size
        self.variant = variant

    def weights(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """Score of each channel's masked input, ``(B, K)``."""
        acts = layer.activations
        b_count, k_count = acts.shape[:2]
        size = tuple(ctx.images.shape[-2:])
        out = torch.zeros(b_count, k_count, dtype=torch.float32, device=acts.device)
        with torch.inference_mode():
            for b in range(b_count):
                image = ctx.images[b]
                for start in range(0, k_count, self.batch_size):
                    chunk = acts[b, start : start + self.batch_size]
                    up = F.interpolate(
                        chunk[:, None], size=size, mode="bilinear", align_corners=False
                    )
                    masks, constant = normalize_maps(up[:, 0])
                    scores = self._scores(image[None] * masks[:, None], ctx, b)
                    if self.variant == "paper":
                        scores = torch.where(constant, torch.zeros_like(scores), scores)
                    out[b, start : start + chunk.shape[0]] = scores.float()
        if self.variant == "softmax":
            out = torch.softmax(out, dim=1)
        return out.clone()

    def _scores(self, masked: torch.Tensor, ctx: CallContext, b: int) -> torch.Tensor:
        output = ctx.model(masked)
        if ctx.class_idx is None:
            return ctx.score_fn(output)
        c = int(ctx.class_idx[b])
        if self.variant == "softmax":
            return output[:, c]
        return torch.softmax(output.float(), dim=1)[:, c]
