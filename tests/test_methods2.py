"""Methods, round 2 (issue 11): formula-level checks on tiny hand-weighted models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import sacam
from sacam.errors import MethodError

from .conftest import GapNet

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


def _kpca_np(acts: np.ndarray, kernel: str, gamma: float | None, variant: str) -> np.ndarray:
    """Kernel PCA written independently: H K H with H = I - 11ᵀ/n, numpy's eigh."""
    k_ch, h, w = acts.shape
    x = acts.reshape(k_ch, -1).T
    x = x - x.mean(axis=0)
    n = x.shape[0]
    hmat = np.eye(n) - np.ones((n, n)) / n
    kc = hmat @ _kernel_np(x, kernel, gamma) @ hmat
    vals, vecs = np.linalg.eigh(kc)
    proj = vecs[:, -1] * np.sqrt(max(vals[-1], 0.0))
    if variant == "pytorch-grad-cam":
        sign = np.sign(proj[np.argmax(np.abs(proj))])
    else:
        sign = np.sign(np.corrcoef(proj, acts.mean(axis=0).reshape(-1))[0, 1])
    proj = np.maximum(sign * proj, 0.0)
    return ((proj - proj.min()) / (proj.max() - proj.min())).reshape(h, w)


@pytest.mark.parametrize("kernel", ["rbf", "linear", "poly", "sigmoid", "cosine"])
@pytest.mark.parametrize("variant", ["sacam", "pytorch-grad-cam"])
def test_kpca_cam_matches_a_numpy_kernel_pca(kernel: str, variant: str) -> None:
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
        variant=variant,
    )
    for b in range(2):
        ref = _kpca_np(acts[b].numpy(), kernel, gamma, variant)
        np.testing.assert_allclose(maps[b].numpy(), ref, rtol=0, atol=1e-6)  # float32 maps


def test_kpca_cam_linear_kernel_is_centred_eigen_cam() -> None:
    g = torch.Generator().manual_seed(4)
    acts = torch.rand(1, 4, 5, 5, generator=g, dtype=torch.float64)
    net = GapNet([[1.0, 1.0, 1.0, 1.0]]).double()
    kp = sacam.explain(net, acts, method="kpca-cam", layer="feat", kernel="linear")
    eig = sacam.explain(net, acts, method="eigen-cam", layer="feat", center=True)
    torch.testing.assert_close(kp, eig, rtol=0, atol=1e-9)


def test_kpca_cam_two_positions_by_hand() -> None:
    # two positions: centred, x2 = -x1, so K̃ ∝ [[1, -1], [-1, 1]] for any kernel and the
    # component is ±(1, -1): the position with the larger mean activation gets the map's 1
    acts = torch.tensor([[[[1.0, 3.0]], [[2.0, 5.0]]]])
    for kernel in ("rbf", "sigmoid", "poly", "cosine"):
        m = sacam.explain(
            GapNet([[1.0, 1.0]]),
            acts,
            method="kpca-cam",
            layer="feat",
            upsample=False,
            kernel=kernel,
        )
        assert m.tolist() == [[[0.0, 1.0]]]


@pytest.mark.parametrize(
    ("option", "value", "match"),
    [
        ("kernel", "laplacian", "kernel must be one of"),
        ("gamma", 0.0, "gamma must be None"),
        ("variant", "sklearn", "variant must be"),
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
    from sacam._hooks import model_guard
    from sacam._layers import probe, resolve_layers

    with model_guard(cam.model):
        refs = resolve_layers(cam.model, "feat", probe(cam.model, A))
        ctx, layers = cam._forward(A, refs, 0)
        g, hvp = cam.gradient_and_hvp(layers[0], ctx)
    assert torch.allclose(g, torch.full_like(g, 0.25))
    assert torch.allclose(hvp[0, 0], torch.zeros(2, 2)) and torch.allclose(
        hvp[0, 1], torch.full((2, 2), 0.25)
    )


def test_shapley_cam_is_grad_cam_on_a_piecewise_linear_tail(cnn, images) -> None:
    # ReLU, batch norm (eval), pooling and linear layers: the Hessian is 0 almost everywhere
    a = sacam.explain(cnn, images, method="shapley-cam", layer="0")
    b = sacam.explain(cnn, images, method="grad-cam", layer="0")
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
