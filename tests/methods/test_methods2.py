"""Methods, round 2 (issue 11): formula-level checks on tiny hand-weighted models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sacam
from sacam.core import normalize_maps
from sacam.errors import MethodError
from tests.support.calls import layer_data
from tests.support.nets import F64_ATOL, GapNet, in_double

# ----------------------------------------------------------------------------- FEM

# Two 3×3 channels: one central outlier, and a bright bottom row.
FEM_A = torch.tensor(
    [
        [
            [[0.0, 0.0, 0.0], [0.0, 9.0, 0.0], [0.0, 0.0, 0.0]],
            [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [3.0, 3.0, 3.0]],
        ]
    ]
)


def test_fem_k_sigma_weights_by_hand() -> None:
    net = GapNet([[1.0, 1.0]])
    # A0: μ = 1, σ = √8 ≈ 2.83; A1: μ = 5/3, σ = √(8/9) ≈ 0.94 (population std).
    # k = 2: thresholds 6.66 and 3.55 -> only the 9 is above: w = (1/9, 0) -> map = A0 / 9
    m = sacam.explain(net, FEM_A, method="fem", layer="feat", upsample=False)
    expected = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]])
    assert torch.allclose(m, expected, atol=1e-6)
    # k = 0.5: thresholds 2.41 and 2.14 -> w = (1/9, 3/9);
    # raw = [[1/3]*3, [1/3, 4/3, 1/3], [1]*3] -> (raw - 1/3) / 1
    m = sacam.explain(net, FEM_A, method="fem", layer="feat", upsample=False, k=0.5)
    expected = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [2 / 3, 2 / 3, 2 / 3]]])
    assert torch.allclose(m, expected, atol=1e-6)


def test_fem_weights_ignore_the_class() -> None:
    net = GapNet([[1.0, 1.0], [-3.0, 2.0]])
    a = sacam.explain(net, FEM_A, method="fem", layer="feat", targets=0)
    b = sacam.explain(net, FEM_A, method="fem", layer="feat", targets=1)
    assert torch.equal(a, b)


@pytest.mark.parametrize("k", [float("nan"), "2", True])
def test_fem_rejects_bad_k(k: object) -> None:
    with pytest.raises(MethodError, match="k must be a finite number"):
        sacam.build_method(GapNet([[1.0, 1.0]]), "fem", k=k)


# ------------------------------------------------------------------------ KPCA-CAM


def _kernel_np(x: np.ndarray, kernel: str, gamma: float | None) -> np.ndarray:
    """Pairwise kernel, element by element (scikit-learn's definitions, γ = 1/d)."""
    n, d = x.shape
    g = 1.0 / d if gamma is None else gamma
    out = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            dot = float(np.dot(x[i], x[j]))
            if kernel == "linear":
                out[i, j] = dot
            elif kernel == "poly":
                out[i, j] = (g * dot + 1.0) ** 3
            elif kernel == "sigmoid":
                out[i, j] = np.tanh(g * dot + 1.0)
            elif kernel == "rbf":
                out[i, j] = np.exp(-g * float(np.sum((x[i] - x[j]) ** 2)))
            else:
                ni, nj = np.linalg.norm(x[i]), np.linalg.norm(x[j])
                out[i, j] = dot / (ni * nj) if ni > 0 and nj > 0 else 0.0
    return out


def _kpca_np(acts: np.ndarray, kernel: str, gamma: float | None, sign_rule: str) -> np.ndarray:
    """Kernel PCA written independently: H K H with H = I - 11ᵀ/n, numpy's eigh."""
    k_ch, h, w = acts.shape
    x = acts.reshape(k_ch, -1).T
    x = x - x.mean(axis=0)
    n = x.shape[0]
    hmat = np.eye(n) - np.ones((n, n)) / n
    kc = hmat @ _kernel_np(x, kernel, gamma) @ hmat
    vals, vecs = np.linalg.eigh(kc)
    proj = vecs[:, -1] * np.sqrt(max(vals[-1], 0.0))
    if sign_rule == "sklearn":
        sign = np.sign(proj[np.argmax(np.abs(proj))])
    else:
        sign = np.sign(np.corrcoef(proj, acts.mean(axis=0).reshape(-1))[0, 1])
    proj = np.maximum(sign * proj, 0.0)
    return ((proj - proj.min()) / (proj.max() - proj.min())).reshape(h, w)


@pytest.mark.parametrize("kernel", ["rbf", "linear", "poly", "sigmoid", "cosine"])
@pytest.mark.parametrize("sign", ["sklearn", "activation"])
def test_kpca_cam_matches_a_numpy_kernel_pca(kernel: str, sign: str) -> None:
    g = torch.Generator().manual_seed(3)
    acts = torch.rand(2, 3, 4, 5, generator=g, dtype=torch.float64) * 2
    net = GapNet([[1.0, 0.5, -1.0]]).double()
    gamma = 0.7 if kernel in ("rbf", "sigmoid") else None
    maps = sacam.explain(
        net,
        acts,
        method="kpca-cam",
        layer="feat",
        upsample=False,
        kernel=kernel,
        gamma=gamma,
        sign=sign,
    )
    for b in range(2):
        ref = _kpca_np(acts[b].numpy(), kernel, gamma, sign)
        np.testing.assert_allclose(maps[b].numpy(), ref, rtol=0, atol=1e-6)  # float32 maps


def test_kpca_cam_linear_kernel_is_centred_eigen_cam() -> None:
    g = torch.Generator().manual_seed(4)
    acts = torch.rand(1, 4, 5, 5, generator=g, dtype=torch.float64)
    net = GapNet([[1.0, 1.0, 1.0, 1.0]]).double()
    kp = sacam.explain(
        net, acts, method="kpca-cam", layer="feat", kernel="linear", sign="activation"
    )
    eig = sacam.explain(net, acts, method="eigen-cam", layer="feat", center=True)
    torch.testing.assert_close(kp, eig, rtol=0, atol=1e-9)


def test_kpca_cam_two_positions_by_hand() -> None:
    # two positions: centred, x2 = -x1, so K̃ ∝ [[1, -1], [-1, 1]] for any kernel and the
    # component is ±(1, -1); with sign="activation" the position with the larger mean
    # activation gets the map's 1 (the sklearn sign is a tie between equal |entries| here)
    acts = torch.tensor([[[[1.0, 3.0]], [[2.0, 5.0]]]])
    for kernel in ("rbf", "sigmoid", "poly", "cosine"):
        m = sacam.explain(
            GapNet([[1.0, 1.0]]),
            acts,
            method="kpca-cam",
            layer="feat",
            upsample=False,
            kernel=kernel,
            sign="activation",
        )
        assert m.tolist() == [[[0.0, 1.0]]]


@pytest.mark.parametrize(
    ("option", "value", "match"),
    [
        ("kernel", "laplacian", "kernel must be one of"),
        ("gamma", 0.0, "gamma must be None"),
        ("sign", "largest", "sign must be"),
    ],
)
def test_kpca_cam_rejects_bad_options(option: str, value: object, match: str) -> None:
    with pytest.raises(MethodError, match=match):
        sacam.build_method(GapNet([[1.0, 1.0]]), "kpca-cam", **{option: value})


# --------------------------------------------------------------------- Shapley-CAM

# Two 2×2 channels: A0 = [[1, 2], [3, 4]], A1 = [[0, 1], [1, 0]] (as tests/test_formulas.py).
A = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [1.0, 0.0]]]])


