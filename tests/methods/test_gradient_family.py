"""Grad-CAM and its relatives by hand: channel weights from gradients (Grad-CAM, Grad-CAM++,
XGrad-CAM, Smooth Grad-CAM++, Shapley-CAM), element-wise gradient maps (Layer-CAM,
HiRes-CAM, Grad-CAM element-wise) and CAM, on tiny hand-weighted models.

Most models here have the input itself as target layer (``feat`` is an identity), so the
activations are the input and the gradients are set by the weights. Expected values are
worked out in the comments or computed by plain loops, never by the code under test.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sacam
from sacam.explanation import normalize_maps
from tests.support.calls import layer_data
from tests.support.hand import A, W, explain_feat, grid, hook_count, norm
from tests.support.nets import FlatNet, GapNet


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


# a position-dependent gradient for FlatNet (y_0 = Σ V ⊙ A)
V = torch.tensor([[[0.5, -1.0], [2.0, 1.0]], [[1.5, 0.25], [-0.5, 3.0]]])


# signed activations, to tell the element-wise methods apart
S = torch.tensor([[[[1.0, -2.0], [3.0, 0.5]], [[-1.0, 2.0], [0.5, -3.0]]]])


def _flat_net() -> FlatNet:
    return FlatNet(torch.stack([V.flatten(), -V.flatten()]))


def test_xgradcam_on_gap_net_equals_gradcam() -> None:
    # constant gradient g_k: w_k = Σ A g / Σ A = g_k, so the map is Grad-CAM's:
    # class 0: A0/4 + A1/2 ∝ [[1, 4], [5, 4]] -> [[0, .75], [1, .75]]
    m = explain_feat(GapNet(W), A, "xgrad-cam")
    assert torch.allclose(m, torch.tensor([[0.0, 0.75], [1.0, 0.75]]), atol=1e-6)


def test_xgradcam_with_varying_gradient() -> None:
    a = A[0]
    w = [
        sum(float(a[k, i, j] * V[k, i, j]) for i in range(2) for j in range(2)) / float(a[k].sum())
        for k in range(2)
    ]
    expect = norm(grid(lambda i, j: sum(w[k] * float(a[k, i, j]) for k in range(2))))
    assert torch.allclose(explain_feat(_flat_net(), A, "xgrad-cam"), expect, atol=1e-6)


def test_xgradcam_zero_sum_channel_and_library_variant() -> None:
    x = A.clone()
    x[0, 1] = torch.tensor([[1.0, -1.0], [0.0, 0.0]])  # channel 1 sums to 0
    # paper: channel 1 gets weight 0 -> map = w0 A0 -> minmax(A0)
    m = explain_feat(_flat_net(), x, "xgrad-cam")
    assert torch.allclose(m, torch.tensor([[0.0, 1 / 3], [2 / 3, 1.0]]), atol=1e-6)
    # pytorch-grad-cam: w1 = Σ A g / (0 + 1e-7) = (1.5 - 0.25) / 1e-7 dominates
    num1 = float(V[1, 0, 0] * 1.0 + V[1, 0, 1] * -1.0)  # 1.5 - 0.25 = 1.25
    w0 = float((A[0, 0] * V[0]).sum() / A[0, 0].sum())
    w1 = num1 / (0.0 + 1e-7)
    expect = norm(grid(lambda i, j: w0 * float(x[0, 0, i, j]) + w1 * float(x[0, 1, i, j])))
    got = explain_feat(_flat_net(), x, "xgrad-cam", variant="pytorch-grad-cam")
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
    expect = norm(
        grid(lambda i, j: sum(term(float(V[k, i, j]), float(S[0, k, i, j])) for k in range(2)))
    )
    assert torch.allclose(explain_feat(_flat_net(), S, method), expect, atol=1e-6)


def test_elementwise_methods_differ_on_signed_activations() -> None:
    maps = [
        explain_feat(_flat_net(), S, m) for m in ("layer-cam", "hires-cam", "grad-cam-elementwise")
    ]
    assert not torch.allclose(maps[0], maps[1], atol=1e-3)
    assert not torch.allclose(maps[1], maps[2], atol=1e-3)


class SquareNet(nn.Module):
    """y_c = ½ Σ V_c ⊙ feat(x)²: the gradient at feat is V_c ⊙ x, so it follows the noise."""

    def __init__(self, v: torch.Tensor) -> None:
        super().__init__()
        self.feat = nn.Identity()
        self.register_buffer("v", torch.stack([v, -v]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sq = self.feat(x) ** 2
        return 0.5 * (sq[:, None] * self.v[None]).flatten(2).sum(-1)


def _smooth_reference(x: torch.Tensor, n: int, spread: float, seed: int, variant: str):
    """Loop-by-loop Smooth Grad-CAM++ on SquareNet for class 0 (g = V ⊙ noisy x)."""
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
    return norm(grid(lambda i, j: sum(weights[k] * float(a[k, i, j]) for k in range(K))))


@pytest.mark.parametrize("variant", ["paper", "mean-weights", "torchcam"])
def test_smooth_gradcampp_by_loops(variant: str) -> None:
    x = A + 0.5
    got = explain_feat(
        SquareNet(V), x, "smooth-grad-cam++", n_samples=3, std_spread=0.2, seed=4, variant=variant
    )
    assert torch.allclose(got, _smooth_reference(x, 3, 0.2, 4, variant), atol=1e-5)


def test_smooth_gradcampp_is_gradcampp_when_the_gradient_ignores_the_input() -> None:
    # FlatNet is linear: every noisy copy has the gradient V, so the averages are V's powers
    plain = explain_feat(_flat_net(), A, "grad-cam++")
    smooth = explain_feat(_flat_net(), A, "smooth-grad-cam++", n_samples=5, std_spread=0.5)
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
    assert all(p.grad is None for p in cnn.parameters()) and hook_count(cnn) == 0


def test_smooth_gradcampp_absolute_std() -> None:
    # std=0: every copy is the clean image, so it is Grad-CAM++ on SquareNet
    x = A + 0.5
    smooth = explain_feat(SquareNet(V), x, "smooth-grad-cam++", n_samples=2, std=0.0)
    assert torch.allclose(smooth, explain_feat(SquareNet(V), x, "grad-cam++"), atol=1e-6)


class CurvedNet(nn.Module):
    """y_0 = ā_0 + ā_1², y_1 = ā_1 (ā_k the channel means): a curved score."""

    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.feat(x).mean(dim=(2, 3))
        return torch.stack([p[:, 0] + p[:, 1] ** 2, p[:, 1]], dim=1)


def test_shapley_cam_subtracts_half_the_hessian_vector_product() -> None:
    # y_0 = ā_0 + ā_1², hw = 4, ā_1 = 1/2:
    # g^0 = 1/4, g^1 = 2 ā_1 / 4 = 1/4 everywhere; H couples only channel 1:
    # (H A)^1_ij = Σ_i'j' 2/16 · A^1_i'j' = 2 ā_1 / 4 = 1/4, (H A)^0 = 0
    # w = (1/4 - 0, 1/4 - 1/8) = (1/4, 1/8): map = A0/4 + A1/8 = [[.25, .625], [.875, 1]]
    m = sacam.explain(CurvedNet(), A, method="shapley-cam", layer="feat", targets=0, upsample=False)
    assert torch.allclose(m, torch.tensor([[[0.0, 0.5], [5 / 6, 1.0]]]), atol=1e-6)
    # Grad-CAM's weights are (1/4, 1/4): (A0 + A1)/4 -> [[0, 2/3], [1, 1]]
    gc = sacam.explain(CurvedNet(), A, method="grad-cam", layer="feat", targets=0, upsample=False)
    assert torch.allclose(gc, torch.tensor([[[0.0, 2 / 3], [1.0, 1.0]]]), atol=1e-6)


def test_shapley_cam_hvp_by_hand() -> None:
    cam = sacam.get_method("shapley-cam")(CurvedNet(), "feat")
    _, layers = layer_data(cam, A, 0)
    g, hvp = layers[0].gradients, layers[0].hvp
    assert g is not None and hvp is not None
    assert torch.allclose(g, torch.full_like(g, 0.25))
    assert torch.allclose(hvp[0, 0], torch.zeros(2, 2)) and torch.allclose(
        hvp[0, 1], torch.full((2, 2), 0.25)
    )


def _softplus_net(depth: int = 2) -> nn.Module:
    """Convolutions with softplus (a smooth tail: H A is not 0), pooling, a linear layer."""
    torch.manual_seed(0)
    widths, layers = (3, 6, 5, 4), []
    for i in range(depth):
        layers += [nn.Conv2d(widths[i], widths[i + 1], 3 if i < 2 else 1), nn.Softplus()]
    head = nn.Linear(widths[depth], 4 if depth == 2 else 3)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head).eval()


def _shapley_by_hand(net: nn.Module, x: torch.Tensor, k: int) -> list[torch.Tensor]:
    """Raw maps at ``net[:k]``'s output: Shapley-CAM's (weights g - H A / 2), Grad-CAM's (g)."""
    a = net[:k](x).detach().requires_grad_(True)
    y = net[k:](a)
    (g,) = torch.autograd.grad(y.gather(1, y.argmax(1)[:, None]).sum(), a, create_graph=True)
    (h,) = torch.autograd.grad(g, a, grad_outputs=a.detach())
    return [
        torch.relu((w.mean((2, 3))[:, :, None, None] * a).sum(1)).detach() for w in (g - h / 2, g)
    ]


