"""The baseline methods against hand-computed values on tiny hand-weighted models.

Most models here have the input itself as target layer (``feat`` is an identity), so the
activations are the input, the gradients are set by the weights, and masked or ablated
scores can be written down. Expected values are either worked out in the comments or
computed by plain loops (Python floats), never by the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import sacam
from sacam.errors import MethodError
from sacam.filters import gaussian_blur
from tests.support.groupcam_float import groupcam_stable_parts_agree
from tests.support.nets import FlatNet, GapNet, small_cnn

# Two 2×2 channels: A0 = [[1, 2], [3, 4]], A1 = [[0, 1], [1, 0]].
A = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [1.0, 0.0]]]])
W = [[1.0, 2.0], [3.0, -1.0]]
# a position-dependent gradient for FlatNet (y_0 = Σ V ⊙ A)
V = torch.tensor([[[0.5, -1.0], [2.0, 1.0]], [[1.5, 0.25], [-0.5, 3.0]]])
# signed activations, to tell the element-wise methods apart
S = torch.tensor([[[[1.0, -2.0], [3.0, 0.5]], [[-1.0, 2.0], [0.5, -3.0]]]])


def _hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


def _norm(rows: list[list[float]]) -> torch.Tensor:
    """ReLU then min-max of a hand-computed raw map, as the engine does."""
    flat = [max(v, 0.0) for r in rows for v in r]
    lo, hi = min(flat), max(flat)
    return torch.tensor([[(max(v, 0.0) - lo) / (hi - lo) for v in r] for r in rows])


def _grid(f) -> list[list[float]]:
    return [[f(i, j) for j in range(2)] for i in range(2)]


def _flat_net() -> FlatNet:
    return FlatNet(torch.stack([V.flatten(), -V.flatten()]))


def _explain(net: nn.Module, x: torch.Tensor, method: str, target: int = 0, **kw) -> torch.Tensor:
    return sacam.explain(net, x, method=method, layer="feat", targets=target, upsample=False, **kw)[
        0
    ]


def _softmax0(logits: list[float]) -> float:
    m = max(logits)
    e = [math.exp(v - m) for v in logits]
    return e[0] / sum(e)


def _gap_logits(x: list[list[list[float]]], weight: list[list[float]]) -> list[float]:
    """GapNet by hand: mean of each channel, then the linear layer."""
    means = [sum(v for row in ch for v in row) / 4 for ch in x]
    return [sum(w * m for w, m in zip(wr, means, strict=True)) for wr in weight]


def _as_lists(t: torch.Tensor) -> list[list[list[float]]]:
    return [[[float(v) for v in row] for row in ch] for ch in t]


# ----------------------------------------------------------------------- gradient family


def test_xgradcam_on_gap_net_equals_gradcam() -> None:
    # constant gradient g_k: w_k = Σ A g / Σ A = g_k, so the map is Grad-CAM's:
    # class 0: A0/4 + A1/2 ∝ [[1, 4], [5, 4]] -> [[0, .75], [1, .75]]
    m = _explain(GapNet(W), A, "xgrad-cam")
    assert torch.allclose(m, torch.tensor([[0.0, 0.75], [1.0, 0.75]]), atol=1e-6)


def test_xgradcam_with_varying_gradient() -> None:
    a = A[0]
    w = [
        sum(float(a[k, i, j] * V[k, i, j]) for i in range(2) for j in range(2)) / float(a[k].sum())
        for k in range(2)
    ]
    expect = _norm(_grid(lambda i, j: sum(w[k] * float(a[k, i, j]) for k in range(2))))
    assert torch.allclose(_explain(_flat_net(), A, "xgrad-cam"), expect, atol=1e-6)


def test_xgradcam_zero_sum_channel_and_library_variant() -> None:
    x = A.clone()
    x[0, 1] = torch.tensor([[1.0, -1.0], [0.0, 0.0]])  # channel 1 sums to 0
    # paper: channel 1 gets weight 0 -> map = w0 A0 -> minmax(A0)
    m = _explain(_flat_net(), x, "xgrad-cam")
    assert torch.allclose(m, torch.tensor([[0.0, 1 / 3], [2 / 3, 1.0]]), atol=1e-6)
    # pytorch-grad-cam: w1 = Σ A g / (0 + 1e-7) = (1.5 - 0.25) / 1e-7 dominates
    num1 = float(V[1, 0, 0] * 1.0 + V[1, 0, 1] * -1.0)  # 1.5 - 0.25 = 1.25
    w0 = float((A[0, 0] * V[0]).sum() / A[0, 0].sum())
    w1 = num1 / (0.0 + 1e-7)
    expect = _norm(_grid(lambda i, j: w0 * float(x[0, 0, i, j]) + w1 * float(x[0, 1, i, j])))
    got = _explain(_flat_net(), x, "xgrad-cam", variant="pytorch-grad-cam")
    assert torch.allclose(got, expect, atol=1e-5)


@pytest.mark.parametrize(
    ("method", "term"),
    [
        ("layer-cam", lambda g, a: max(g, 0.0) * a),
        ("hires-cam", lambda g, a: g * a),
        ("grad-cam-elementwise", lambda g, a: max(g * a, 0.0)),
    ],
)
def test_elementwise_methods_by_loops(method: str, term) -> None:
    expect = _norm(
        _grid(lambda i, j: sum(term(float(V[k, i, j]), float(S[0, k, i, j])) for k in range(2)))
    )
    assert torch.allclose(_explain(_flat_net(), S, method), expect, atol=1e-6)


def test_elementwise_methods_differ_on_signed_activations() -> None:
    maps = [_explain(_flat_net(), S, m) for m in ("layer-cam", "hires-cam", "grad-cam-elementwise")]
    assert not torch.allclose(maps[0], maps[1], atol=1e-3)
    assert not torch.allclose(maps[1], maps[2], atol=1e-3)


class QuadNet(nn.Module):
    """y_c = ½ Σ V_c ⊙ feat(x)²: the gradient at feat is V_c ⊙ x, so it follows the noise."""

    def __init__(self, v: torch.Tensor) -> None:
        super().__init__()
        self.feat = nn.Identity()
        self.register_buffer("v", torch.stack([v, -v]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sq = self.feat(x) ** 2
        return 0.5 * (sq[:, None] * self.v[None]).flatten(2).sum(-1)


def _smooth_reference(x: torch.Tensor, n: int, spread: float, seed: int, variant: str):
    """Loop-by-loop Smooth Grad-CAM++ on QuadNet for class 0 (g = V ⊙ noisy x)."""
    gen = torch.Generator().manual_seed(seed)
    sigma = spread * float(x.max() - x.min())
    samples = []
    for _ in range(n):
        noise = torch.randn(x.shape[1:], generator=gen)
        samples.append((x[0] + sigma * noise).double())
    K = x.shape[1]
    a = x[0].double()
    weights = []
    for k in range(K):
        if variant == "mean-weights":
            wk = 0.0
            for xm in samples:
                s_a = float(xm[k].sum())
                for i in range(2):
                    for j in range(2):
                        g = float(V[k, i, j]) * float(xm[k, i, j])
                        den = 2 * g * g + g**3 * s_a
                        alpha = g * g / den if g != 0 and den != 0 else 0.0
                        wk += alpha * max(g, 0.0) / n
            weights.append(wk)
            continue
        wk = 0.0
        for i in range(2):
            for j in range(2):
                gs = [float(V[k, i, j]) * float(xm[k, i, j]) for xm in samples]
                d1 = sum(gs) / n
                d2 = sum(g * g for g in gs) / n
                d3 = sum(g**3 for g in gs) / n
                if variant == "paper":
                    den = 2 * d2 + d3 * float(a[k].sum())
                else:  # torchcam: Σ_ab D3_ab A_ab and the last sample's gradient
                    den = 2 * d2 + sum(
                        sum(float(V[k, p, q]) ** 3 * float(xm[k, p, q]) ** 3 for xm in samples)
                        / n
                        * float(a[k, p, q])
                        for p in range(2)
                        for q in range(2)
                    )
                    d1 = gs[-1]
                alpha = d2 / den if d2 != 0 and den != 0 else 0.0
                wk += alpha * max(d1, 0.0)
        weights.append(wk)
    return _norm(_grid(lambda i, j: sum(weights[k] * float(a[k, i, j]) for k in range(K))))


@pytest.mark.parametrize("variant", ["paper", "mean-weights", "torchcam"])
def test_smooth_gradcampp_by_loops(variant: str) -> None:
    x = A + 0.5
    got = _explain(
        QuadNet(V), x, "smooth-grad-cam++", n_samples=3, std_spread=0.2, seed=4, variant=variant
    )
    assert torch.allclose(got, _smooth_reference(x, 3, 0.2, 4, variant), atol=1e-5)


def test_smooth_gradcampp_is_gradcampp_when_the_gradient_ignores_the_input() -> None:
    # FlatNet is linear: every noisy copy has the gradient V, so the averages are V's powers
    plain = _explain(_flat_net(), A, "grad-cam++")
    smooth = _explain(_flat_net(), A, "smooth-grad-cam++", n_samples=5, std_spread=0.5)
    assert torch.allclose(plain, smooth, atol=1e-6)


def test_smooth_gradcampp_is_seeded(cnn, images) -> None:
    def run(seed: int) -> torch.Tensor:
        # layer 1: its gradient passes the ReLU of layer 4, so it depends on the noise (at
        # the last layer, before global pooling, the gradient is constant)
        return sacam.explain(
            cnn, images, method="smooth-grad-cam++", layer="1", n_samples=4, seed=seed
        )

    assert torch.equal(run(1), run(1))
    assert not torch.allclose(run(1), run(2), atol=1e-4)


def test_smooth_gradcampp_leaves_no_grad_and_no_hook(cnn, images) -> None:
    sacam.explain(cnn, images, method="smooth-grad-cam++", n_samples=2)
    assert all(p.grad is None for p in cnn.parameters()) and _hooks(cnn) == 0


def test_smooth_gradcampp_absolute_std() -> None:
    # std=0: every copy is the clean image, so it is Grad-CAM++ on QuadNet
    x = A + 0.5
    smooth = _explain(QuadNet(V), x, "smooth-grad-cam++", n_samples=2, std=0.0)
    assert torch.allclose(smooth, _explain(QuadNet(V), x, "grad-cam++"), atol=1e-6)


# ------------------------------------------------------------------- perturbation family

# GapNet(W) on x ⊙ M, class 0, as in tests/test_scorecam.py: M0 = minmax(A0), M1 = A1.
M0 = [[0.0, 1 / 3], [2 / 3, 1.0]]
M1 = [[0.0, 1.0], [1.0, 0.0]]


def _masked_logits(mask: list[list[float]], x: torch.Tensor = A) -> list[float]:
    xs = _as_lists(x[0])
    return _gap_logits(
        [[[v * mask[i][j] for j, v in enumerate(r)] for i, r in enumerate(ch)] for ch in xs], W
    )


def test_sscam_by_loops() -> None:
    n, std, seed = 3, 0.4, 7
    gen = torch.Generator().manual_seed(seed)
    w = []
    for mask in (M0, M1):  # channel-major, one (H, W) draw per sample
        total = 0.0
        for _ in range(n):
            noise = torch.randn(2, 2, generator=gen)
            noisy = [[mask[i][j] + std * float(noise[i, j]) for j in range(2)] for i in range(2)]
            total += _softmax0(_masked_logits(noisy))
        w.append(total / n)
    expect = _norm(_grid(lambda i, j: w[0] * float(A[0, 0, i, j]) + w[1] * float(A[0, 1, i, j])))
    got = _explain(GapNet(W), A, "ss-cam", n_samples=n, std=std, seed=seed)
    assert torch.allclose(got, expect, atol=1e-6)


def test_sscam_torchcam_variant_by_loops() -> None:
    n, std, seed = 2, 0.3, 0
    gen = torch.Generator().manual_seed(seed)
    mean_logit = []
    for mask in (M0, M1):
        total = 0.0
        for _ in range(n):
            noise = torch.randn(2, 2, generator=gen)
            noisy = [[mask[i][j] + std * float(noise[i, j]) for j in range(2)] for i in range(2)]
            total += _masked_logits(noisy)[0]
        mean_logit.append(total / n)
    w0 = _softmax0(mean_logit)
    expect = _norm(_grid(lambda i, j: w0 * float(A[0, 0, i, j]) + (1 - w0) * float(A[0, 1, i, j])))
    got = _explain(GapNet(W), A, "ss-cam", n_samples=n, std=std, seed=seed, variant="torchcam")
    assert torch.allclose(got, expect, atol=1e-6)


def test_sscam_without_noise_is_scorecam() -> None:
    a = _explain(GapNet(W), A, "ss-cam", n_samples=2, std=0.0)
    assert torch.allclose(a, _explain(GapNet(W), A, "score-cam"), atol=1e-6)


def test_sscam_is_seeded(cnn, images) -> None:
    def run(seed: int, bs: int = 32) -> torch.Tensor:
        return sacam.explain(
            cnn, images, method="ss-cam", n_samples=3, seed=seed, inputs_per_pass=bs
        )

    assert torch.equal(run(5), run(5))
    assert not torch.allclose(run(5), run(6), atol=1e-4)
    assert torch.allclose(run(5, bs=7), run(5), atol=1e-6)  # batching does not move the noise


def test_sscam_draws_each_row_once_for_all_images_with_the_same_maps(
    cnn, images, monkeypatch
) -> None:
    # every image's noise restarts from the seed, so the rows are drawn once per chunk and
    # shared: a batch equals the images one at a time, at a third of the draws
    from sacam.methods import scorecam

    draws: list[int] = []
    real = scorecam.seeded_noise
    monkeypatch.setattr(scorecam, "seeded_noise", lambda *a, **k: draws.append(1) or real(*a, **k))
    opts = {"method": "ss-cam", "n_samples": 3, "seed": 4, "inputs_per_pass": 5}
    batch = sacam.explain(cnn, images, **opts)
    rows = len(draws)
    single = torch.cat([sacam.explain(cnn, images[i : i + 1], **opts) for i in range(len(images))])
    torch.testing.assert_close(batch, single, atol=1e-6, rtol=0)  # batched-conv rounding only
    assert rows * len(images) == len(draws) - rows  # one call's draws, each single call's too
    channels = 16  # at the default layer (after the second convolution)
    assert rows == channels * 3


def test_iscam_by_hand() -> None:
    # GapNet is linear, so the class logits on x ⊙ (c M) are c times those on x ⊙ M:
    # x ⊙ M0 -> (13/6, 19/4), x ⊙ M1 -> (9/4, 13/4) (see tests/test_scorecam.py).
    n = 4
    logits = [(13 / 6, 19 / 4), (9 / 4, 13 / 4)]
    w = [sum(_softmax0([i / n * l0, i / n * l1]) for i in range(1, n + 1)) / n for l0, l1 in logits]
    expect = _norm(_grid(lambda i, j: w[0] * float(A[0, 0, i, j]) + w[1] * float(A[0, 1, i, j])))
    got = _explain(GapNet(W), A, "is-cam", n_samples=n)
    assert torch.allclose(got, expect, atol=1e-6)


def test_iscam_torchcam_variant_by_hand() -> None:
    # coefficients accumulate: step i scales the mask by (1 + ... + i)/N; softmax across
    # channels of the mean class logit
    n = 3
    coeff = [i * (i + 1) / 2 / n for i in range(1, n + 1)]  # 1/3, 1, 2
    mean_logit = [sum(c * l0 for c in coeff) / n for l0 in (13 / 6, 9 / 4)]
    w0 = _softmax0(mean_logit)
    expect = _norm(_grid(lambda i, j: w0 * float(A[0, 0, i, j]) + (1 - w0) * float(A[0, 1, i, j])))
    got = _explain(GapNet(W), A, "is-cam", n_samples=n, variant="torchcam")
    assert torch.allclose(got, expect, atol=1e-6)


def test_ablationcam_by_hand() -> None:
    # class 0: y = mean(A0) + 2 mean(A1) = 2.5 + 1 = 3.5; zeroing A0 leaves 1, zeroing
    # A1 leaves 2.5: w = (2.5/3.5, 1/3.5) ∝ (5, 2); 5 A0 + 2 A1 = [[5, 12], [17, 20]]
    m0 = _explain(GapNet(W), A, "ablation-cam", target=0)
    assert torch.allclose(m0, torch.tensor([[0.0, 7 / 15], [12 / 15, 1.0]]), atol=1e-6)
    # class 1: y = 7.5 - 0.5 = 7; zeroing A0 leaves -0.5, zeroing A1 leaves 7.5:
    # w = (7.5/7, -0.5/7); 7.5 A0 - 0.5 A1 = [[7.5, 14.5], [22, 30]]
    m1 = _explain(GapNet(W), A, "ablation-cam", target=1)
    assert torch.allclose(m1, torch.tensor([[0.0, 7 / 22.5], [14.5 / 22.5, 1.0]]), atol=1e-6)


def test_ablationcam_pytorch_grad_cam_fill() -> None:
    x = A + 1.0  # the minimum activation is 1, not 0: ablated channels become 1 - 1e7
    means = [2.5 + 1, 0.5 + 1]
    y = means[0] + 2 * means[1]
    fill = 1.0 - 1e7
    y_k = [fill + 2 * means[1], means[0] + 2 * fill]
    w = [(y - yk) / y for yk in y_k]
    expect = _norm(_grid(lambda i, j: w[0] * float(x[0, 0, i, j]) + w[1] * float(x[0, 1, i, j])))
    got = _explain(GapNet(W), x, "ablation-cam", variant="pytorch-grad-cam")
    assert torch.allclose(got, expect, atol=1e-5)
    # the paper zeroes: w = ((y - 2·1.5)/y, (y - 3.5)/y) = (3.5/6.5, 3/6.5)
    paper = _explain(GapNet(W), x, "ablation-cam")
    ref = _norm(_grid(lambda i, j: 3.5 * float(x[0, 0, i, j]) + 3.0 * float(x[0, 1, i, j])))
    assert torch.allclose(paper, ref, atol=1e-6)


class TwiceNet(nn.Module):
    """feat runs twice: y = fc(mean(feat(x)) + mean(feat(2x)))."""

    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Identity()
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor(W))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.feat(x).mean(dim=(2, 3)) + self.feat(2 * x).mean(dim=(2, 3))
        return self.fc(pooled)


def test_ablationcam_ablates_only_the_chosen_call() -> None:
    # pooled = (2.5, .5) + (5, 1) = (7.5, 1.5), y0 = 10.5; ablating call 0 only:
    # channel 0 -> (5, 1.5): y = 8; channel 1 -> (7.5, 1): y = 9.5; w ∝ (2.5, 1)
    # 2.5 A0 + A1 = [[2.5, 6], [8.5, 10]] -> (m - 2.5) / 7.5
    got = sacam.explain(
        TwiceNet(), A, method="ablation-cam", layer="feat@0", targets=0, upsample=False
    )[0]
    expect = torch.tensor([[0.0, 3.5 / 7.5], [6 / 7.5, 1.0]])
    assert torch.allclose(got, expect, atol=1e-6)


def test_ablationcam_leaves_no_hook_even_when_a_pass_raises() -> None:
    net = GapNet(W)

    class Boom(RuntimeError):
        pass

    def target(out: torch.Tensor) -> torch.Tensor:
        if out.shape[0] != 1:  # the ablation batch (2 copies), not the clean pass
            raise Boom("during the ablation passes")
        return out[:, 0]

    with pytest.raises(Boom):
        sacam.explain(net, A, method="ablation-cam", layer="feat", targets=target)
    assert _hooks(net) == 0
    sacam.explain(net, A, method="ablation-cam", layer="feat", targets=0)
    assert _hooks(net) == 0


def test_ablationcam_refuses_a_reshape_transform() -> None:
    with pytest.raises(MethodError, match="reshape_transform"):
        sacam.build_method(GapNet(W), "ablation-cam", "feat", reshape_transform=lambda t: t)


WG = [[2.0, 3.0], [-1.0, 0.5]]


def test_groupcam_by_loops() -> None:
    # Grad-CAM weights of class 0 on GapNet(WG): (2/4, 3/4). Two channels -> two groups of
    # one: M_0 = A0/2, M_1 = 3 A1/4; minmax: M0 and M1 above. Zero baseline: p = 1/2.
    net = GapNet(WG)
    xs = _as_lists(A[0])

    def p0(mask: list[list[float]]) -> float:
        masked = [
            [[v * mask[i][j] for j, v in enumerate(r)] for i, r in enumerate(ch)] for ch in xs
        ]
        return _softmax0(_gap_logits(masked, WG))

    s = [p0(M0) - 0.5, p0(M1) - 0.5]
    expect = _norm(_grid(lambda i, j: s[0] * M0[i][j] + s[1] * M1[i][j]))
    got = _explain(
        net, A, "group-cam", denoise_quantile=None, baseline=lambda x: torch.zeros_like(x)
    )
    assert torch.allclose(got, expect, atol=1e-6)


def test_groupcam_denoising_and_default_blur_by_loops() -> None:
    # denoise at the 70 % quantile: M_0 = A0/2 = [.5, 1, 1.5, 2] -> threshold 1.55 (linear
    # interpolation), keeps only 2 -> minmax [[0, 0], [0, 1]]; M_1 = 3/4 [0, 1, 1, 0] ->
    # threshold .75, keeps nothing -> constant, skipped. The blur of a 2×2 image: the
    # kernel is cut to 3 taps (reflect needs r < 2); reflected, every pixel averages its
    # row (or column) neighbour with weights (e, 1, e) / (1 + 2e), e = exp(-1/5000).
    net = GapNet(WG)
    e = math.exp(-1 / (2 * 50.0**2))
    xs = _as_lists(A[0])

    def blur1(v: list[float]) -> list[float]:  # length 2, reflect: [v1, v0, v1, v0]
        return [
            (e * v[1] + v[0] + e * v[1]) / (1 + 2 * e),
            (e * v[0] + v[1] + e * v[0]) / (1 + 2 * e),
        ]

    blurred = []
    for ch in xs:
        rows = [blur1(r) for r in ch]
        cols = [blur1([rows[0][j], rows[1][j]]) for j in range(2)]
        blurred.append([[cols[j][i] for j in range(2)] for i in range(2)])
    base_p = _softmax0(_gap_logits(blurred, WG))
    mask = [[0.0, 0.0], [0.0, 1.0]]
    mixed = [
        [
            [xs[c][i][j] * mask[i][j] + blurred[c][i][j] * (1 - mask[i][j]) for j in range(2)]
            for i in range(2)
        ]
        for c in range(2)
    ]
    s0 = _softmax0(_gap_logits(mixed, WG)) - base_p
    assert s0 > 0
    got = _explain(net, A, "group-cam")
    assert torch.allclose(got, torch.tensor(mask), atol=1e-6)
    # and the blur itself
    ref = torch.tensor(blurred)
    assert torch.allclose(gaussian_blur(A)[0], ref, atol=1e-6)


@pytest.mark.parametrize(
    ("h", "w", "k"),
    [
        (5, 6, 5),  # the matrix form
        (4, 4, 11),  # a kernel wider than the image: r cut to 3
        (2050, 3, 5),  # a side above MATRIX_MAX_SIDE: the depthwise convolution
    ],
)
def test_gaussian_blur_by_loops(h: int, w: int, k: int) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 2, h, w, generator=g)
    sigma = 1.3
    r = min(k // 2, h - 1, w - 1)
    taps = [math.exp(-(d * d) / (2 * sigma * sigma)) for d in range(-r, r + 1)]
    taps = [t / sum(taps) for t in taps]

    def reflect(i: int, n: int) -> int:
        return -i if i < 0 else 2 * (n - 1) - i if i >= n else i

    out = torch.zeros_like(x)
    for c in range(2):
        plane = x[0, c].tolist()
        rows = [
            [
                sum(taps[d + r] * plane[i][reflect(j + d, w)] for d in range(-r, r + 1))
                for j in range(w)
            ]
            for i in range(h)
        ]
        for i in range(h):
            for j in range(w):
                out[0, c, i, j] = sum(
                    taps[d + r] * rows[reflect(i + d, h)][j] for d in range(-r, r + 1)
                )
    assert torch.allclose(gaussian_blur(x, k, sigma), out, atol=1e-6)
    # and in float64: the matrix and the kernel follow the input's dtype
    assert torch.allclose(gaussian_blur(x.double(), k, sigma), out.double(), atol=1e-6)


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("ss-cam", {"n_samples": 3}),
        ("is-cam", {"n_samples": 3}),
        ("ablation-cam", {}),
    ],
)
def test_batch_size_does_not_change_the_result(method: str, options: dict, cnn, images) -> None:
    a = sacam.explain(cnn, images, method=method, inputs_per_pass=1, **options)
    b = sacam.explain(cnn, images, method=method, inputs_per_pass=64, **options)
    # float noise of batched convolutions only (ablation's relative drops amplify it)
    assert torch.allclose(a, b, atol=1e-5)


def test_groupcam_batch_size_changes_only_float_rounding(cnn, images) -> None:
    a = sacam.explain_full(
        cnn, images, method="group-cam", groups=5, inputs_per_pass=1, upsample=False
    )
    b = sacam.explain_full(
        cnn, images, method="group-cam", groups=5, inputs_per_pass=64, upsample=False
    )
    (ia,) = a.extras["group-cam"].values()
    (ib,) = b.extras["group-cam"].values()
    assert torch.equal(ia.masks, ib.masks)  # the same gradient pass: identical masks
    groupcam_stable_parts_agree(a, b)


def test_groupcam_batch_equals_single_calls_up_to_float_rounding(cnn, images) -> None:
    batch = sacam.explain_full(cnn, images, method="group-cam", upsample=False)
    for i in range(images.shape[0]):
        one = sacam.explain_full(cnn, images[i : i + 1], method="group-cam", upsample=False)
        (ib,) = batch.extras["group-cam"].values()
        label = batch.layers[0]
        sliced = sacam.Explanation(
            maps=batch.maps[i : i + 1],
            layer_maps={},
            class_idx=None,
            scores=batch.scores[i : i + 1],
            probabilities=None,
            constant=batch.constant[i : i + 1],
            layers=batch.layers,
            extras={
                "group-cam": {
                    label: type(ib)(
                        masks=ib.masks[i : i + 1], gains=ib.gains[i : i + 1], raw=ib.raw[i : i + 1]
                    )
                }
            },
        )
        groupcam_stable_parts_agree(sliced, one)


# ------------------------------------------------------------------ decomposition family


def _top_direction(rows: list[list[float]], center: bool) -> list[float]:
    """Projection of the rows on their first right singular vector, by power iteration."""
    k = len(rows[0])
    if center:
        means = [sum(r[c] for r in rows) / len(rows) for c in range(k)]
        rows = [[r[c] - means[c] for c in range(k)] for r in rows]
    gram = [[sum(r[a] * r[b] for r in rows) for b in range(k)] for a in range(k)]
    v = [1.0] + [0.5] * (k - 1)
    for _ in range(500):
        v = [sum(gram[a][b] * v[b] for b in range(k)) for a in range(k)]
        norm = math.sqrt(sum(c * c for c in v))
        v = [c / norm for c in v]
    return [sum(r[c] * v[c] for c in range(k)) for r in rows]


def _positions(t: torch.Tensor) -> list[list[float]]:
    """(K, 2, 2) -> rows of K values, one per position (row-major)."""
    return [[float(t[k, i, j]) for k in range(t.shape[0])] for i in range(2) for j in range(2)]


def _signed_like(proj: list[float], ref: list[float]) -> list[list[float]]:
    mp, mr = sum(proj) / len(proj), sum(ref) / len(ref)
    corr = sum((p - mp) * (r - mr) for p, r in zip(proj, ref, strict=True))
    sign = -1.0 if corr < 0 else 1.0
    return [[sign * proj[2 * i + j] for j in range(2)] for i in range(2)]


@pytest.mark.parametrize("center", [False, True])
def test_eigencam_by_power_iteration(center: bool) -> None:
    proj = _top_direction(_positions(A[0]), center)
    mean_act = [sum(r) / 2 for r in _positions(A[0])]
    expect = _norm(_signed_like(proj, mean_act))
    got = _explain(GapNet(W), A, "eigen-cam", center=center)
    assert torch.allclose(got, expect, atol=1e-5)
    if center:  # by hand: centred rows (∓1.5, ∓.5), ... -> v1 = (1, 0) -> [[0, 0], [1/3, 1]]
        assert torch.allclose(got, torch.tensor([[0.0, 0.0], [1 / 3, 1.0]]), atol=1e-5)


def test_eigencam_ignores_the_class() -> None:
    a = _explain(GapNet(W), A, "eigen-cam", target=0)
    assert torch.equal(a, _explain(GapNet(W), A, "eigen-cam", target=1))


@pytest.mark.parametrize("center", [True, False])
def test_eigen_gradcam_by_power_iteration(center: bool) -> None:
    prod = V * A[0]
    rows = _positions(prod)
    expect = _norm(_signed_like(_top_direction(rows, center), [sum(r) for r in rows]))
    got = _explain(_flat_net(), A, "eigen-grad-cam", center=center)
    assert torch.allclose(got, expect, atol=1e-5)


def test_eigencam_sign_follows_the_mean_activation() -> None:
    # whatever sign LAPACK returns, the map must rise where the layer is active
    g = torch.Generator().manual_seed(3)
    x = torch.rand(4, 6, 5, 5, generator=g)
    out = sacam.get_method("eigen-cam")(GapNet([[1.0] * 6, [0.5] * 6]), "feat").explain(
        x, 0, upsample=False
    )
    for b in range(4):
        m, ref = out.maps[b].flatten(), x[b].mean(0).flatten()
        assert float(((m - m.mean()) * (ref - ref.mean())).sum()) > 0


def test_eigencam_on_a_signed_layer_is_not_empty() -> None:
    # Both channels are -[[1, 2], [3, 4]]: v_1 = ±(1, 1)/√2, p = ∓√2 (1, 2, 3, 4). The
    # orientation p < 0 correlates positively with the (negative) mean activation, and
    # its ReLU is empty; the energy rule takes p = √2 (1, 2, 3, 4): minmax (0, 1/3, 2/3, 1).
    x = -torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]] * 2])
    out = sacam.get_method("eigen-cam")(GapNet(W), "feat").explain(x, 0, upsample=False)
    assert not out.constant.any()
    assert torch.allclose(out.maps[0], torch.tensor([[0.0, 1 / 3], [2 / 3, 1.0]]), atol=1e-6)


def test_projection_sign_rules_by_hand() -> None:
    from sacam._projection import principal_projection

    # one channel: p = ±x. x = (-3, 1): energy keeps (3, -1) (9 > 1); correlation with a
    # reference (0, 1) keeps (-3, 1); a reference (1, 0) picks (3, -1)
    f = torch.tensor([[[[-3.0, 1.0]]]])
    energy = principal_projection(f, center=False, sign="energy")
    assert torch.allclose(energy.flatten(), torch.tensor([3.0, -1.0]))
    corr = principal_projection(f, center=False, reference=torch.tensor([[[0.0, 1.0]]]))
    assert torch.allclose(corr.flatten(), torch.tensor([-3.0, 1.0]))
    # a projection with one sign is never oriented to show nothing: (-1, -2) correlates
    # positively with the reference (-1, -2) but would be empty after the ReLU
    g = torch.tensor([[[[-1.0, -2.0]]]])
    kept = principal_projection(g, center=False, reference=torch.tensor([[[-1.0, -2.0]]]))
    assert torch.allclose(kept.flatten(), torch.tensor([1.0, 2.0]))


def test_eigencam_library_variant_always_centres() -> None:
    with pytest.raises(MethodError, match="always centres"):
        sacam.build_method(small_cnn(), "eigen-cam", variant="pytorch-grad-cam", center=False)
    cam = sacam.build_method(small_cnn(), "eigen-grad-cam", variant="pytorch-grad-cam")
    assert cam.center is True


def test_numpy_projection_is_get_2d_projection() -> None:
    # pytorch-grad-cam's formula written out with NumPy: centred (hw, K), SVD, rows @ VT[0]
    import numpy as np

    from sacam._projection import numpy_2d_projection

    g = torch.Generator().manual_seed(5)
    f = torch.randn(2, 6, 3, 4, generator=g)
    got = numpy_2d_projection(f.double())
    for b in range(2):
        rows = f[b].numpy().reshape(6, 12).T.astype(np.float32)
        rows = rows - rows.mean(axis=0)
        vt = np.linalg.svd(rows, full_matrices=True)[2]
        expect = torch.from_numpy(rows @ vt[0]).view(3, 4).double()
        assert torch.allclose(got[b], expect, atol=1e-6)
    assert got.dtype == torch.float64


@pytest.mark.parametrize(
    ("method", "options"),
    [("ablation-cam", {}), ("score-cam", {}), ("is-cam", {"n_samples": 2})],
)
def test_top_channels_one_keeps_the_strongest_channel(method: str, options: dict) -> None:
    # channel means 2.5 (A0) and 0.5 (A1): only A0 is scored, with a positive weight
    # (ablation: y = 2.5 + 2 · 0.5 = 3.5, y_0 = 1, w_0 = 5/7), so the map is minmax(A0)
    got = _explain(GapNet(W), A, method, top_channels=1, **options)
    assert torch.allclose(got, torch.tensor([[0.0, 1 / 3], [2 / 3, 1.0]]), atol=1e-6)
    full = _explain(GapNet(W), A, method, **options)
    assert torch.allclose(full, _explain(GapNet(W), A, method, top_channels=2, **options))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("device", ["cpu", torch.device("cpu"), "cuda"])
def test_seeded_noise_is_the_cpu_stream_on_any_device(device, dtype) -> None:  # noqa: ANN001
    from sacam._seeding import cpu_generator, seeded_noise

    if str(device) == "cuda" and not torch.cuda.is_available():
        device = "meta"  # no values there, but the draw must still come from the CPU stream
    expect = torch.randn(3, 5, generator=torch.Generator("cpu").manual_seed(11))
    got = seeded_noise((3, 5), 11, device, dtype)
    assert got.dtype == dtype and got.device.type == torch.device(device).type
    if got.device.type != "meta":
        assert torch.equal(got.cpu(), expect.to(dtype))
    # a generator continues its stream (draws under 16 values go value by value, so three
    # draws of 5 are one draw of 15)
    gen = cpu_generator(11)
    halves = [seeded_noise((5,), gen, "cpu") for _ in range(3)]
    assert torch.equal(torch.cat(halves).view(3, 5), expect)


# ------------------------------------------------------------------------- random


def test_random_map_is_the_seeded_draw() -> None:
    out = sacam.explain(
        GapNet(W), A.repeat(3, 1, 1, 1), method="random", layer="feat", seed=5, upsample=False
    )
    draw = torch.rand((2, 2), generator=torch.Generator().manual_seed(5))
    expect = (draw - draw.min()) / (draw.max() - draw.min())
    for b in range(3):  # the same map for every image of the batch
        assert torch.allclose(out[b], expect, atol=1e-6)


def test_random_is_reproducible_and_seed_dependent(cnn, images) -> None:
    a = sacam.explain(cnn, images, method="random", seed=1)
    assert torch.equal(a, sacam.explain(cnn, images, method="random", seed=1))
    assert not torch.allclose(a, sacam.explain(cnn, images, method="random", seed=2), atol=1e-3)
    assert torch.allclose(a, sacam.explain(cnn, images[:1], method="random", seed=1).expand_as(a))


def test_random_weights_variant_by_hand() -> None:
    w = 2 * torch.rand(2, generator=torch.Generator().manual_seed(0)) - 1
    expect = _norm(
        _grid(lambda i, j: float(w[0]) * float(A[0, 0, i, j]) + float(w[1]) * float(A[0, 1, i, j]))
    )
    got = _explain(GapNet(W), A, "random", variant="weights")
    assert torch.allclose(got, expect, atol=1e-6)


# -------------------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("method", "options", "message"),
    [
        ("xgrad-cam", {"variant": "x"}, "variant"),
        ("smooth-grad-cam++", {"n_samples": 0}, "n_samples"),
        ("smooth-grad-cam++", {"seed": 1.5}, "seed"),
        ("ss-cam", {"std": -1.0}, "std"),
        ("is-cam", {"variant": "softmax"}, "variant"),
        ("ablation-cam", {"inputs_per_pass": 0}, "inputs_per_pass"),
        ("group-cam", {"denoise_quantile": 2.0}, "denoise_quantile"),
        ("group-cam", {"blur_kernel": 4}, "blur_kernel"),
        ("eigen-cam", {"center": "yes"}, "center"),
        ("random", {"variant": "pixels"}, "variant"),
    ],
)
def test_bad_options_are_refused(method: str, options: dict, message: str) -> None:
    with pytest.raises(MethodError, match=message):
        sacam.build_method(small_cnn(), method, **options)


def test_gaussian_blur_cache_survives_meta_and_inference_mode_first_calls() -> None:
    from sacam.filters import _blur_matrix, _cpu_matrix

    _blur_matrix.cache_clear()
    _cpu_matrix.cache_clear()
    with torch.device("meta"):  # a shape check first must not leave a meta matrix behind
        assert gaussian_blur(torch.empty(1, 1, 12, 13), 5, 1.0).device.type == "meta"
    x = torch.rand(1, 1, 12, 13, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():  # nor an inference tensor that autograd cannot save
        first = gaussian_blur(x, 5, 1.0)
    y = x.clone().requires_grad_(True)
    out = gaussian_blur(y, 5, 1.0)
    torch.testing.assert_close(out.detach(), first)
    out.sum().backward()  # d(sum)/d(pixel p) = p's total weight over the outputs
    eye = torch.eye(12 * 13, dtype=torch.float64).view(-1, 1, 12, 13)
    operator = gaussian_blur(eye, 5, 1.0).view(12 * 13, -1)  # row p: blur of pixel p
    torch.testing.assert_close(y.grad.view(-1), operator.sum(1))