class QuadNet(nn.Module):
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
    m = sacam.explain(QuadNet(), A, method="shapley-cam", layer="feat", targets=0, upsample=False)
    assert torch.allclose(m, torch.tensor([[[0.0, 0.5], [5 / 6, 1.0]]]), atol=1e-6)
    # Grad-CAM's weights are (1/4, 1/4): (A0 + A1)/4 -> [[0, 2/3], [1, 1]]
    gc = sacam.explain(QuadNet(), A, method="grad-cam", layer="feat", targets=0, upsample=False)
    assert torch.allclose(gc, torch.tensor([[[0.0, 2 / 3], [1.0, 1.0]]]), atol=1e-6)


def test_shapley_cam_hvp_by_hand() -> None:
    cam = sacam.get_method("shapley-cam")(QuadNet(), "feat")
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


# ----------------------------------------------------------------------- Finer-CAM

# logits on A (ā = (2.5, 0.5)): y = (3.5, 3.0, 0.0, 5.0); the top class is 3 and the
# classes closest to it are 0 (gap 1.5), 1 (gap 2.0), 2 (gap 5.0)
FINER_W = [[1.0, 2.0], [1.0, 1.0], [0.0, 0.0], [2.0, 0.0]]


def _normalised(m: torch.Tensor) -> torch.Tensor:
    m = m.clamp_min(0)
    return (m - m.min()) / (m.max() - m.min())