def test_shapley_cam_takes_hvp_in_grad_cams_one_pass() -> None:
    # H A comes from the engine's own backward (create_graph), not from another forward
    net, x = _softplus_net(), torch.rand(2, 3, 20, 20)
    calls = []
    handle = net.register_forward_hook(lambda *_: calls.append(1))
    try:
        counts = {}
        sacam.explain(net, x, method="grad-cam", layer="1")  # the layer probe, once per model
        for name in ("grad-cam", "shapley-cam"):
            calls.clear()
            sacam.explain(net, x, method=name, layer="1")
            counts[name] = len(calls)
    finally:
        handle.remove()
    assert counts["shapley-cam"] == counts["grad-cam"]
    # and the map is the hand-computed second-order one
    raw = _shapley_by_hand(net, x, 2)[0]
    got = sacam.explain(net, x, method="shapley-cam", layer="1", upsample=False)
    torch.testing.assert_close(got, normalize_maps(raw)[0], rtol=0, atol=1e-5)


def test_shapley_cam_on_two_layers_has_each_layers_own_second_order_map() -> None:
    # both layers have a smooth network after them; each gets its own H A
    net = _softplus_net(depth=3)
    x = torch.rand(2, 3, 20, 20)
    ex = sacam.get_method("shapley-cam")(net, ["1", "3"]).explain(x, upsample=False)
    for k, name in ((2, "1"), (4, "3")):
        # upsample=False: the layer maps are resized to the largest layer's grid, 18 x 18
        raw, first = (
            normalize_maps(F.interpolate(m[:, None], size=(18, 18), mode="bilinear")[:, 0])[0]
            for m in _shapley_by_hand(net, x, k)
        )
        assert (raw - first).abs().max() > 1e-3  # the second-order term changes the map
        torch.testing.assert_close(ex.layer_maps[name], raw, rtol=0, atol=1e-5)


