"""A tiny segmenter trained on coloured squares, for the segmentation benchmark tests.

:func:`square_scenes` draws 32×32 dark noisy images with a red square (class 1) and a
blue square (class 2) on distinct cells of a 4×4 grid, with their class-index masks;
:func:`trained_segmenter` trains :class:`SquareSegmenter` on them (seeded, CPU, a few
seconds); :func:`segmenter` is a fresh copy for ``--model tests.support.segmenters:segmenter``.
"""

from __future__ import annotations

import copy
import functools

import torch
from torch import nn

SIZE, SIDE, CLASSES = 32, 8, 3


def square_scenes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images ``(n, 3, 32, 32)`` in [0, 1] and their class masks ``(n, 32, 32)``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, SIZE, SIZE, generator=g) * 0.2
    labels = torch.zeros(n, SIZE, SIZE, dtype=torch.long)
    cells = [(r, c) for r in range(0, SIZE, SIDE) for c in range(0, SIZE, SIDE)]
    for i in range(n):
        for k, j in enumerate(torch.randperm(len(cells), generator=g)[:2].tolist()):
            r, c = cells[j]
            x[i, :, r : r + SIDE, c : c + SIDE] = 0.0
            x[i, 2 * k, r : r + SIDE, c : c + SIDE] = 1.0  # red: class 1, blue: class 2
            labels[i, r : r + SIDE, c : c + SIDE] = k + 1
    return x, labels


class SquareSegmenter(nn.Module):
    """Two 3×3 convolutions and a 1×1 classifier; a ``{"out": (B, 3, H, W)}`` output."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
        )
        self.classifier = nn.Conv2d(8, CLASSES, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.classifier(self.features(x))}


@functools.lru_cache(maxsize=1)
def trained_segmenter() -> SquareSegmenter:
    """:class:`SquareSegmenter` trained on :func:`square_scenes` (Adam), in eval mode; cached."""
    torch.manual_seed(0)
    net = SquareSegmenter()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for step in range(150):
        x, y = square_scenes(8, seed=1000 + step)
        opt.zero_grad()
        nn.functional.cross_entropy(net(x)["out"], y).backward()
        opt.step()
    return net.eval()


def segmenter() -> nn.Module:
    """The trained segmenter, a fresh copy (a model factory for ``--model``)."""
    return copy.deepcopy(trained_segmenter())