def test_finer_cam_one_similar_class_is_grad_cam_of_a_logit_difference() -> None:
    net = GapNet(FINER_W)
    out = sacam.explain_full(net, A, method="finer-cam", layer="feat", upsample=False, n_similar=1)
    assert out.class_idx.tolist() == [3] and out.extras["finer_similar"].tolist() == [[0]]
    # s = y3 - y0: weights ∝ W3 - W0 = (1, -2): A0 - 2 A1 = [[1, 0], [1, 4]]
    assert torch.allclose(out.maps, torch.tensor([[[0.25, 0.0], [0.25, 1.0]]]), atol=1e-6)
    assert out.scores.tolist() == pytest.approx([1.5])
    # α = 0.5: W3 - 0.5 W0 = (1.5, -1): [[1.5, 2], [3.5, 6]] -> (m - 1.5) / 4.5
    m = sacam.explain(
        net, A, method="finer-cam", layer="feat", upsample=False, n_similar=1, alpha=0.5
    )
    assert torch.allclose(m, torch.tensor([[[0.0, 1 / 9], [4 / 9, 1.0]]]), atol=1e-6)


def test_finer_cam_weights_differentiate_through_the_probabilities() -> None:
    # J = {0, 1}: s = s0 (y3 - y0) + s1 (y3 - y1), s = softmax(y0, y1). By hand:
    # ds/dy3 = 1, ds/dy0 = -s0 + s0 s1 (y1 - y0), ds/dy1 = -s1 + s0 s1 (y0 - y1)
    y0, y1, y3 = 3.5, 3.0, 5.0
    s0 = 1 / (1 + np.exp(y1 - y0))
    s1 = 1 - s0
    d0 = -s0 + s0 * s1 * (y1 - y0)
    d1 = -s1 + s0 * s1 * (y0 - y1)
    wt = [FINER_W[3][k] + d0 * FINER_W[0][k] + d1 * FINER_W[1][k] for k in range(2)]
    expected = _normalised(wt[0] * A[0, 0] + wt[1] * A[0, 1])[None]
    out = sacam.explain_full(
        GapNet(FINER_W), A, method="finer-cam", layer="feat", upsample=False, n_similar=2
    )
    assert torch.allclose(out.maps, expected.float(), atol=1e-6)
    assert out.scores.tolist() == pytest.approx([s0 * (y3 - y0) + s1 * (y3 - y1)])


def test_finer_cam_default_compares_three_classes_and_reports_the_class() -> None:
    out = sacam.explain_full(GapNet(FINER_W), A, method="finer-cam", layer="feat", targets=0)
    # class 0 (3.5): gaps 0.5 (class 1), 1.5 (class 3), 3.5 (class 2)
    assert out.class_idx.tolist() == [0]
    assert out.extras["finer_similar"].tolist() == [[1, 3, 2]]
    probs = torch.softmax(torch.tensor([3.5, 3.0, 0.0, 5.0]), 0)
    assert out.probabilities.tolist() == pytest.approx([float(probs[0])])


