"""Combined scores: ADCC (Poppi et al.) and ARCC (pytorch-grad-cam 1.5.7), and their parts.

Both are harmonic means of three terms in [0, 1], each higher-is-better, so a map must do
well on all three to score high:

- ADCC (Poppi et al., "Revisiting the evaluation of class activation mapping for
  explainability", CVPRW 2021, https://arxiv.org/abs/2104.10252):
  ``H(coherency, 1 − complexity, 1 − AD)``, with AD the Average Drop as a fraction
  (:func:`sacam.evaluation.faithfulness.confidence_change` divided by 100);
- ARCC (pytorch-grad-cam 1.5.7, ``metrics/arcc.py``):
  ``H(coherency, 1 − complexity, clip(ROAD, 0, 1))``, with ROAD the mean LeRF − MoRF gap
  of :func:`sacam.evaluation.road.road` at 20, 40, 60 and 80 % of the pixels removed
  (pytorch-grad-cam's ``ROADCombined`` returns half that gap and ARCC doubles it again).

where ``H(a, b, c) = 3 / (1/a + 1/b + 1/c)`` (0 when a term is 0), and

- ``complexity = ‖L‖₁ / (H·W)``: the mean of the map (maps are in [0, 1]);
- ``coherency = (ρ(L(x ⊙ L), L) + 1) / 2``: the Pearson correlation over pixels between
  the map and the map the same method gives for the same class on the explanation image
  ``x ⊙ L`` (masked in pixel space, as the Average Drop is), mapped to [0, 1].

Choices, where the sources leave room: ``ρ`` is NaN (so are ADCC and ARCC) when either map
is constant, rather than 0 through an epsilon as in pytorch-grad-cam; the harmonic mean is
exact (no ``1e-8`` in its denominators); scores are softmax probabilities, as everywhere
in sacam (pytorch-grad-cam's ROAD uses whatever its targets return).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..preprocess import Preprocess
from .faithfulness import batch_confidence, explanation_images
from .registry import MetricBatch, MetricOutput, register_metric
from .road import road_curves

ARCC_ROAD_PERCENTAGES = (0.2, 0.4, 0.6, 0.8)


def l1_complexity(maps: torch.Tensor) -> torch.Tensor:
    """``‖L‖₁ / (H·W)`` of each map ``(B, H, W)``: 0 for all-zero, 1 for all-one maps.

    Example:
        >>> l1_complexity(torch.tensor([[[0.0, 0.5], [1.0, 0.5]]])).tolist()
        [0.5]
    """
    return maps.flatten(1).abs().float().mean(1)


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each pair of maps over their pixels; NaN if one is constant.

    Example:
        >>> rho = pearson(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[2.0, 4.0, 7.0]]))
        >>> round(rho.item(), 4)  # 5 / sqrt(2 · 114 / 9)
        0.9934
    """
    x = a.flatten(1).double()
    y = b.flatten(1).double()
    x = x - x.mean(1, keepdim=True)
    y = y - y.mean(1, keepdim=True)
    den = (x.square().sum(1) * y.square().sum(1)).sqrt()
    rho = (x * y).sum(1) / torch.where(den > 0, den, torch.ones_like(den))
    return torch.where(den > 0, rho, torch.full_like(rho, float("nan"))).float()


ExplainFn = Callable[[torch.Tensor], torch.Tensor]


def coherency(
    explain: ExplainFn,
    images: torch.Tensor,
    maps: torch.Tensor,
    preprocess: Preprocess | None = None,
) -> torch.Tensor:
    """``(ρ(L(x ⊙ L), L) + 1) / 2`` per image, in [0, 1]; NaN where a map is constant.

    Args:
        explain: ``images -> maps`` of the same method and classes as ``maps``.
        images: ``(B, C, H, W)`` normalised inputs.
        maps: ``(B, H, W)`` maps in [0, 1] at the input size.
        preprocess: mask in pixel space (else the normalised tensor is multiplied).
    """
    again = explain(explanation_images(images, maps, preprocess))
    return (pearson(again, maps) + 1) / 2


def harmonic3(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``3 / (1/a + 1/b + 1/c)`` elementwise for terms in [0, 1]; 0 where a term is 0.

    Example:
        >>> harmonic3(torch.tensor([0.5, 0.0]), torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0]))
        tensor([0.7500, 0.0000])
    """
    terms = torch.stack([a, b, c]).double()
    inv = (1 / terms.clamp_min(torch.finfo(torch.float64).tiny)).sum(0)
    out = torch.where((terms > 0).all(0), 3 / inv, torch.zeros_like(inv))
    return torch.where(terms.isnan().any(0), torch.full_like(out, float("nan")), out).float()


def adcc_values(
    coherency: torch.Tensor, complexity: torch.Tensor, average_drop: torch.Tensor
) -> torch.Tensor:
    """ADCC from its parts; ``average_drop`` in % (as sacam's confidence metric writes it)."""
    return harmonic3(coherency, 1 - complexity, 1 - average_drop / 100)


def arcc_values(
    coherency: torch.Tensor, complexity: torch.Tensor, road_gap: torch.Tensor
) -> torch.Tensor:
    """ARCC from its parts; ``road_gap`` is mean LeRF − MoRF (clipped to [0, 1] here)."""
    return harmonic3(coherency, 1 - complexity, road_gap.clamp(0, 1))


def _coherency(batch: MetricBatch) -> torch.Tensor:
    b = batch
    explain = b.explain
    if explain is None:
        raise ValueError("coherency needs the method to recompute maps (batch.explain)")

    def again(x: torch.Tensor) -> torch.Tensor:
        assert explain is not None
        return explain(b.model, x, b.classes)

    return b.memo("coherency", lambda: coherency(again, b.images, b.maps, b.preprocess))


def _parts(batch: MetricBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Coherency and L1 complexity of the batch's maps, on the CPU (shared by ADCC, ARCC)."""
    return _coherency(batch).cpu(), l1_complexity(batch.maps).cpu()


@register_metric(
    "adcc",
    values=[
        ("adcc", True, "ADCC: harmonic mean of coherency, 1 − complexity, 1 − AD"),
        ("coherency", True, "Coherency (ρ(L(x ⊙ L), L) + 1) / 2"),
        ("l1_complexity", False, "Complexity ‖L‖₁ / pixels"),
    ],
    source="Poppi et al. 2104.10252 (CVPRW 2021)",
    needs=("method",),
)
def _adcc(batch: MetricBatch) -> MetricOutput:
    b = batch
    coh, comp = _parts(b)
    ad = batch_confidence(b)["average_drop"].float().cpu()
    return MetricOutput(
        {"adcc": adcc_values(coh, comp, ad), "coherency": coh, "l1_complexity": comp}
    )


@register_metric(
    "arcc",
    values=[("arcc", True, "ARCC: harmonic mean of coherency, 1 − complexity, ROAD")],
    source="pytorch-grad-cam 1.5.7 metrics/arcc.py (ROAD at 20/40/60/80 %)",
    needs=("method",),
)
def _arcc(batch: MetricBatch) -> MetricOutput:
    b = batch
    coh, comp = _parts(b)
    percentages = ARCC_ROAD_PERCENTAGES
    r = road_curves(
        b.model, b.images, b.maps, b.preprocess, b.classes, percentages, seed=b.config.seed
    )
    return MetricOutput({"arcc": arcc_values(coh, comp, r.gap.float())})
