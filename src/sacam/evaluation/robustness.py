"""Measures between a clean and a perturbed map, per image.

The stability metrics (:mod:`sacam.evaluation.adversarial_metrics`) and the sanity checks
(:mod:`sacam.evaluation.sanity`) compare two maps ``(B, H, W)`` with these: top-k
intersection ``|topk ∩ topk'| / k`` (k = 1000 for 224×224), Spearman rank correlation,
SSIM and the centre-of-mass shift in pixels. The attacks that make the perturbed maps are
in :mod:`sacam.evaluation.adversarial`.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats
from skimage.metrics import structural_similarity


def topk_intersection(a: torch.Tensor, b: torch.Tensor, k: int = 1000) -> torch.Tensor:
    """``|topk(a) ∩ topk(b)| / k`` per sample, maps ``(B, H, W)``."""
    fa, fb = a.flatten(1), b.flatten(1)
    k = min(k, fa.shape[1])
    ia = torch.zeros_like(fa, dtype=torch.bool).scatter_(1, fa.topk(k, 1).indices, True)
    ib = torch.zeros_like(fb, dtype=torch.bool).scatter_(1, fb.topk(k, 1).indices, True)
    return (ia & ib).sum(1).float().cpu() / k


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation per sample; NaN where a map is constant."""
    out = []
    for x, y in zip(a.flatten(1).cpu().numpy(), b.flatten(1).cpu().numpy(), strict=True):
        if np.ptp(x) == 0 or np.ptp(y) == 0:
            out.append(float("nan"))
        else:
            out.append(float(stats.spearmanr(x, y).statistic))
    return torch.tensor(out)


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM of [0, 1] maps per sample (scikit-image, data_range 1)."""
    return torch.tensor(
        [
            float(structural_similarity(x, y, data_range=1.0))
            for x, y in zip(a.cpu().double().numpy(), b.cpu().double().numpy(), strict=True)
        ]
    )


def center_of_mass_shift(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance in pixels between the maps' centres of mass; NaN for an all-zero map."""
    h, w = a.shape[-2:]
    rows = torch.arange(h, dtype=torch.float64)[:, None]
    cols = torch.arange(w, dtype=torch.float64)[None, :]

    def com(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = m.double().cpu()
        total = m.flatten(1).sum(1)
        r = (m * rows).flatten(1).sum(1) / total
        c = (m * cols).flatten(1).sum(1) / total
        return r, c, total

    ra, ca, ta = com(a)
    rb, cb, tb = com(b)
    d = torch.sqrt((ra - rb) ** 2 + (ca - cb) ** 2)
    return torch.where((ta > 0) & (tb > 0), d, torch.full_like(d, float("nan"))).float()