def test_finer_cam_alpha_zero_is_its_base() -> None:
    net = GapNet(FINER_W)
    for base in ("grad-cam", "hires-cam"):
        a = sacam.explain(net, A, method="finer-cam", layer="feat", alpha=0.0, base=base)
        b = sacam.explain(net, A, method=base, layer="feat")
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_finer_cam_rejects_callable_targets_and_bad_options() -> None:
    net = GapNet(FINER_W)
    with pytest.raises(sacam.errors.TargetError, match="not callables"):
        sacam.explain(net, A, method="finer-cam", layer="feat", targets=lambda o: o[:, 0])
    with pytest.raises(MethodError, match="another method"):
        sacam.build_method(net, "finer-cam", base="finer-cam")
    with pytest.raises(MethodError, match="does not accept"):
        sacam.build_method(net, "finer-cam", base="grad-cam", base_options={"k": 2})
    with pytest.raises(MethodError, match="n_similar"):
        sacam.build_method(net, "finer-cam", n_similar=0)


def test_finer_cam_with_a_perturbation_base_scores_each_sample_with_its_own_classes(
    cnn, images
) -> None:
    # score-cam scores copies of one image at a time: each must use its own class and J
    net, x = in_double(cnn, images)
    opts = {"base": "score-cam", "base_options": {"inputs_per_pass": 4}}
    batch = sacam.explain(net, x, method="finer-cam", **opts)
    singles = torch.cat(
        [sacam.explain(net, x[i : i + 1], method="finer-cam", **opts) for i in range(3)]
    )
    torch.testing.assert_close(batch, singles, rtol=0, atol=F64_ATOL)


# ------------------------------------------------------------------ Guided Grad-CAM


