"""Complexity descriptors of maps: Gini sparsity and entropy (they judge nothing alone)."""

from __future__ import annotations

import torch

from .registry import MetricBatch, MetricOutput, register_metric


def gini(maps: torch.Tensor) -> torch.Tensor:
    """Sparsity: Gini index of each map (0 = uniform, → 1 = one pixel); NaN for all-zero.

    Example:
        >>> one = torch.zeros(1, 2, 2); one[0, 0, 0] = 1
        >>> gini(one).tolist()
        [0.75]
    """
    x = maps.flatten(1).double().clamp_min(0).sort(1).values
    n = x.shape[1]
    total = x.sum(1)
    i = torch.arange(1, n + 1, dtype=torch.float64, device=x.device)
    g = ((2 * i - n - 1) * x).sum(1) / (n * total)
    return torch.where(total > 0, g, torch.full_like(g, float("nan"))).float()


def entropy(maps: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each map as a distribution over pixels; NaN for all-zero."""
    x = maps.flatten(1).double().clamp_min(0)
    total = x.sum(1, keepdim=True)
    p = x / total.clamp_min(1e-300)
    h = -(torch.where(p > 0, p * torch.log(p), torch.zeros_like(p))).sum(1)
    return torch.where(total[:, 0] > 0, h, torch.full_like(h, float("nan"))).float()


@register_metric(
    "complexity",
    values=[
        ("sparsity", True, "Gini sparsity (descriptor)"),
        ("entropy", False, "Entropy, nats (descriptor)"),
    ],
    source="Gini index; Shannon entropy (descriptors)",
    default=True,
)
def _complexity(batch: MetricBatch) -> MetricOutput:
    return MetricOutput({"sparsity": gini(batch.maps), "entropy": entropy(batch.maps)})
