"""Opti-CAM: channel weights optimised by Adam against a hand-written loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sacam
from sacam.errors import MethodError
from tests.support.nets import GapNet, small_cnn


def _minmax(t: torch.Tensor) -> torch.Tensor:
    return (t - t.min()) / (t.max() - t.min())


# ----------------------------------------------------------------------------- Opti-CAM
@pytest.mark.parametrize("objective", ["max", "match"])
def test_opti_cam_one_adam_step_by_hand(objective: str) -> None:
    # A = x (identity layer), logit_0 = mean(A^0) on the masked input. With
    # A^0 = [4, 2, 1], A^1 = [1, 0, 3] and α = (½, ½): S = [2.5, 1, 2], n(S) = [1, 0, n2],
    # n2 = (3α1 − α0) / (2α0 + α1), so the masked logit (4 + n2)/3 falls as u0 grows
    # (∂/∂u0 = −7α0α1(α0 + α1) / (3 (2α0 + α1)²) < 0). It is below the clean logit 7/3
    # whatever α, so both objectives raise it: Adam's first step moves u0 by −lr, u1 by +lr.
    x = torch.tensor([[[[4.0, 2.0, 1.0]], [[1.0, 0.0, 3.0]]]])
    net = GapNet([[1.0, 0.0], [0.0, 1.0]])
    out = sacam.explain(
        net,
        x,
        method="opti-cam",
        layer="feat",
        targets=0,
        steps=1,
        lr=0.01,
        objective=objective,
        upsample=False,
    )
    alpha = torch.softmax(torch.tensor([0.49, 0.51]), 0)
    expected = _minmax(alpha[0] * x[0, 0] + alpha[1] * x[0, 1])
    torch.testing.assert_close(out[0], expected, rtol=0, atol=1e-6)


def _reference_opti_cam(
    net: nn.Sequential, x: torch.Tensor, c: int, steps: int, lr: float
) -> torch.Tensor:
    """One image, the layer ``net[:2]``, Adam written out by hand (β = 0.9, 0.999, ε = 1e-8)."""
    acts = net[:2](x)[0].clamp_min(0).detach()
    u = torch.full((acts.shape[0],), 0.5, dtype=x.dtype)
    m = torch.zeros_like(u)
    v = torch.zeros_like(u)
    for t in range(1, steps + 1):
        leaf = u.clone().requires_grad_(True)
        e = torch.exp(leaf)
        sal = ((e / e.sum())[:, None, None] * acts).sum(0)
        up = F.interpolate(sal[None, None], size=x.shape[-2:], mode="bilinear")[0, 0]
        score = net(x * _minmax(up))[0, c]
        (g,) = torch.autograd.grad(-score, leaf)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        mhat, vhat = m / (1 - 0.9**t), v / (1 - 0.999**t)
        u = u - lr * mhat / (vhat.sqrt() + 1e-8)
    alpha = torch.exp(u) / torch.exp(u).sum()
    up = F.interpolate(
        ((alpha[:, None, None] * acts).sum(0))[None, None], size=x.shape[-2:], mode="bilinear"
    )[0, 0]
    return _minmax(up)


def test_opti_cam_matches_a_hand_written_adam_loop(images) -> None:
    net = small_cnn().double().eval()
    x = images.double()
    targets = [1, 3, 0]
    with torch.no_grad():
        for p in net.parameters():
            p.requires_grad_(False)
    maps = sacam.explain(net, x, method="opti-cam", layer="1", targets=targets, steps=15, lr=0.05)
    for b, c in enumerate(targets):
        ref = _reference_opti_cam(net, x[b : b + 1], c, 15, 0.05)
        torch.testing.assert_close(maps[b], ref, rtol=0, atol=1e-6)  # float64 maps


def test_opti_cam_raises_the_masked_logit(images) -> None:
    net = small_cnn()
    cam = sacam.build_method(net, "opti-cam", layer="1", steps=30, lr=0.1)
    short = sacam.build_method(net, "opti-cam", layer="1", steps=1, lr=0.1)
    ex = cam.explain(images, targets=2, upsample=True)
    ex0 = short.explain(images, targets=2, upsample=True)
    with torch.no_grad():
        better = net.eval()(images * ex.maps[:, None])[:, 2]
        first = net(images * ex0.maps[:, None])[:, 2]
    assert (better >= first - 1e-5).all() and (better > first).any()


@pytest.mark.parametrize(
    ("option", "value"),
    [("steps", 0), ("lr", 0.0), ("lr", math.nan), ("init", "a"), ("objective", "min")],
)
def test_opti_cam_rejects_bad_options(option: str, value: object) -> None:
    with pytest.raises(MethodError, match=option if option != "objective" else "objective"):
        sacam.build_method(GapNet([[1.0, 1.0]]), "opti-cam", **{option: value})
