"""Round two, methods no library has: Opti-CAM, Poly-CAM, LIFT-CAM, FD-CAM."""

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


# ----------------------------------------------------------------------------- FD-CAM
def test_fd_cam_by_hand() -> None:
    # identity layer, logit_0 = Σ_k W_k mean(A^k). Cosine similarities: cos(0,1) = 0.995,
    # cos(2,3) = 0.989, cos(1,3) = 0.015, the rest 0, so with threshold ½ (the midpoint of
    # each row's 2nd and 3rd smallest) the groups are {0,1}, {0,1}, {2,3}, {2,3}. On this
    # additive tail s_i = y(on) + y − y(off) = 2 Σ_{k∈G_i} W_k μ_k = [−0.8, −0.8, 2.1, 2.1],
    # minmax -> [0, 0, 1, 1]; g = W / 3, minmax -> (W + 1) / 3 = [2/3, 0, 1, ½].
    a = [[1.0, 0.0, 0.0], [2.0, 0.2, 0.0], [0.0, 0.0, 1.0], [0.0, 0.3, 2.0]]
    x = torch.tensor(a)[None, :, None, :]
    net = GapNet([[1.0, -1.0, 2.0, 0.5], [0.0, 0.0, 0.0, 1.0]])
    out = sacam.explain(
        net, x, method="fd-cam", layer="feat", targets=0, threshold=0.5, upsample=False
    )
    w = [2 / 3 - 0.5, -0.5, math.e - 0.5, math.e / 2 - 0.5]
    raw = [max(0.0, sum(w[k] * a[k][p] for k in range(4))) for p in range(3)]
    expected = _minmax(torch.tensor(raw))
    torch.testing.assert_close(out[0, 0], expected, rtol=0, atol=1e-6)


def _reference_fd_cam(net: nn.Sequential, x: torch.Tensor, c: int, q: float) -> torch.Tensor:
    """One image, layer ``net[:2]``, the tail ``net[2:]`` run directly, NumPy quantiles."""
    import numpy as np

    acts = net[:2](x).detach()
    leaf = acts.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(net[2:](leaf)[0, c], leaf)
    g = g[0].mean(dim=(1, 2))
    flat = acts[0].flatten(1).numpy()
    k = flat.shape[0]
    s = torch.zeros(k, dtype=x.dtype)
    y = net(x)[0, c]
    for i in range(k):
        cos = np.array(
            [
                flat[i] @ flat[j] / (np.linalg.norm(flat[i]) * np.linalg.norm(flat[j]) or np.inf)
                for j in range(k)
            ]
        )
        on = torch.tensor(cos > np.quantile(cos, q), dtype=x.dtype)[None, :, None, None]
        s[i] = net[2:](acts * on)[0, c] + y - net[2:](acts * (1 - on))[0, c]
    w = torch.exp(_minmax(s)) * _minmax(g) - 0.5
    sal = (w[:, None, None] * acts[0]).sum(0).clamp_min(0)
    return _minmax(F.interpolate(sal[None, None], size=x.shape[-2:], mode="bilinear")[0, 0])


def test_fd_cam_matches_a_direct_tail_reference(images) -> None:
    net = small_cnn().double().eval()
    x = images.double()
    for p in net.parameters():
        p.requires_grad_(False)
    maps = sacam.explain(net, x, method="fd-cam", layer="1", targets=[4, 0, 2], inputs_per_pass=5)
    for b, c in enumerate([4, 0, 2]):
        ref = _reference_fd_cam(net, x[b : b + 1], c, 0.95)
        torch.testing.assert_close(maps[b], ref, rtol=0, atol=1e-6)


def test_fd_cam_rejects_bad_options() -> None:
    with pytest.raises(MethodError, match="threshold"):
        sacam.build_method(GapNet([[1.0, 1.0]]), "fd-cam", threshold=1.5)
    with pytest.raises(MethodError, match="reshape_transform"):
        sacam.build_method(GapNet([[1.0, 1.0]]), "fd-cam", reshape_transform=lambda t: t)


