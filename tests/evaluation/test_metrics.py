"""Metrics: hand-computed values and the properties their protocols promise."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sacam.evaluation.faithfulness import confidence_change, deletion, insertion
from sacam.evaluation.stats import MeanAccumulator
from sacam.filters import gaussian_blur
from sacam.preprocess import Preprocess


class PixelLogit(nn.Module):
    """logits = [sum(v * x) + bias, 0]: p_0 = sigmoid(v . x + bias)."""

    def __init__(self, v: torch.Tensor, bias: float = 0.0) -> None:
        super().__init__()
        self.v = nn.Parameter(v.clone())
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x * self.v).flatten(1).sum(1) + self.bias
        return torch.stack([s, torch.zeros_like(s)], 1)


def _sig(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def test_deletion_curve_by_hand() -> None:
    v = torch.tensor([[[[2.0, 1.0], [0.5, 0.0]]]])
    net = PixelLogit(v)
    x = torch.ones(1, 1, 2, 2)
    sal = torch.tensor([[[0.9, 0.5], [0.1, 0.0]]])  # deletes 2, then 1, then 0.5, then 0
    res = deletion(net, x, sal, targets=0, steps=4)
    expect = [_sig(3.5), _sig(1.5), _sig(0.5), _sig(0.0), _sig(0.0)]
    assert res.curves[0].tolist() == pytest.approx(expect, abs=1e-6)
    auc = sum((expect[i] + expect[i + 1]) / 2 * 0.25 for i in range(4))
    assert float(res.auc[0]) == pytest.approx(auc, abs=1e-6)


def test_insertion_curve_starts_from_the_blur() -> None:
    v = torch.rand(1, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    net = PixelLogit(v)
    x = torch.rand(1, 1, 6, 6)
    sal = torch.rand(1, 6, 6)
    res = insertion(net, x, sal, targets=0, steps=36)
    blurred = gaussian_blur(x, 11, 5.0)
    with torch.no_grad():
        start = torch.softmax(net(blurred), 1)[0, 0]
        end = torch.softmax(net(x), 1)[0, 0]
    assert float(res.curves[0, 0]) == pytest.approx(float(start), abs=1e-6)
    assert float(res.curves[0, -1]) == pytest.approx(float(end), abs=1e-6)


def test_blur_keeps_constants_and_smooths() -> None:
    c = torch.full((1, 3, 16, 16), 0.3)
    assert torch.allclose(gaussian_blur(c, 11, 5.0), c, atol=1e-6)
    noise = torch.rand(1, 3, 32, 32)
    assert gaussian_blur(noise, 11, 5.0).std() < noise.std() / 2


def test_oracle_map_beats_random_on_deletion_and_insertion() -> None:
    torch.manual_seed(0)
    patch = torch.zeros(1, 3, 16, 16)
    patch[:, :, 4:8, 4:8] = 1.0  # only this bright patch drives the score
    net = PixelLogit(patch / 4, bias=-6.0)  # logit +6 on the image, far below on its blur
    x = patch.expand(4, 3, 16, 16) + 0.05 * torch.rand(4, 3, 16, 16)
    oracle = patch[0, 0].expand(4, 16, 16)
    rand = torch.rand(4, 16, 16)
    d_oracle, d_rand = deletion(net, x, oracle, 0, steps=32), deletion(net, x, rand, 0, steps=32)
    i_oracle, i_rand = insertion(net, x, oracle, 0, steps=32), insertion(net, x, rand, 0, steps=32)
    assert (d_oracle.auc < d_rand.auc - 0.2).all()
    assert (i_oracle.auc > i_rand.auc + 0.2).all()


def test_all_ones_map_has_average_drop_zero() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(5))
    pre = Preprocess(size=8)  # ImageNet's mean and std
    x = pre.normalize(torch.rand(64, 3, 8, 8))
    net(x)
    out = confidence_change(net, x, torch.ones(64, 8, 8), preprocess=pre)
    # exactly: the explanation of a map of ones is the image itself, bit for bit, so its
    # score is the image's on any CPU. The old normalize(denormalize(x) * 1) round trip
    # rounded: here 3 of the 64 images had a small Average Drop and 2 an "increase".
    assert (out["average_drop"] == 0).all()
    assert (out["increase_in_confidence"] == 0).all()
    assert (out["average_gain"] == 0).all()


@pytest.mark.parametrize(
    "pre",
    [
        Preprocess(size=8),
        Preprocess(size=8, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2)),
        Preprocess(size=8, mean=(127 / 255,) * 3, std=(128 / 255,) * 3),
    ],
)
def test_multiplying_pixels_is_the_round_trip_without_its_rounding(pre: Preprocess) -> None:
    torch.manual_seed(1)
    x = pre.normalize(torch.rand(4, 3, 8, 8))
    factor = torch.rand(4, 1, 8, 8)
    round_trip = pre.normalize(pre.denormalize(x) * factor)
    assert torch.allclose(pre.multiply_pixels(x, factor), round_trip, atol=1e-6)
    ones = torch.ones(4, 1, 8, 8)
    assert torch.equal(pre.multiply_pixels(x, ones), x)
    assert torch.equal(pre.multiply_pixels(x, torch.zeros(4, 1, 8, 8)), pre.normalize(0 * x))


def test_confidence_change_by_hand() -> None:
    v = torch.tensor([[[[2.0, 1.0], [0.5, 0.0]]]])
    net = PixelLogit(v)
    x = torch.ones(1, 1, 2, 2)
    sal = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    out = confidence_change(net, x, sal, targets=0)
    y, o = _sig(3.5), _sig(2.0)
    assert float(out["average_drop"][0]) == pytest.approx(100 * (y - o) / y, abs=1e-4)
    assert float(out["average_gain"][0]) == 0.0
    out1 = confidence_change(net, x, sal, targets=1)  # class 1 gains when class 0 drops
    y1, o1 = 1 - y, 1 - o
    assert float(out1["average_gain"][0]) == pytest.approx(100 * (o1 - y1) / (1 - y1), abs=1e-4)
    assert float(out1["increase_in_confidence"][0]) == 100.0


def test_accumulator() -> None:
    acc = MeanAccumulator("insertion")
    assert acc.higher_is_better
    acc.update(torch.tensor([1.0, 2.0, 3.0, float("nan")]))
    res = acc.compute()
    assert res["mean"] == pytest.approx(2.0) and res["nan_count"] == 1 and res["n"] == 3
    # Student's t with 2 degrees of freedom (4.303 in printed tables), not the normal 1.96
    assert res["ci95"] == pytest.approx(4.303 * 1.0 / math.sqrt(3), rel=1e-3)
    acc.reset()
    acc.update(torch.tensor([5.0]))
    assert acc.compute()["mean"] == 5.0 and math.isnan(acc.compute()["ci95"])
    acc.reset()
    assert acc.compute()["n"] == 0


def test_confidence_and_road_read_a_multi_label_model_through_its_sigmoid() -> None:
    """A model ending in nn.Sigmoid outputs probabilities: the metrics take them as they are."""
    from sacam.evaluation.road import road
    from sacam.scores import class_probabilities

    torch.manual_seed(0)
    head = nn.Linear(4, 4)
    nn.init.constant_(head.bias, 4.0)  # every label likely: no softmax row could say so
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head, nn.Sigmoid()
    ).eval()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        out = net(x)
    assert torch.allclose(class_probabilities(net, x), out)  # not a softmax of them
    ones = torch.ones(2, 16, 16)
    change = confidence_change(net, x, ones, targets=torch.tensor([1, 2]))
    assert torch.allclose(change["average_drop"], torch.zeros(2), atol=1e-4)  # E = x itself
    pre = Preprocess(size=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    result = road(net, x, torch.rand(2, 16, 16), pre, targets=torch.tensor([1, 2]))
    assert float(result.morf.min()) > 0.5 and float(result.lerf.min()) > 0.5