def test_sa_cam_on_shapley_cam_with_gamma_0_is_shapley_cam() -> None:
    # the base's H A reaches SA-CAM's layer data (second_order follows the base)
    net, x = _softplus_net(), torch.rand(2, 3, 20, 20)
    sa = sacam.explain(net, x, method="sa-cam", layer="1", base="shapley-cam", gamma=0.0)
    torch.testing.assert_close(sa, sacam.explain(net, x, method="shapley-cam", layer="1"))


def test_shapley_cam_is_grad_cam_on_a_piecewise_linear_tail(cnn, images) -> None:
    # ReLU, batch norm (eval), pooling and linear layers: the Hessian is 0 almost everywhere
    a = sacam.explain(cnn, images, method="shapley-cam", layer="0")
    b = sacam.explain(cnn, images, method="grad-cam", layer="0")
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_gradcampp_pytorch_grad_cam_variant_adds_its_epsilon_by_hand() -> None:
    from tests.support.nets import GapNet

    a = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[2.0, 0.0], [0.0, 2.0]]]])
    net = GapNet([[4e-3, 8e-3]])  # g = w / 4: 1e-3 and 2e-3, g² of the order of ε = 1e-6

    def expected(eps: float) -> torch.Tensor:
        ws = []
        for g, total in ((1e-3, 10.0), (2e-3, 4.0)):
            alpha = g * g / (2 * g * g + g**3 * total + eps)
            ws.append(4 * alpha * g)  # Σ_ij α ReLU(g), the same at the 4 positions
        raw = ws[0] * a[0, 0].double() + ws[1] * a[0, 1].double()
        return ((raw - raw.min()) / (raw.max() - raw.min())).float()

    paper = sacam.explain(net, a, method="grad-cam++", layer="feat", upsample=False)
    pgc = sacam.explain(
        net, a, method="grad-cam++", layer="feat", upsample=False, variant="pytorch-grad-cam"
    )
    assert torch.allclose(paper[0], expected(0.0), atol=1e-5)
    assert torch.allclose(pgc[0], expected(1e-6), atol=1e-5)
    assert (paper - pgc).abs().max() > 1e-2
