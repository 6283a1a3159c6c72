"""FD-CAM (Li et al., ICPR 2022): grouped channel switching scores with gradient weights."""

from __future__ import annotations

import functools
from typing import Any

import torch

from ..explanation import CallContext, LayerData, normalize_maps
from ..registry import register_method
from ._options import check_number
from ._perturb import PerturbationCAM, strongest_channels
from ._tail import LayerTail, Strategy, check_tail_options

__all__ = ["FDCAM", "similarity_groups"]


def similarity_groups(acts: torch.Tensor, threshold: float) -> torch.Tensor:
    """FD-CAM's channel groups of one image: ``(K, h, w)`` -> ``(K, K)`` bool.

    Row ``i`` marks the channels ``j`` whose cosine similarity with channel ``i`` (over
    positions) is above the ``threshold`` quantile of row ``i``'s similarities (linear
    interpolation, as ``torch.quantile``); a channel that is all zeros has similarity 0.

    Example:
        >>> a = torch.tensor([[[1.0, 0.0]], [[2.0, 0.1]], [[0.0, 1.0]]])
        >>> similarity_groups(a, 0.25).int().tolist()  # cos(0, 1) = 0.999, cos(1, 2) = 0.05
        [[1, 1, 0], [1, 1, 0], [0, 1, 1]]
    """
    flat = acts.flatten(1).double()
    norms = flat.norm(dim=1)
    cos = (flat @ flat.T) / (norms[:, None] * norms[None, :])
    cos = torch.nan_to_num(cos, nan=0.0, posinf=0.0, neginf=0.0)
    cut = torch.quantile(cos, threshold, dim=1)
    return cos > cut[:, None]


def _switched_rows(
    switched: torch.Tensor, acts: torch.Tensor, start: int, stop: int
) -> torch.Tensor:
    """Rows ``start..stop-1``: ``acts`` ``(K, h, w)`` with the channels of ``switched[i]`` on."""
    return switched[start:stop, :, None, None] * acts[None]


@register_method(
    "fd-cam",
    paper="Li et al., ICPR 2022 (arXiv 2206.08792)",
    url="https://arxiv.org/abs/2206.08792",
    description="Gradient weights combined with the scores of switching groups of similar "
    "channels on and off in the network after the layer.",
    family="perturbation",
)
class FDCAM(PerturbationCAM):
    r"""FD-CAM (Li, Li, Ma & Wu, ICPR 2022, https://arxiv.org/abs/2206.08792).

    Channels are grouped by similarity: ``G_i`` holds the channels whose cosine
    similarity with channel ``i`` is above the ``threshold`` quantile (0.95: about the
    5 % most similar; :func:`similarity_groups`). The network after the layer (its
    "tail") scores the layer with only the group switched on and with the group switched
    off, and with ``y^c`` the class logit (the target score for callable targets),

    .. math:: s_i = y^c\big(A \odot \mathbb 1_{G_i}\big) + y^c(A) - y^c\big(A \odot
              \mathbb 1_{\overline{G_i}}\big),\qquad
              g_i = \frac{1}{hw}\sum_{ab}\frac{\partial y^c}{\partial A^i_{ab}}

    .. math:: w_i = e^{\,\mathrm{minmax}(s)_i}\;\mathrm{minmax}(g)_i - \tfrac12,\quad
              L^c = \mathrm{ReLU}\Big(\sum_i w_i A^i\Big)

    (min-max over the channels; a constant vector normalises to 0), as the authors' code
    computes it (the paper's "grouped channel switching" and its combination of the
    score-based weights with the normalised gradient-based weights).

    The tail runs as Recipro-CAM's does (``strategy``, default ``"auto"``): a forward hook
    on the target layer (present only during these passes, removed even if one raises)
    replaces its output with the switched maps, ``2 K`` rows per image under
    ``torch.inference_mode()``. ``"expand"`` feeds the image once per batch of rows, so
    the layers before the target run ``⌈2K / inputs_per_pass⌉`` times, not ``2K`` times (the
    authors' code runs the tail alone); ``"repeat"`` feeds the image once per row (any
    network); ``"auto"`` tries ``"expand"`` and falls back to ``"repeat"``.

    Options of the perturbation methods (``inputs_per_pass``, ``max_memory_mb``, ``bf16``)
    apply. Needs the layer's own ``(B, K, h, w)`` output (no ``reshape_transform``).
    ``top_channels=n`` (off by default, not exact) scores
    only the groups of the ``n`` channels with the largest mean activation; the others
    get the lowest score found (0 after the min-max). No library implements it (the
    authors' code aside).

    Example:
        >>> import torch, sacam
        >>> from sacam.examples import tiny_cnn
        >>> net = tiny_cnn(channels=8)
        >>> sacam.explain(net, torch.rand(2, 3, 16, 16), method="fd-cam", layer="1").shape
        torch.Size([2, 16, 16])
    """

    uses_gradients = True

    def __init__(
        self,
        *args: Any,
        threshold: float = 0.95,
        top_channels: int | None = None,
        strategy: Strategy = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.threshold = check_number("threshold", threshold, minimum=0, maximum=1)
        self.strategy, self.top_channels = check_tail_options(
            self, strategy, top_channels, "replaces the layer's own output"
        )

    def rows_per_channel(self) -> int:
        """Two: the channel switched on and switched off."""
        return 2

    def weights(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """``exp(minmax(s)) · minmax(g) − ½``, ``(B, K)``."""
        grads, _ = normalize_maps(layer.grads.mean(dim=(2, 3)))
        scores, _ = normalize_maps(self.switch_scores(layer, ctx))
        return torch.exp(scores) * grads - 0.5

    def switch_scores(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """``s_i = y(on_i) + y − y(off_i)`` of every channel group, ``(B, K)``, layer dtype."""
        acts = layer.activations
        b_count, k = acts.shape[:2]
        batches = self.tail_batches(
            ctx, layer.ref, 2 * self.scored_channels(acts.shape[1]), self.strategy
        )  # measured before the hook exists
        out = torch.zeros(b_count, k, dtype=acts.dtype, device=acts.device)
        tail = LayerTail("fd-cam", layer.ref, ctx, self.strategy, batches=batches, bf16=self.bf16)
        with tail:
            for b in range(b_count):
                chosen = strongest_channels(acts[b], self.top_channels)
                n = len(chosen)
                groups = similarity_groups(acts[b], self.threshold)[chosen].to(acts.dtype)
                switched = torch.cat([groups, 1 - groups])  # (2n, K): on rows, then off rows
                build = functools.partial(_switched_rows, switched, acts[b])
                scores = tail.scores(b, 2 * n, build, "logit").to(acts.dtype)
                s = scores[:n] + ctx.scores[b].to(acts.dtype) - scores[n:]
                out[b] = s.min() if n < k else 0  # unscored groups: the lowest score
                out[b, chosen] = s
        return out
