"""Perturbation methods by hand: SS-CAM, IS-CAM, Ablation-CAM, Group-CAM (with its blur),
Recipro-CAM and FD-CAM; batch sizes and ``top_channels``.

Masked or ablated scores of the tiny hand-weighted models are written down in the
comments or computed by plain loops, never by the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sacam
from sacam._speed.tuner import _TUNERS
from sacam.errors import MethodError
from sacam.evaluation.faithfulness import deletion
from sacam.filters import gaussian_blur
from tests.support.groupcam_float import groupcam_stable_parts_agree
from tests.support.hand import A, W, explain_feat, grid, hook_count, norm
from tests.support.nets import GapNet, small_cnn


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
    expect = norm(grid(lambda i, j: w[0] * float(A[0, 0, i, j]) + w[1] * float(A[0, 1, i, j])))
    got = explain_feat(GapNet(W), A, "ss-cam", n_samples=n, std=std, seed=seed)
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
    expect = norm(grid(lambda i, j: w0 * float(A[0, 0, i, j]) + (1 - w0) * float(A[0, 1, i, j])))
    got = explain_feat(GapNet(W), A, "ss-cam", n_samples=n, std=std, seed=seed, variant="torchcam")
    assert torch.allclose(got, expect, atol=1e-6)


def test_sscam_without_noise_is_scorecam() -> None:
    a = explain_feat(GapNet(W), A, "ss-cam", n_samples=2, std=0.0)
    assert torch.allclose(a, explain_feat(GapNet(W), A, "score-cam"), atol=1e-6)


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
    expect = norm(grid(lambda i, j: w[0] * float(A[0, 0, i, j]) + w[1] * float(A[0, 1, i, j])))
    got = explain_feat(GapNet(W), A, "is-cam", n_samples=n)
    assert torch.allclose(got, expect, atol=1e-6)


def test_iscam_torchcam_variant_by_hand() -> None:
    # coefficients accumulate: step i scales the mask by (1 + ... + i)/N; softmax across
    # channels of the mean class logit
    n = 3
    coeff = [i * (i + 1) / 2 / n for i in range(1, n + 1)]  # 1/3, 1, 2
    mean_logit = [sum(c * l0 for c in coeff) / n for l0 in (13 / 6, 9 / 4)]
    w0 = _softmax0(mean_logit)
    expect = norm(grid(lambda i, j: w0 * float(A[0, 0, i, j]) + (1 - w0) * float(A[0, 1, i, j])))
    got = explain_feat(GapNet(W), A, "is-cam", n_samples=n, variant="torchcam")
    assert torch.allclose(got, expect, atol=1e-6)


def test_ablationcam_by_hand() -> None:
    # class 0: y = mean(A0) + 2 mean(A1) = 2.5 + 1 = 3.5; zeroing A0 leaves 1, zeroing
    # A1 leaves 2.5: w = (2.5/3.5, 1/3.5) ∝ (5, 2); 5 A0 + 2 A1 = [[5, 12], [17, 20]]
    m0 = explain_feat(GapNet(W), A, "ablation-cam", target=0)
    assert torch.allclose(m0, torch.tensor([[0.0, 7 / 15], [12 / 15, 1.0]]), atol=1e-6)
    # class 1: y = 7.5 - 0.5 = 7; zeroing A0 leaves -0.5, zeroing A1 leaves 7.5:
    # w = (7.5/7, -0.5/7); 7.5 A0 - 0.5 A1 = [[7.5, 14.5], [22, 30]]
    m1 = explain_feat(GapNet(W), A, "ablation-cam", target=1)
    assert torch.allclose(m1, torch.tensor([[0.0, 7 / 22.5], [14.5 / 22.5, 1.0]]), atol=1e-6)


def test_ablationcam_pytorch_grad_cam_fill() -> None:
    x = A + 1.0  # the minimum activation is 1, not 0: ablated channels become 1 - 1e7
    means = [2.5 + 1, 0.5 + 1]
    y = means[0] + 2 * means[1]
    fill = 1.0 - 1e7
    y_k = [fill + 2 * means[1], means[0] + 2 * fill]
    w = [(y - yk) / y for yk in y_k]
    expect = norm(grid(lambda i, j: w[0] * float(x[0, 0, i, j]) + w[1] * float(x[0, 1, i, j])))
    got = explain_feat(GapNet(W), x, "ablation-cam", variant="pytorch-grad-cam")
    assert torch.allclose(got, expect, atol=1e-5)
    # the paper zeroes: w = ((y - 2·1.5)/y, (y - 3.5)/y) = (3.5/6.5, 3/6.5)
    paper = explain_feat(GapNet(W), x, "ablation-cam")
    ref = norm(grid(lambda i, j: 3.5 * float(x[0, 0, i, j]) + 3.0 * float(x[0, 1, i, j])))
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
    assert hook_count(net) == 0
    sacam.explain(net, A, method="ablation-cam", layer="feat", targets=0)
    assert hook_count(net) == 0


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
    expect = norm(grid(lambda i, j: s[0] * M0[i][j] + s[1] * M1[i][j]))
    got = explain_feat(
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
    got = explain_feat(net, A, "group-cam")
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


@pytest.mark.parametrize(
    ("method", "options"),
    [("ablation-cam", {}), ("score-cam", {}), ("is-cam", {"n_samples": 2})],
)
def test_top_channels_one_keeps_the_strongest_channel(method: str, options: dict) -> None:
    # channel means 2.5 (A0) and 0.5 (A1): only A0 is scored, with a positive weight
    # (ablation: y = 2.5 + 2 · 0.5 = 3.5, y_0 = 1, w_0 = 5/7), so the map is minmax(A0)
    got = explain_feat(GapNet(W), A, method, top_channels=1, **options)
    assert torch.allclose(got, torch.tensor([[0.0, 1 / 3], [2 / 3, 1.0]]), atol=1e-6)
    full = explain_feat(GapNet(W), A, method, **options)
    assert torch.allclose(full, explain_feat(GapNet(W), A, method, top_channels=2, **options))


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


def _p0(l0: float, l1: float) -> float:
    """Softmax probability of class 0 of two logits."""
    return 1.0 / (1.0 + math.exp(l1 - l0))


def test_recipro_cam_point_masks_by_hand() -> None:
    # GapNet on A: the masked map keeping position p pools to A[:, p] / 4, so the logits
    # are W A[:, p] / 4 with W = [[1, 2], [3, -1]]
    W = [[1.0, 2.0], [3.0, -1.0]]
    probs = []
    for a0, a1 in [(1, 0), (2, 1), (3, 1), (4, 0)]:
        probs.append(_p0((a0 + 2 * a1) / 4, (3 * a0 - a1) / 4))
    p = torch.tensor(probs).view(1, 2, 2)
    expected = (p - p.min()) / (p.max() - p.min())
    m = sacam.explain(GapNet(W), A, method="recipro-cam", layer="feat", targets=0, upsample=False)
    assert torch.allclose(m, expected, atol=1e-6)


def test_recipro_cam_gaussian_spreads_each_vector_over_its_neighbours() -> None:
    # 3×3 layer: the 3×3 kernel sums to 1 inside, 3/4 on an edge, 9/16 in a corner, so the
    # pooled vector of position p is A[:, p] · s_p / 9
    g = torch.Generator().manual_seed(5)
    acts = torch.rand(1, 2, 3, 3, generator=g)
    W = [[1.0, -2.0], [-1.0, 3.0]]
    s = torch.tensor([[9 / 16, 3 / 4, 9 / 16], [3 / 4, 1.0, 3 / 4], [9 / 16, 3 / 4, 9 / 16]])
    probs = torch.zeros(3, 3)
    for i in range(3):
        for j in range(3):
            a0, a1 = (float(acts[0, k, i, j] * s[i, j] / 9) for k in range(2))
            probs[i, j] = _p0(a0 - 2 * a1, -a0 + 3 * a1)
    expected = ((probs - probs.min()) / (probs.max() - probs.min()))[None]
    m = sacam.explain(
        GapNet(W),
        acts,
        method="recipro-cam",
        layer="feat",
        targets=0,
        upsample=False,
        kernel="gaussian",
    )
    assert torch.allclose(m, expected, atol=1e-6)


def test_recipro_cam_rejects_bad_options() -> None:
    with pytest.raises(MethodError, match="kernel"):
        sacam.build_method(GapNet([[1.0, 1.0]]), "recipro-cam", kernel="box")
    with pytest.raises(MethodError, match="reshape_transform"):
        sacam.build_method(GapNet([[1.0, 1.0]]), "recipro-cam", reshape_transform=lambda t: t)


def _minmax(t: torch.Tensor) -> torch.Tensor:
    return (t - t.min()) / (t.max() - t.min())


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


@pytest.mark.parametrize("method", ["score-cam", "ss-cam", "is-cam", "group-cam"])
def test_the_tuned_first_call_gives_the_bits_of_every_later_call(method: str) -> None:
    """Tuning times the call's own passes, then settles: no map depends on timing."""
    net = small_cnn(seed=3)  # a new model: its first call tunes from nothing
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    first = sacam.explain(net, images, method=method)
    assert all(t.settled for t in _TUNERS[net].values())
    again = [sacam.explain(net, images, method=method) for _ in range(2)]
    assert all(torch.equal(first, m) for m in again)


def test_the_tuned_first_curve_gives_the_bits_of_every_later_curve() -> None:
    net = small_cnn(seed=5).eval()
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    maps = torch.rand(2, 16, 16, generator=torch.Generator().manual_seed(7))
    first = deletion(net, images, maps, steps=8)
    again = deletion(net, images, maps, steps=8)
    assert torch.equal(first.curves, again.curves) and torch.equal(first.auc, again.auc)