class GuidedNet(nn.Module):
    """x (1 channel) -> 1×1 conv to (x - 1.5, 1.5 - x) -> ReLU -> r0 - r1/2 -> mean."""

    def __init__(self, act: nn.Module | None = None) -> None:
        super().__init__()
        self.feat = nn.Conv2d(1, 2, 1)
        self.relu = act if act is not None else nn.ReLU()
        self.mix = nn.Conv2d(2, 1, 1, bias=False)
        with torch.no_grad():
            self.feat.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            self.feat.bias.copy_(torch.tensor([-1.5, 1.5]))
            self.mix.weight.copy_(torch.tensor([1.0, -0.5]).view(1, 2, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(self.relu(self.feat(x))).mean(dim=(2, 3))


GX = torch.tensor([[[[2.0, 1.0, 3.0]]]])


def test_guided_grad_cam_by_hand() -> None:
    out = sacam.explain_full(GuidedNet(), GX, method="guided-grad-cam", layer="relu")
    # pre-ReLU (0.5, -0.5, 1.5) and (-0.5, 0.5, -1.5); dy/dr = (1/3, -1/6) everywhere.
    # guided: the negative -1/6 is stopped: dy/dx = (1/3)·[1, 0, 1] = [1/3, 0, 1/3]
    # (the plain gradient adds +1/6 at the middle: [1/3, 1/2 - 1/3, 1/3] = [1/3, 1/6, 1/3])
    gb = out.extras["guided_backprop"]
    assert torch.allclose(gb, torch.tensor([[[[1 / 3, 0.0, 1 / 3]]]]), atol=1e-7)
    # Grad-CAM: r0/3 - r1/6 = [1/6, -1/12, 1/2] -> ReLU, minmax: M = [1/3, 0, 1]
    # M ⊙ G = [1/9, 0, 1/3] -> [1/3, 0, 1]
    assert torch.allclose(out.maps, torch.tensor([[[1 / 3, 0.0, 1.0]]]), atol=1e-6)


class _SwappedGuidedReLU(torch.autograd.Function):
    """A reference written the other way: a replacement ReLU with its own backward."""

    @staticmethod
    def forward(ctx, x):  # noqa: ANN001, ANN205
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        (x,) = ctx.saved_tensors
        return grad * (x > 0) * (grad > 0)


class _SwapModule(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SwappedGuidedReLU.apply(x)


@pytest.mark.parametrize("channels", ["max-abs", "sum-abs", "sum"])
def test_guided_grad_cam_matches_a_module_swapping_reference(cnn, images, channels) -> None:
    import copy

    net, x = in_double(cnn, images)
    out = sacam.explain_full(net, x, method="guided-grad-cam", layer="3", channels=channels)
    ref_net = copy.deepcopy(net).eval()
    for i, m in enumerate(ref_net):
        if isinstance(m, nn.ReLU):
            ref_net[i] = _SwapModule()
    xr = x.clone().requires_grad_(True)
    logits = ref_net(xr)
    top = logits.argmax(1)
    (gb,) = torch.autograd.grad(logits.gather(1, top[:, None]).sum(), xr)
    cam = sacam.explain(net, x, method="grad-cam", layer="3", targets=top).double()
    prod = cam[:, None] * gb
    red = {"max-abs": prod.abs().amax(1), "sum-abs": prod.abs().sum(1), "sum": prod.sum(1)}
    expected, _ = sacam.core.normalize_maps(red[channels].clamp_min(0))
    torch.testing.assert_close(out.maps.double(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("act", [nn.ReLU(), nn.ReLU(inplace=True), nn.ReLU6()])
def test_guided_grad_cam_leaves_relu_modules_as_they_were(act) -> None:
    net = GuidedNet(act)
    before = [(n, type(m), getattr(m, "inplace", None)) for n, m in net.named_modules()]
    relu = net.relu
    out = sacam.explain_full(net, GX, method="guided-grad-cam", layer="relu")
    assert [(n, type(m), getattr(m, "inplace", None)) for n, m in net.named_modules()] == before
    assert net.relu is relu
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    # every ReLU kind is guided by default (ReLU6 has the same mask here: inputs < 6)
    assert torch.allclose(out.extras["guided_backprop"], torch.tensor([[[[1 / 3, 0.0, 1 / 3]]]]))
    # and afterwards the model computes the plain gradient again
    x = GX.clone().requires_grad_(True)
    net(x).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([[[[1 / 3, 1 / 6, 1 / 3]]]]))


def test_guided_grad_cam_pytorch_grad_cam_variant_guides_only_nn_relu() -> None:
    relu6 = sacam.explain_full(
        GuidedNet(nn.ReLU6()),
        GX,
        method="guided-grad-cam",
        layer="relu",
        variant="pytorch-grad-cam",
    )
    plain = torch.tensor([[[[1 / 3, 1 / 6, 1 / 3]]]])
    assert torch.allclose(relu6.extras["guided_backprop"], plain)
    relu = sacam.explain_full(
        GuidedNet(), GX, method="guided-grad-cam", layer="relu", variant="pytorch-grad-cam"
    )
    assert torch.allclose(relu.extras["guided_backprop"], torch.tensor([[[[1 / 3, 0, 1 / 3]]]]))


# ------------------------------------------------------------------------- FullGrad


def _fg_net() -> nn.Sequential:
    """x -> conv 1×1 (2x + 1) -> BN (μ 1, σ² 4, γ 3, β 0.5, ε 0) -> ReLU -> mean."""
    net = nn.Sequential(
        nn.Conv2d(1, 1, 1),
        nn.BatchNorm2d(1, eps=0.0),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    with torch.no_grad():
        net[0].weight.fill_(2.0)
        net[0].bias.fill_(1.0)
        net[1].running_mean.fill_(1.0)
        net[1].running_var.fill_(4.0)
        net[1].weight.fill_(3.0)
        net[1].bias.fill_(0.5)
    return net


def test_fullgrad_by_hand() -> None:
    x = torch.tensor([[[[1.0, -1.0, 3.0]]]])
    # z = 2x + 1 = (3, -1, 7); u = 1.5 (z - 1) + 0.5 = (3.5, -2.5, 9.5); y = mean ReLU(u)
    # dy/du = (1/3, 0, 1/3), dy/dz = (1/2, 0, 1/2), dy/dx = (1, 0, 1)
    # terms: |x ∂y/∂x| = (1, 0, 3); conv |1 · dy/dz| = (1/2, 0, 1/2);
    # BN effective bias 0.5 - 1·3/2 = -1: |-1 · dy/du| = (1/3, 0, 1/3)
    # (completeness: 4 + 1 - 2/3 = 13/3 = y)
    e = 1e-6  # the authors' ψ: (t - min) / (max - min + 1e-6)
    s = (
        torch.tensor([1.0, 0.0, 3.0]) / (3 + e)
        + torch.tensor([0.5, 0.0, 0.5]) / (0.5 + e)
        + torch.tensor([1 / 3, 0.0, 1 / 3]) / (1 / 3 + e)
    )
    out = sacam.explain_full(_fg_net(), x, method="fullgrad")
    assert out.scores.tolist() == pytest.approx([13 / 3])
    assert torch.allclose(out.maps[0, 0], (s - s.min()) / (s.max() - s.min()), atol=1e-6)
    assert torch.allclose(out.maps, torch.tensor([[[7 / 9, 0.0, 1.0]]]), atol=1e-5)


def test_fullgrad_variants_normalise_per_image_or_per_channel() -> None:
    net = nn.Sequential(nn.Conv2d(2, 1, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.zero_()
    x = torch.tensor([[[[1.0, 2.0, 4.0]], [[10.0, 30.0, 20.0]]]])
    # |x ∂y/∂x| = x / 3: channel 0 (1, 2, 4)/3, channel 1 (10, 30, 20)/3
    # paper, per image: ((0, 1, 3) + (9, 29, 19)) / 29 -> (9, 30, 22) -> (0, 1, 13/21)
    paper = sacam.explain(net, x, method="fullgrad")
    assert torch.allclose(paper, torch.tensor([[[0.0, 1.0, 13 / 21]]]), atol=1e-6)
    # pytorch-grad-cam, per channel: (0, 1/3, 1) + (0, 1, 1/2) -> (0, 4/3, 3/2) -> (0, 8/9, 1)
    pgc = sacam.explain(net, x, method="fullgrad", variant="pytorch-grad-cam")
    assert torch.allclose(pgc, torch.tensor([[[0.0, 8 / 9, 1.0]]]), atol=1e-6)


def test_fullgrad_layers_and_resize() -> None:
    from sacam.methods.fullgrad import bias_layers, resize_align_corners

    class MyConv(nn.Conv2d):
        pass

    net = nn.Sequential(
        MyConv(3, 4, 1), nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1)
    )
    assert bias_layers(net) == [net[0], net[2], net[3]]
    assert bias_layers(net, "pytorch-grad-cam") == [net[2], net[3]]
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(2, 5, 7, generator=g, dtype=torch.float64)
    ref = torch.nn.functional.interpolate(
        maps[:, None], size=(16, 23), mode="bilinear", align_corners=True
    )[:, 0]
    torch.testing.assert_close(resize_align_corners(maps, (16, 23)), ref, rtol=0, atol=1e-12)
    const = torch.full((1, 4, 4), 0.2, dtype=torch.float32)
    assert torch.equal(resize_align_corners(const, (16, 16)), torch.full((1, 16, 16), 0.2))


def test_fullgrad_refuses_what_does_not_apply() -> None:
    with pytest.raises(MethodError, match="do not apply"):
        sacam.build_method(_fg_net(), "fullgrad", eigen_smooth=True)
    with pytest.raises(MethodError, match="variant"):
        sacam.build_method(_fg_net(), "fullgrad", variant="official")


# ---------------------------------------------------------------------- Recipro-CAM


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
