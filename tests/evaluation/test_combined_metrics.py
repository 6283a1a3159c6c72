"""ADCC and ARCC: each part and the combination against hand-computed numbers."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

import sacam
from sacam.evaluation import BenchmarkConfig, MetricBatch, combined, metric_info, road
from sacam.evaluation.faithfulness import confidence_change
from sacam.preprocess import Preprocess
from tests.support.nets import GapNet
from tests.support.runs import colour_folder, run_config

# one 2×2 image, three channels: channel 0 = [[1, 2], [3, 4]], channel 1 = 1, channel 2 = 0
X = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[1.0, 1.0], [1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]]])
L = torch.tensor([[[0.0, 0.5], [1.0, 0.5]]])
# GAP -> fc: logit 0 = mean of channel 0, logit 1 = mean of channel 1
NET = GapNet([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).eval()
IDENTITY = Preprocess(size=2, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def _first_channel(x: torch.Tensor) -> torch.Tensor:
    """A stand-in method: the map of an image is its channel 0."""
    return x[:, 0]


def _hand() -> dict[str, float]:
    # x ⊙ L, channel 0: [[0, 1], [3, 2]]; centred [-1.5, -0.5, 1.5, 0.5]; L centred
    # [-0.5, 0, 0.5, 0]: Σab = 1.5, Σa² = 5, Σb² = 0.5
    rho = 1.5 / math.sqrt(5 * 0.5)
    coh = (rho + 1) / 2
    comp = (0 + 0.5 + 1 + 0.5) / 4
    # logits clean (2.5, 1), masked (1.5, 0.5): p_0 = sigmoid of the difference
    y = 1 / (1 + math.exp(-1.5))
    o = 1 / (1 + math.exp(-1.0))
    ad = (y - o) / y
    a, b, c = coh, 1 - comp, 1 - ad
    return {
        "coherency": coh,
        "complexity": comp,
        "ad": ad,
        "adcc": 3 * a * b * c / (a * b + b * c + c * a),
    }


def test_parts_match_hand_computed_values() -> None:
    hand = _hand()
    coh = combined.coherency(_first_channel, X, L, IDENTITY)
    assert coh.item() == pytest.approx(hand["coherency"], rel=1e-6)
    assert combined.coherency(_first_channel, X, L).item() == pytest.approx(
        hand["coherency"], rel=1e-6
    )
    assert combined.l1_complexity(L).item() == pytest.approx(0.5, abs=0)
    ad = confidence_change(NET, X, L, 0, preprocess=IDENTITY)["average_drop"]
    assert ad.item() == pytest.approx(100 * hand["ad"], rel=1e-5)
    adcc = combined.adcc_values(coh, combined.l1_complexity(L), ad)
    assert adcc.item() == pytest.approx(hand["adcc"], rel=1e-5)


def _batch(images: torch.Tensor, maps: torch.Tensor, **kw) -> MetricBatch:
    return MetricBatch(
        model=NET,
        images=images,
        maps=maps,
        classes=torch.zeros(images.shape[0], dtype=torch.long),
        preprocess=kw.pop("preprocess", IDENTITY),
        config=BenchmarkConfig(data_dir=Path(".")),
        method="first-channel",
        explain=lambda model, x, classes: _first_channel(x),
        **kw,
    )


def test_registered_adcc_writes_the_hand_computed_values() -> None:
    hand = _hand()
    out = metric_info("adcc").fn(_batch(X, L))
    assert out.values["adcc"].item() == pytest.approx(hand["adcc"], rel=1e-5)
    assert out.values["coherency"].item() == pytest.approx(hand["coherency"], rel=1e-6)
    assert out.values["l1_complexity"].item() == pytest.approx(0.5, abs=0)
    info = metric_info("adcc")
    assert [(v.name, v.higher_is_better) for v in info.values] == [
        ("adcc", True),
        ("coherency", True),
        ("l1_complexity", False),
    ]
    assert info.needs == {"method"} and metric_info("arcc").needs == {"method"}


def test_arcc_is_the_harmonic_mean_with_the_road_gap_clipped() -> None:
    coh, comp = torch.tensor([0.8, 0.8, 0.8]), torch.tensor([0.25, 0.25, 0.25])
    got = combined.arcc_values(coh, comp, torch.tensor([0.3, -0.2, 1.4]))
    a, b = 0.8, 0.75
    for value, c in zip(got.tolist(), (0.3, 0.0, 1.0), strict=True):
        want = 3 * a * b * c / (a * b + b * c + c * a)
        assert value == pytest.approx(want, rel=1e-6, abs=1e-12)


def test_registered_arcc_combines_coherency_complexity_and_road_at_20_to_80_percent() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 6, 6, generator=g)
    maps = torch.rand(2, 6, 6, generator=g)
    pre = Preprocess(size=6)
    x = pre.normalize(x)
    got = metric_info("arcc").fn(_batch(x, maps, preprocess=pre)).values["arcc"]
    r = road.road(
        NET, x, maps, pre, torch.zeros(2, dtype=torch.long), percentages=(0.2, 0.4, 0.6, 0.8)
    )
    coh = combined.coherency(_first_channel, x, maps, pre)
    want = combined.harmonic3(coh, 1 - maps.flatten(1).mean(1), r.gap.clamp(0, 1))
    torch.testing.assert_close(got, want)


def test_constant_maps_and_zero_terms() -> None:
    flat = torch.full((1, 2, 2), 0.5)
    assert math.isnan(combined.coherency(_first_channel, X, flat).item())  # ρ undefined
    h = combined.harmonic3(torch.tensor([0.0, float("nan")]), torch.ones(2), torch.ones(2))
    assert h[0].item() == 0.0 and math.isnan(h[1].item())


def test_both_run_in_a_benchmark_and_share_the_confidence_pass(tmp_path) -> None:
    data = colour_folder(tmp_path, n=2)
    out = tmp_path / "out"
    sacam.evaluation.run_benchmark(
        run_config(data, out, metrics=["confidence", "adcc", "arcc"]), progress=False
    )
    rows = list(csv.DictReader((out / "results.csv").open()))
    by = {(r["image"], r["method"], r["metric"]): float(r["value"]) for r in rows}
    for method in ("grad-cam", "random"):
        for img in ("img0.png", "img1.png"):
            for name in ("adcc", "arcc", "coherency", "l1_complexity"):
                assert 0.0 <= by[(img, method, name)] <= 1.0
            coh, comp = by[(img, method, "coherency")], by[(img, method, "l1_complexity")]
            ad = by[(img, method, "average_drop")] / 100
            want = 3 / (1 / coh + 1 / (1 - comp) + 1 / (1 - ad))
            assert by[(img, method, "adcc")] == pytest.approx(want, rel=1e-4)
