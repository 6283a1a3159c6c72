"""Decomposition methods by hand: Eigen-CAM, Eigen-Grad-CAM (power iteration, sign rules),
KPCA-CAM (against a NumPy kernel PCA) and Seg-Eigen-CAM.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import sacam
from sacam.errors import MethodError
from tests.support.nets import FlatNet, GapNet, small_cnn

# Two 2×2 channels: A0 = [[1, 2], [3, 4]], A1 = [[0, 1], [1, 0]].
A = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [1.0, 0.0]]]])


W = [[1.0, 2.0], [3.0, -1.0]]


# a position-dependent gradient for FlatNet (y_0 = Σ V ⊙ A)
V = torch.tensor([[[0.5, -1.0], [2.0, 1.0]], [[1.5, 0.25], [-0.5, 3.0]]])


def _norm(rows: list[list[float]]) -> torch.Tensor:
    """ReLU then min-max of a hand-computed raw map, as the engine does."""
    flat = [max(v, 0.0) for r in rows for v in r]
    lo, hi = min(flat), max(flat)
    return torch.tensor([[(max(v, 0.0) - lo) / (hi - lo) for v in r] for r in rows])


def _flat_net() -> FlatNet:
    return FlatNet(torch.stack([V.flatten(), -V.flatten()]))


def _explain(net: nn.Module, x: torch.Tensor, method: str, target: int = 0, **kw) -> torch.Tensor:
    return sacam.explain(net, x, method=method, layer="feat", targets=target, upsample=False, **kw)[
        0
    ]


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


# |g| ⊙ A for g = ±1: two proportional channels, the most extreme position negative
SEG_A = torch.tensor([[[[4.0, 4.0], [4.0, 0.0]], [[3.0, 3.0], [3.0, 0.0]]]])


def test_seg_eigen_cam_by_hand() -> None:
    # FlatNet: the gradient of class 0 is its weight row, here ±1 (|g| = 1 everywhere)
    signs = torch.tensor([[1.0, -1, 1, -1, -1, 1, -1, 1]])
    net = FlatNet(signs)
    # centred rows (1, 0.75)·(1, 1, 1, -3) → v1 = (4, 3)/5 → p = ±(1.25, 1.25, 1.25, -3.75);
    # |min| > |max| flips to (-1.25, -1.25, -1.25, 3.75): ReLU, min-max → the last position
    m = sacam.explain(net, SEG_A, method="seg-eigen-cam", layer="feat", upsample=False)
    assert torch.allclose(m, torch.tensor([[[0.0, 0.0], [0.0, 1.0]]]), atol=1e-6)
    # the absolute gradient: flipping every weight's sign changes nothing
    m2 = sacam.explain(FlatNet(-signs), SEG_A, method="seg-eigen-cam", layer="feat", upsample=False)
    assert torch.allclose(m2, m, atol=1e-6)
    # pytorch-grad-cam's Eigen-CAM keeps the SVD's sign, sacam's Eigen-CAM the energy rule:
    # both show the three bright positions, which the sign correction does not
    e = sacam.explain(net, SEG_A, method="eigen-cam", layer="feat", upsample=False)
    assert e[0, 1, 1] == 0 and e[0, 0, 0] == 1


def _seg_net() -> nn.Sequential:
    """A tiny segmentation model: 1×1 conv, ReLU, 1×1 conv to 2 class score maps."""
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1))
    with torch.no_grad():
        net[0].weight.copy_(
            torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [-1, 1, 0]])[..., None, None]
        )
        net[0].bias.zero_()
        net[2].weight.copy_(torch.tensor([[1.0, 1, 1, 1], [2.0, -1, 0.5, 3]])[..., None, None])
        net[2].bias.zero_()
    return net


def _numpy_seg_eigen(p: np.ndarray) -> np.ndarray:
    """Centred SVD projection of ``(K, h, w)``, flipped when |min| > |max|, ReLU, min-max."""
    k, h, w = p.shape
    rows = p.reshape(k, -1).T.astype(np.float64)
    rows = rows - rows.mean(axis=0)
    _, _, vt = np.linalg.svd(rows, full_matrices=False)
    proj = rows @ vt[0]
    if abs(proj.min()) > abs(proj.max()):
        proj = -proj
    proj = np.maximum(proj, 0)
    proj = (proj - proj.min()) / (proj.max() - proj.min())
    return proj.reshape(h, w)


def test_seg_eigen_cam_on_a_segmentation_model() -> None:
    net = _seg_net()
    x = torch.rand(1, 3, 6, 6, generator=torch.Generator().manual_seed(3))
    mask = torch.zeros(6, 6)
    mask[1:4, 2:5] = 1
    target = sacam.SemanticSegmentationTarget(1, mask)
    m = sacam.explain(net, x, method="seg-eigen-cam", layer="1", targets=[target], upsample=False)
    # by hand: y = Σ_mask Σ_k W2[1, k] A_k, so dy/dA_k = W2[1, k] · mask
    acts = torch.relu(torch.einsum("kc,chw->khw", net[0].weight[:, :, 0, 0], x[0]))
    grad = net[2].weight[1, :, 0, 0][:, None, None] * mask
    expected = _numpy_seg_eigen((grad.abs() * acts).detach().numpy())
    assert np.allclose(m[0].numpy(), expected, atol=1e-5)
    # another region explains another map
    other = sacam.SemanticSegmentationTarget(1, 1 - mask)
    m2 = sacam.explain(net, x, method="seg-eigen-cam", layer="1", targets=[other], upsample=False)
    assert not torch.allclose(m, m2, atol=1e-3)


def test_seg_eigen_cam_refuses_eigen_smooth() -> None:
    with pytest.raises(MethodError, match="eigen_smooth"):
        sacam.build_method(_seg_net(), "seg-eigen-cam", eigen_smooth=True)
