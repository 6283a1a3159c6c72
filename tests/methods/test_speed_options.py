"""Exact speed-ups give the same maps; the inexact options stay close and are off by default."""

from __future__ import annotations

import pytest
import torch

import sacam
from sacam._layers import probe
from sacam._speed import memory
from sacam.evaluation.faithfulness import deletion
from tests.support.groupcam_float import groupcam_stable_parts_agree
from tests.support.nets import small_cnn

PERTURBATION = ["score-cam", "ablation-cam", "group-cam", "is-cam", "ss-cam"]


@pytest.mark.parametrize("method", PERTURBATION)
def test_auto_batch_and_memory_format_are_exact(method, images) -> None:
    net = small_cnn()
    opts = {"n_samples": 2} if method in ("is-cam", "ss-cam") else {}
    opts["upsample"] = False
    auto = sacam.explain_full(net, images, method=method, **opts)
    fixed = sacam.explain_full(net, images, method=method, inputs_per_pass=3, **opts)
    tiny_budget = sacam.explain_full(net, images, method=method, max_memory_mb=0.01, **opts)
    if method == "group-cam":  # amplifies float rounding: a bound derived from it
        groupcam_stable_parts_agree(auto, fixed)
        groupcam_stable_parts_agree(auto, tiny_budget)
        return
    assert torch.allclose(auto.maps, fixed.maps, atol=1e-5)
    assert torch.allclose(auto.maps, tiny_budget.maps, atol=1e-5)


def test_auto_tunes_on_the_calls_own_passes_within_the_cap(images, monkeypatch) -> None:
    # the tuner hands out each candidate (sizes cut to the cap, both memory formats) for
    # the call's own chunks, no pass larger than the cap; then it settles and the first
    # call runs its 16 masked inputs once more with the settled plan (its result must not
    # depend on timing), and a later call runs them once
    net = small_cnn().eval()
    from sacam.methods import _perturb

    monkeypatch.setattr(_perturb, "measured_cap", lambda *a: 5)
    sizes: list[int] = []
    net[0].register_forward_hook(lambda m, i, o: sizes.append(o.shape[0]))
    sacam.explain(net, images[:1], method="score-cam", layer="3")
    masked = sizes[2:]  # after the engine's probe and clean passes
    assert max(masked) == 5 and sum(masked) == 2 * 16  # 16 channels: tuned, then settled
    sizes.clear()
    sacam.explain(net, images[:1], method="score-cam", layer="3")
    # one clean pass (and the layer probe, unless the engine kept it) besides the 16
    assert max(sizes) == 5 and sum(sizes) - 16 in (1, 2)
    record = probe(net, images[:1])
    assert memory.memory_cap(record, (3, 16, 16), 0.01) == 1
    assert memory.bytes_per_sample(record, (3, 16, 16)) == 4 * (3 * 16 * 16 + 3 * 8 * 16 * 16)


def test_an_explicit_inputs_per_pass_bounds_every_pass(images) -> None:
    # with inputs_per_pass=1 no pass holds two inputs, the memory measurement included:
    # a model exported for a fixed batch of 1 can run (tests/methods/test_fixed_batch.py)
    net = small_cnn().eval()
    sizes: list[int] = []
    net[0].register_forward_hook(lambda m, i, o: sizes.append(o.shape[0]))
    for method in ("score-cam", "ablation-cam", "recipro-cam", "group-cam"):
        sacam.explain(net, images[:1], method=method, layer="3", inputs_per_pass=1)
    assert set(sizes) == {1}
    sizes.clear()
    sacam.explain(net, images[:1], method="score-cam", layer="3", inputs_per_pass=3)
    assert max(sizes) == 3


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "fast", None])
def test_inputs_per_pass_is_checked_in_one_place(bad, images) -> None:
    with pytest.raises(sacam.MethodError, match="inputs_per_pass must be a whole number"):
        sacam.build_method(small_cnn(), "score-cam", inputs_per_pass=bad)
    with pytest.raises(sacam.InputError, match="inputs_per_pass must be a whole number"):
        deletion(small_cnn(), images, torch.rand(3, 16, 16), steps=4, inputs_per_pass=bad)


