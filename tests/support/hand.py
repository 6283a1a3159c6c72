"""Hand-computed maps: the small layers, weights and helpers the family tests check against."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

import sacam

# Two 2×2 channels: A0 = [[1, 2], [3, 4]], A1 = [[0, 1], [1, 0]].
A = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [1.0, 0.0]]]])

# GapNet's classifier: class c = Σ_k W[c][k] · mean(A_k)
W = [[1.0, 2.0], [3.0, -1.0]]


def hook_count(model: nn.Module) -> int:
    """Forward, forward-pre and backward hooks left on any module of ``model``."""
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


def norm(rows: list[list[float]]) -> torch.Tensor:
    """ReLU then min-max of a hand-computed raw map, as the engine does."""
    flat = [max(v, 0.0) for r in rows for v in r]
    lo, hi = min(flat), max(flat)
    return torch.tensor([[(max(v, 0.0) - lo) / (hi - lo) for v in r] for r in rows])


def grid(f: Callable[[int, int], float]) -> list[list[float]]:
    """The 2×2 raw map ``f(i, j)``."""
    return [[f(i, j) for j in range(2)] for i in range(2)]


def explain_feat(
    net: nn.Module, x: torch.Tensor, method: str, target: int = 0, **kw: object
) -> torch.Tensor:
    """The first image's map at layer ``feat``, at the layer's size."""
    maps = sacam.explain(net, x, method=method, layer="feat", targets=target, upsample=False, **kw)
    return maps[0]
