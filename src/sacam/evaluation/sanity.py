"""Sanity checks for saliency maps (Adebayo et al., https://arxiv.org/abs/1810.03292).

Model parameter randomisation: layers are re-initialised from the logits downwards,

- ``"cascading"``: cumulatively (after step i, the top i layers are random);
- ``"independent"``: one layer at a time (the others keep their trained weights);

and the map is recomputed after each step. Its similarity to the original map is
measured by Spearman rank correlation (of the absolute and of the signed maps; CAMs are
non-negative after ReLU, so the two agree for them), SSIM on [0, 1] maps, and the
Spearman correlation of HOG features. A method that passes loses similarity as layers are
randomised. The user's model is never touched: randomisation happens on a deep copy.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from skimage.feature import hog
from torch import nn

from .._layers import probe
from .registry import MetricBatch, MetricOutput, register_metric
from .robustness import spearman, ssim

MapFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def randomizable_layers(model: nn.Module, images: torch.Tensor) -> list[str]:
    """Names of modules with their own parameters, from the logits downwards.

    That is the forward order reversed, each module listed once.
    """
    record = probe(model, images)
    modules = dict(model.named_modules())
    names: list[str] = []
    for name, _, _ in reversed(record.order):
        own = list(modules[name].parameters(recurse=False))
        if own and name not in names:
            names.append(name)
    return names


def _reinit(module: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for p in module.parameters(recurse=False):
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        for name, buf in module.named_buffers(recurse=False):
            if name == "running_mean":
                buf.zero_()
            elif name == "running_var":
                buf.fill_(1.0)


def hog_spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman correlation of the HOG features of two batches of maps.

    Cells are 16×16 pixels (smaller for maps under 48 pixels), blocks 3×3 cells.
    """
    h, w = a.shape[-2:]
    cell = max(1, min(16, min(h, w) // 3))

    def feats(m: torch.Tensor) -> torch.Tensor:
        arrays = m.cpu().double().numpy()
        return torch.stack([torch.from_numpy(hog(x, pixels_per_cell=(cell, cell))) for x in arrays])

    return spearman(feats(a), feats(b))


@dataclass
class SanityResult:
    """Similarity to the original map after each randomisation step, ``(B, steps)`` each."""

    mode: str
    layers: list[str]
    spearman_abs: torch.Tensor
    spearman_signed: torch.Tensor
    ssim: torch.Tensor
    hog_spearman: torch.Tensor


def sanity_check(
    model: nn.Module,
    images: torch.Tensor,
    explain: MapFn,
    mode: Literal["cascading", "independent"] = "cascading",
    *,
    max_layers: int | None = None,
    seed: int = 0,
) -> SanityResult:
    """Model parameter randomisation test.

    Args:
        model: the trained model (left unchanged).
        images: ``(B, C, H, W)`` inputs.
        explain: ``(model, images) -> (B, H, W)`` maps of a fixed class, e.g.
            ``lambda m, x: sacam.explain(m, x, "grad-cam", targets=classes)``.
        mode: ``"cascading"`` or ``"independent"``.
        max_layers: randomise only the top ``max_layers`` layers (default: all).
        seed: seed of the re-initialisation.

    Returns:
        a :class:`SanityResult` with one column per randomised layer.
    """
    original = explain(model, images)
    layers = randomizable_layers(model, images)[:max_layers]
    gen = torch.Generator().manual_seed(seed)
    work = copy.deepcopy(model)
    cols: dict[str, list[torch.Tensor]] = {"abs": [], "signed": [], "ssim": [], "hog": []}
    for name in layers:
        if mode == "independent":
            work = copy.deepcopy(model)
        _reinit(work.get_submodule(name), gen)
        m = explain(work, images)
        cols["abs"].append(spearman(original.abs(), m.abs()))
        cols["signed"].append(spearman(original, m))
        cols["ssim"].append(ssim(original, m))
        cols["hog"].append(hog_spearman(original, m))
    stack = {
        k: torch.stack(v, 1) if v else torch.empty(images.shape[0], 0) for k, v in cols.items()
    }
    return SanityResult(mode, layers, stack["abs"], stack["signed"], stack["ssim"], stack["hog"])


@register_metric(
    "sanity",
    values=[
        ("sanity_spearman", False, "Spearman to the original after cascading randomisation"),
        ("sanity_ssim", False, "SSIM to the original after cascading randomisation"),
        ("sanity_hog", False, "HOG Spearman after cascading randomisation"),
    ],
    source="Adebayo et al. 1810.03292 (cascading, top 6 layers)",
    needs=("method",),
)
def _sanity(batch: MetricBatch) -> MetricOutput:
    b = batch
    explain = b.explain
    assert explain is not None
    res = sanity_check(
        b.model,
        b.images,
        lambda m, imgs: explain(m, imgs, b.classes),
        "cascading",
        max_layers=b.config.sanity_layers,
        seed=b.config.seed,
    )
    return MetricOutput(
        {
            "sanity_spearman": res.spearman_abs[:, -1],
            "sanity_ssim": res.ssim[:, -1],
            "sanity_hog": res.hog_spearman[:, -1],
        },
        {"sanity_spearman": res.spearman_abs},
    )