def test_memory_plan_arithmetic() -> None:
    # a line through (2, 100) and (8, 220): 20 per sample, 60 fixed
    assert memory.cost_from_peaks([(8, 220.0), (2, 100.0)]) == (60.0, 20.0)
    # the small pass reads high (noise): the slope is at least half the big pass per
    # sample (220 / 16 = 13.75) and the line stays above both points:
    # fixed = max(200 - 2 · 13.75, 220 - 8 · 13.75) = 172.5
    assert memory.cost_from_peaks([(8, 220.0), (2, 200.0)]) == (172.5, 13.75)
    # a small pass that reads low keeps the steeper slope (200 / 6), no negative fixed
    assert memory.cost_from_peaks([(8, 200.0), (2, 0.0)]) == (0.0, 200.0 / 6)
    assert memory.cost_from_peaks([(1, 30.0)]) == (15.0, 15.0)
    mb = 2.0**20
    cost = memory.MemoryCost(fixed=20 * mb, per_sample=10 * mb, source="rss")
    # each sample also holds 3 inputs of 1 MiB: 13 MiB; the plan fills 0.8 of the budget:
    # (0.8 · 256 - 20) / 13 = 14.2 -> 14
    assert memory.plan_batch(cost, int(mb), 256.0) == 14
    assert 20 + 14 * 13 <= 0.8 * 256 < 20 + 15 * 13
    assert memory.plan_batch(cost, int(mb), 1.0) == 1  # never below one sample


def test_measured_memory_is_cached_and_fits_the_budget(images, monkeypatch) -> None:
    net = small_cnn().eval()
    fake = memory.MemoryCost(fixed=0.0, per_sample=2.0**20, source="rss")
    key = (tuple(images[0].shape), images.dtype, str(images.device), 8)
    monkeypatch.setitem(memory._COSTS, net, {key: fake})
    sample_bytes = images[0].numel() * 4
    cap = memory.measured_cap(net, images[0], 8.0)
    assert cap == int(0.8 * 8 * 2**20 // (2**20 + 3 * sample_bytes))
    cam = sacam.build_method(net, "score-cam", max_memory_mb=8.0, inputs_per_pass=64)
    plans = []
    real = sacam.methods._perturb.perturbed_scores_of

    def spy(ctx, count, builds, tuner, *args, **kwargs):
        plans.append(tuner.next(count)[0].inputs_per_pass)
        return real(ctx, count, builds, tuner, *args, **kwargs)

    monkeypatch.setattr(sacam.methods._perturb, "perturbed_scores_of", spy)
    cam(images[:1])
    assert plans == [cap]


def test_bf16_is_close_but_off_by_default(images) -> None:
    net = small_cnn()
    exact = sacam.explain(net, images, method="score-cam")
    fast = sacam.explain(net, images, method="score-cam", bf16=True)
    corr = torch.corrcoef(torch.stack([exact.flatten(), fast.flatten()]))[0, 1]
    assert corr > 0.95
    assert sacam.build_method(net, "score-cam").bf16 is False


def test_top_channels_scores_only_the_strongest_channels(images) -> None:
    net = small_cnn()
    full = sacam.explain_full(net, images, method="score-cam")
    all_k = sacam.explain(net, images, method="score-cam", top_channels=16)
    assert torch.allclose(full.maps, all_k, atol=1e-6)  # n = K is Score-CAM itself
    few = sacam.explain(net, images, method="score-cam", top_channels=4)
    assert not torch.allclose(full.maps, few, atol=1e-3)
    soft = sacam.explain(net, images, method="score-cam", top_channels=4, variant="softmax")
    assert torch.isfinite(soft).all()
    with pytest.raises(sacam.MethodError, match="top_channels"):
        sacam.explain(net, images, method="score-cam", top_channels=0)
