"""Hand-computed values of CAM, Grad-CAM and Grad-CAM++ on tiny hand-weighted models."""

from __future__ import annotations

import pytest
import torch

import sacam
from sacam.core import normalize_maps
from tests.support.nets import FlatNet, GapNet

# Two 2×2 channels: A0 = [[1, 2], [3, 4]], A1 = [[0, 1], [1, 0]].
A = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [1.0, 0.0]]]])
W = [[1.0, 2.0], [3.0, -1.0]]


@pytest.mark.parametrize("method", ["cam", "grad-cam"])
def test_cam_and_gradcam_on_gap_net(method: str) -> None:
    net = GapNet(W)
    # class 0: 1*A0 + 2*A1 = [[1, 4], [5, 4]] -> (m - 1) / 4
    m0 = sacam.explain(net, A, method=method, layer="feat", targets=0, upsample=False)
    assert torch.allclose(m0, torch.tensor([[[0.0, 0.75], [1.0, 0.75]]]), atol=1e-6)
    # class 1: 3*A0 - A1 = [[3, 5], [8, 12]] -> (m - 3) / 9
    m1 = sacam.explain(net, A, method=method, layer="feat", targets=1, upsample=False)
    assert torch.allclose(m1, torch.tensor([[[0.0, 2 / 9], [5 / 9, 1.0]]]), atol=1e-6)


def test_gradcam_weights_are_mean_gradients() -> None:
    net = GapNet(W)
    cam = sacam.get_method("grad-cam")(net, "feat")
    out = cam.explain(A, 0, upsample=False)
    # gradients of y0 = mean(A0) + 2 mean(A1) are 1/4 and 2/4 everywhere
    assert out.class_idx.tolist() == [0]
    assert out.scores.tolist() == pytest.approx([2.5 + 2 * 0.5])


def test_gradcampp_paper_on_gap_net() -> None:
    # g0 = 1/4, g1 = 1/2 (constant); sum A0 = 10, sum A1 = 2
    # alpha0 = g0^2 / (2 g0^2 + g0^3 * 10) = 1 / (2 + 2.5) = 2/9; alpha1 = 1 / (2 + 1) = 1/3
    # w0 = 4 * 2/9 * 1/4 = 2/9; w1 = 4 * 1/3 * 1/2 = 2/3
    # map = 2/9 A0 + 2/3 A1 = [[2/9, 10/9], [12/9, 8/9]] -> [[0, .8], [1, .6]]
    m = sacam.explain(GapNet(W), A, method="grad-cam++", layer="feat", targets=0, upsample=False)
    assert torch.allclose(m, torch.tensor([[[0.0, 0.8], [1.0, 0.6]]]), atol=1e-6)


def _gradcampp_reference(V: torch.Tensor, acts: torch.Tensor, variant: str) -> torch.Tensor:
    """Loop-by-loop Grad-CAM++ for y = sum_kij V[k,i,j] A[k,i,j] (so g = V)."""
    K, h, w = acts.shape
    raw = torch.zeros(h, w, dtype=torch.float64)
    for k in range(K):
        s_a = sum(float(acts[k, a, b]) for a in range(h) for b in range(w))
        s_ga = sum(
            float(V[k, a, b]) ** 3 * float(acts[k, a, b]) for a in range(h) for b in range(w)
        )
        wk = 0.0
        for i in range(h):
            for j in range(w):
                g = float(V[k, i, j])
                den = 2 * g * g + (g**3 * s_a if variant == "paper" else s_ga)
                alpha = g * g / den if g != 0 and den != 0 else 0.0
                wk += alpha * max(g, 0.0)
        raw += wk * acts[k].double()
    return normalize_maps(raw.clamp_min(0)[None])[0][0].float()


@pytest.mark.parametrize("variant", ["paper", "torchcam"])
def test_gradcampp_variants_with_varying_gradient(variant: str) -> None:
    V = torch.tensor([[[0.5, -1.0], [2.0, 1.0]], [[1.5, 0.25], [-0.5, 3.0]]])
    net = FlatNet(torch.stack([V.flatten(), -V.flatten()]))
    m = sacam.explain(
        net, A, method="grad-cam++", layer="feat", targets=0, upsample=False, variant=variant
    )
    assert torch.allclose(m[0], _gradcampp_reference(V, A[0], variant), atol=1e-5)


def test_gradcampp_variants_differ_when_gradients_vary() -> None:
    V = torch.tensor([[[0.5, -1.0], [2.0, 1.0]], [[1.5, 0.25], [-0.5, 3.0]]])
    net = FlatNet(torch.stack([V.flatten(), -V.flatten()]))
    a = sacam.explain(net, A, method="grad-cam++", layer="feat", targets=0, upsample=False)
    b = sacam.explain(
        net, A, method="grad-cam++", layer="feat", targets=0, upsample=False, variant="torchcam"
    )
    assert not torch.allclose(a, b, atol=1e-3)


def test_gradcam_equals_cam_on_gap_architecture(cnn, images) -> None:
    a = sacam.explain(cnn, images, method="cam", layer="4")
    b = sacam.explain(cnn, images, method="grad-cam", layer="4")
    assert torch.allclose(a, b, atol=1e-5)


def test_upsampling_is_bilinear_then_normalised() -> None:
    x = torch.nn.functional.interpolate(A, scale_factor=4, mode="nearest")
    net2 = torch.nn.Sequential()
    net2.add_module("feat", torch.nn.AvgPool2d(4))
    net2.add_module("pool", torch.nn.AdaptiveAvgPool2d(1))
    net2.add_module("flat", torch.nn.Flatten())
    fc = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor(W))
    net2.add_module("fc", fc)
    up = sacam.explain(net2, x, method="grad-cam", layer="feat", targets=0)
    raw = torch.nn.functional.interpolate(
        (A[:, 0] + 2 * A[:, 1])[:, None], size=(8, 8), mode="bilinear", align_corners=False
    )[:, 0]
    assert torch.allclose(up, normalize_maps(raw)[0], atol=1e-6)
