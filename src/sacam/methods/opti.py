"""Opti-CAM (Zhang et al., CVIU 2024): channel weights optimised per image on the masked input."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F

from ..core import BaseCAM
from ..explanation import CallContext, LayerData
from ..registry import register_method
from ._options import check_count, check_number, check_variant
from ._perturb import batch_target_scores

__all__ = ["OptiCAM", "soft_minmax"]


def soft_minmax(maps: torch.Tensor) -> torch.Tensor:
    """Differentiable min-max normalisation of each ``(B, H, W)`` map; a constant map gives 0.

    Example:
        >>> soft_minmax(torch.tensor([[[1.0, 3.0, 2.0]], [[2.0, 2.0, 2.0]]])).tolist()
        [[[0.0, 1.0, 0.5]], [[0.0, 0.0, 0.0]]]
    """
    flat = maps.flatten(1)
    lo = flat.min(dim=1).values[:, None, None]
    span = flat.max(dim=1).values[:, None, None] - lo
    ok = span > 0
    return torch.where(ok, (maps - lo) / torch.where(ok, span, torch.ones_like(span)), 0.0)


@register_method(
    "opti-cam",
    paper="Zhang et al., CVIU 2024 (arXiv 2301.07002)",
    url="https://arxiv.org/abs/2301.07002",
    description="Channel weights softmax(u), with u optimised per image (Adam) so that the input "
    "masked by the normalised map keeps the highest class logit.",
    family="perturbation",
)
class OptiCAM(BaseCAM):
    r"""Opti-CAM (Zhang et al., CVIU 2024, https://arxiv.org/abs/2301.07002).

    The map is a convex combination of the (ReLU'd) feature maps whose weights are
    optimised for this image: with ``α = softmax(u)`` over channels,
    ``S(u) = Σ_k α_k A^k`` and ``n(·)`` the min-max normalisation of the map upsampled
    (bilinear) to the input,

    .. math:: u^* = \arg\max_u\; y^c\big(x \odot n(\mathrm{up}(S(u)))\big),\quad
              L^c = \sum_k \mathrm{softmax}(u^*)_k A^k

    ``y^c`` is the class logit (the paper's choice; for callable targets, the target
    score). ``u`` starts at 0.5 for every channel (uniform weights) and takes ``steps``
    Adam steps (``lr``), the defaults of the authors' code (100 steps, lr 0.01).
    ``objective="match"`` minimises ``|y^c(x) − y^c(x ⊙ n(up(S)))|`` instead: the masked
    input's score should equal the original's (the authors' ``norm`` loss, an ablation
    in the paper). As in the authors' code, ``A`` is ReLU'd first (post-ReLU layers are
    unchanged). Their code stops early when the batch's summed loss rises at one of ten
    checkpoints; sacam always takes ``steps`` steps, so one image's weights never depend
    on the others in its batch. Deterministic (no randomness).

    Cost: ``steps`` forward and backward passes of the whole network on the masked batch
    (gradients with respect to ``u`` only: the model's parameters stay frozen, no
    optimiser state touches the model; the optimiser lives inside the call).
    No library implements it (the authors' code aside).

    Example:
        >>> import torch, sacam
        >>> from sacam.examples import tiny_cnn
        >>> sacam.explain(tiny_cnn(), torch.rand(2, 3, 16, 16), method="opti-cam", steps=5).shape
        torch.Size([2, 16, 16])
    """

    uses_gradients = False  # it needs only the activations; its own passes run below

    def __init__(
        self,
        *args: Any,
        steps: int = 100,
        lr: float = 0.01,
        init: float = 0.5,
        objective: Literal["max", "match"] = "max",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.steps = check_count("steps", steps)
        self.lr = check_number("lr", lr, above=0)
        self.init = check_number("init", init)
        self.objective = check_variant("opti-cam objective", objective, ("max", "match"))

    def expected_rows(self, shape: tuple[int, ...], image_size: tuple[int, int]) -> int:
        """The probe pass and one pass per optimisation step."""
        return 1 + self.steps

    def channel_maps(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """``softmax(u*)_k ReLU(A^k)``, ``(B, K, h, w)``."""
        feats = layer.activations.clamp_min(0)
        alpha = self.optimised_weights(feats, ctx)
        return alpha[:, :, None, None] * feats

    def weights(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """The optimised channel weights ``softmax(u*)``, ``(B, K)``."""
        return self.optimised_weights(layer.activations.clamp_min(0), ctx)

    def masked_inputs(
        self, feats: torch.Tensor, u: torch.Tensor, images: torch.Tensor
    ) -> torch.Tensor:
        """``x ⊙ n(up(Σ_k softmax(u)_k A^k))`` for the batch (differentiable in ``u``)."""
        saliency = torch.einsum("bk,bkhw->bhw", torch.softmax(u, dim=1), feats)
        up = F.interpolate(
            saliency[:, None], size=images.shape[-2:], mode="bilinear", align_corners=False
        )[:, 0]
        return images * soft_minmax(up)[:, None]

    def optimised_weights(self, feats: torch.Tensor, ctx: CallContext) -> torch.Tensor:
        """Run the ``steps`` Adam steps on ``u`` for the whole batch; ``softmax(u*)``, ``(B, K)``.

        The loss is the sum of the per-image losses, so each image's ``u`` gets its own
        gradient and (Adam being element-wise) its own update: a batch equals single calls.
        """
        feats = feats.detach()
        u = torch.full(feats.shape[:2], self.init, dtype=feats.dtype, device=feats.device)
        u.requires_grad_(True)
        optimiser = torch.optim.Adam([u], lr=self.lr)
        original = batch_target_scores(ctx.output, ctx, "logit").detach()
        with torch.enable_grad():
            for _ in range(self.steps):
                output = ctx.model(self.masked_inputs(feats, u, ctx.images))
                score = batch_target_scores(output, ctx, "logit")
                if self.objective == "max":
                    loss = -score.sum()
                else:
                    loss = (original.to(score.dtype) - score).abs().sum()
                optimiser.zero_grad(set_to_none=True)
                loss.backward(inputs=[u])
                optimiser.step()
        return torch.softmax(u.detach(), dim=1)