# ----------------------------------------------------------------------------- LIFT-CAM
class _LiftNet(nn.Module):
    """Identity layer -> per-channel 1x1 conv (w = 1, 2; b = −1, ½) -> ReLU -> mean -> sum."""

    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Identity()
        self.conv = nn.Conv2d(2, 2, 1, groups=2)
        self.relu = nn.ReLU()
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, 2.0]).view(2, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([-1.0, 0.5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.relu(self.conv(self.feat(x)))
        return torch.stack([z.mean(dim=(1, 2, 3)) * 2, -z.mean(dim=(1, 2, 3))], dim=1)


def test_lift_cam_rescale_rule_by_hand() -> None:
    # y = mean over positions of ReLU(A0 − 1) + ReLU(2 A1 + ½) (×2/2 channels = Σ of means).
    # A0 = [3, ½, 2]: z = [2, −½, 1], z0 = −1, so Δrelu/Δz = [2/3, 0, 1/2] and
    #   w0 = Σ A0 · m / 3 = (3·2/3 + 0 + 2·1/2) / 3 = 1 (= Δy of channel 0).
    # A1 = [1, −1, 0]: z = [2.5, −1.5, ½], z0 = ½, Δrelu/Δz = [1, 1/4, relu'(½) = 1] (Δz = 0),
    #   times the conv weight 2: w1 = (1·2 − 1·½ + 0) / 3 = ½ (a gradient would give 2/3).
    # map = ReLU(A0 + ½ A1) = [3.5, 0, 2] -> [1, 0, 4/7].
    x = torch.tensor([[[[3.0, 0.5, 2.0]], [[1.0, -1.0, 0.0]]]])
    out = sacam.explain(_LiftNet(), x, method="lift-cam", layer="feat", targets=0, upsample=False)
    torch.testing.assert_close(out[0, 0], torch.tensor([1.0, 0.0, 4 / 7]), rtol=0, atol=1e-6)


def _tail_net(inplace: bool = False) -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(inplace=inplace),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.SiLU(),
        nn.Conv2d(8, 8, 1),
        nn.Sigmoid(),
        nn.AvgPool2d(2),
        nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).double()


@pytest.mark.parametrize("inplace", [False, True])
def test_lift_cam_contributions_sum_to_the_score_change(images, inplace: bool) -> None:
    # DeepLIFT's rescale rule is exact on linear layers and element-wise activations:
    # Σ_k w_k = y(A) − y(0) for every image, whatever the activations (summation to delta).
    net = _tail_net(inplace).eval()
    x = images.double()
    targets = torch.tensor([0, 1, 3])
    ex = sacam.explain_full(net, x, method="lift-cam", layer="0", targets=targets)
    with torch.no_grad():
        y = net(x)[torch.arange(3), targets]
        y0 = net[1:](torch.zeros_like(net[0](x)))[torch.arange(3), targets]
    totals = ex.extras["lift-cam"]["0"].sum(dim=1)
    torch.testing.assert_close(totals, y - y0, rtol=0, atol=1e-10)


def test_lift_cam_rejects_bad_options() -> None:
    with pytest.raises(MethodError, match="eps"):
        sacam.build_method(GapNet([[1.0, 1.0]]), "lift-cam", eps=-1.0)
    with pytest.raises(MethodError, match="reshape_transform"):
        sacam.build_method(GapNet([[1.0, 1.0]]), "lift-cam", reshape_transform=lambda t: t)


# ----------------------------------------------------------------------------- Poly-CAM
def _bilinear(a: list[list[float]], out_h: int, out_w: int) -> torch.Tensor:
    """Bilinear resize written out (half-pixel centres, edges clamped), float64."""

    def taps(i: int, n_in: int, n_out: int) -> tuple[int, int, float]:
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = int(math.floor(src))
        i1 = min(i0 + 1, n_in - 1)
        return i0, i1, src - i0

    h, w = len(a), len(a[0])
    out = torch.zeros(out_h, out_w, dtype=torch.float64)
    for i in range(out_h):
        y0, y1, fy = taps(i, h, out_h)
        for j in range(out_w):
            x0, x1, fx = taps(j, w, out_w)
            top = a[y0][x0] * (1 - fx) + a[y0][x1] * fx
            bottom = a[y1][x0] * (1 - fx) + a[y1][x1] * fx
            out[i, j] = top * (1 - fy) + bottom * fy
    return out


class _TwoStages(nn.Module):
    """a (identity, 1 channel, 4x4) -> 2x2 average pool -> b (identity) -> mean -> ±logit."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Identity()
        self.pool = nn.AvgPool2d(2)
        self.b = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.b(self.pool(self.a(x))).mean(dim=(1, 2, 3))
        return torch.stack([m, -m], dim=1)


def test_poly_cam_fuses_two_stages_by_hand() -> None:
    # One channel per stage: each stage map is its activation times a positive weight,
    # which the min-max normalisation cancels, so the map is
    # minmax(A / up(down(A)) ⊙ up(pool(A))) with bilinear resizes written out above.
    rows = [[1.0, 2.0, 0.5, 3.0], [4.0, 1.0, 2.0, 2.0], [0.2, 0.3, 5.0, 1.0], [1.0, 1.0, 2.0, 4.0]]
    x = torch.tensor(rows)[None, None]
    ex = sacam.explain_full(_TwoStages(), x, method="poly-cam", targets=0, variant="plus")
    assert list(ex.extras["poly-cam"]) == ["b", "a"]  # found automatically, deep to shallow
    pooled = [[sum(rows[2 * i + di][2 * j + dj] for di in (0, 1) for dj in (0, 1)) / 4
               for j in (0, 1)] for i in (0, 1)]  # fmt: skip
    down = _bilinear(rows, 2, 2).tolist()  # the 2x2 block means, at these sizes
    back = _bilinear(down, 4, 4)
    expected = _minmax(torch.tensor(rows, dtype=torch.float64) / back * _bilinear(pooled, 4, 4))
    torch.testing.assert_close(ex.maps[0], expected.float(), rtol=0, atol=1e-6)
    plain = sacam.explain(_TwoStages(), x, method="poly-cam", targets=0, lnorm=False)
    no_lnorm = _minmax(torch.tensor(rows, dtype=torch.float64) * _bilinear(pooled, 4, 4))
    torch.testing.assert_close(plain[0], no_lnorm.float(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("variant", ["plus", "minus", "plus-minus"])
def test_poly_cam_weights_by_hand(variant: str) -> None:
    # One stage (identity layer, 1x3), min-max masks (outlier=0): M0 = [1, 0, ½] for
    # A0 = [2, 0, 1] and M1 = [0, 1, 0] for A1 = [0, 3, 0]. Logits are W · (channel means)
    # of the masked input, p = softmax.
    a = [[2.0, 0.0, 1.0], [0.0, 3.0, 0.0]]
    masks = [[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]]
    weight = [[1.0, -0.5], [0.0, 1.0]]
    x = torch.tensor(a)[None, :, None, :]

    def p0(image: list[list[float]]) -> float:
        means = [sum(ch) / 3 for ch in image]
        logits = [sum(wi * m for wi, m in zip(row, means, strict=True)) for row in weight]
        return math.exp(logits[0]) / sum(math.exp(v) for v in logits)

    def masked(mask: list[float]) -> list[list[float]]:
        return [[v * m for v, m in zip(ch, mask, strict=True)] for ch in a]

    base = p0(a)
    w = []
    for m in masks:
        plus, minus = p0(masked(m)), p0(masked([1 - v for v in m]))
        w.append(
            {"plus": plus, "minus": max(0.0, base - minus)}.get(
                variant, max(0.0, plus + base - minus)
            )
        )
    raw = [max(0.0, w[0] * a[0][j] + w[1] * a[1][j]) for j in range(3)]
    out = sacam.explain(
        GapNet(weight), x, method="poly-cam", layer="feat", targets=0, variant=variant,
        outlier=0.0, upsample=False,
    )  # fmt: skip
    torch.testing.assert_close(out[0, 0], _minmax(torch.tensor(raw)), rtol=0, atol=1e-6)


def test_poly_cam_stages_and_explicit_layers(cnn, images) -> None:
    ex = sacam.explain_full(cnn, images, method="poly-cam", inputs_per_pass=8)
    assert list(ex.extras["poly-cam"]) == ["5", "1"]  # the last layer at 8x8, then at 16x16
    assert ex.layers == ["1"]
    given = sacam.explain_full(cnn, images, method="poly-cam", layer=["5", "1"], inputs_per_pass=8)
    torch.testing.assert_close(given.maps, ex.maps, rtol=0, atol=0)
    low = sacam.explain(cnn, images, method="poly-cam", layer=["4", "0"], upsample=False)
    assert low.shape == (3, 16, 16)


def test_poly_cam_rejects_bad_options() -> None:
    net = GapNet([[1.0, 1.0]])
    with pytest.raises(MethodError, match="variant"):
        sacam.build_method(net, "poly-cam", variant="plus+minus")
    with pytest.raises(MethodError, match="lnorm"):
        sacam.build_method(net, "poly-cam", lnorm=1)
    with pytest.raises(MethodError, match="outlier"):
        sacam.build_method(net, "poly-cam", outlier=60)


def test_top_channels_all_is_exact_and_fewer_skip_the_weakest(cnn, images) -> None:
    for method in ("poly-cam", "fd-cam"):
        full = sacam.explain(cnn, images, method=method, layer="1", inputs_per_pass=8)
        same = sacam.explain(
            cnn, images, method=method, layer="1", inputs_per_pass=8, top_channels=8
        )
        torch.testing.assert_close(same, full, rtol=0, atol=0)
    # Poly-CAM with one channel scored: the strongest channel (largest mean, A0) alone
    a = torch.tensor([[[[2.0, 0.0, 1.0]], [[0.0, 0.3, 0.0]]]])
    out = sacam.explain(
        GapNet([[1.0, 1.0]]), a, method="poly-cam", layer="feat", targets=0, top_channels=1,
        upsample=False,
    )  # fmt: skip
    torch.testing.assert_close(out[0, 0], torch.tensor([1.0, 0.0, 0.5]), rtol=0, atol=1e-6)
