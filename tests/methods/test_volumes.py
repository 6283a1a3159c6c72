"""5-D inputs ``(B, C, T, H, W)`` (3D CNNs, video): hand-weighted Conv3d, hand-computed maps.

The network: a Conv3d with kernel 2 and stride 2 whose channel 0 is the mean of each
2×2×2 block and channel 1 the block's first voxel (``A``, 2 channels of 2×2×2), then a
linear layer on the flattened ``A``. The gradient of a class score at ``A`` is therefore
that class's row of the linear weights, so every map below is computed from the
papers' formulas by explicit loops over ``(t, h, w)``.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

import sacam
from sacam.core import volume_methods

FC = [
    [1.0, -1.0, 2.0, 0.0, 0.5, 3.0, -2.0, 1.0, 0.0, 1.0, 1.0, -1.0, 2.0, 0.0, 1.0, 0.5],
    [-1.0, 2.0, 0.0, 1.0, 1.0, -0.5, 0.5, 2.0, 1.0, -1.0, 0.0, 3.0, -1.0, 1.0, 0.0, 2.0],
    [0.5, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0],
]
POSITIONS = list(itertools.product(range(2), repeat=3))  # (t, h, w) of the 2×2×2 layer


class Net3D(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 2, kernel_size=2, stride=2, bias=False)
        self.fc = nn.Linear(16, 3, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0] = 1 / 8
            self.conv.weight[1, 0, 0, 0, 0] = 1.0
            self.fc.weight.copy_(torch.tensor(FC))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).flatten(1))


def volume(seed: int) -> torch.Tensor:
    """A hand-made (1, 4, 4, 4) volume with values in [0, 1]."""
    v = [
        ((t * 16 + h * 4 + w) * (7 + seed) % 11) / 10
        for t in range(4)
        for h in range(4)
        for w in range(4)
    ]
    return torch.tensor(v, dtype=torch.float64).view(1, 4, 4, 4)


@pytest.fixture
def x() -> torch.Tensor:
    return torch.stack([volume(0), volume(3)])  # (2, 1, 4, 4, 4)


def activations(vol: torch.Tensor) -> dict[tuple[int, int, int, int], float]:
    """``A[k, t, h, w]`` by the layer's definition (block mean, block's first voxel)."""
    a = {}
    for t, h, w in POSITIONS:
        block = vol[0, 2 * t : 2 * t + 2, 2 * h : 2 * h + 2, 2 * w : 2 * w + 2]
        a[0, t, h, w] = float(block.sum()) / 8
        a[1, t, h, w] = float(block[0, 0, 0])
    return a


def gradient(c: int) -> dict[tuple[int, int, int, int], float]:
    """``∂y_c/∂A[k, t, h, w]``: the fc weight of that (flattened) position."""
    return {
        (k, t, h, w): FC[c][k * 8 + t * 4 + h * 2 + w] for k in range(2) for t, h, w in POSITIONS
    }


def minmax(m: np.ndarray) -> np.ndarray:
    m = np.maximum(m, 0.0)
    return (m - m.min()) / (m.max() - m.min())


def grid(values: dict[tuple[int, int, int], float]) -> np.ndarray:
    out = np.zeros((2, 2, 2))
    for (t, h, w), v in values.items():
        out[t, h, w] = v
    return out


def weighted(a: dict, weights: list[float]) -> np.ndarray:
    return grid({p: sum(weights[k] * a[(k, *p)] for k in range(2)) for p in POSITIONS})


def expected_map(method: str, vol: torch.Tensor, c: int) -> np.ndarray:
    """The layer-resolution map of ``method`` for class ``c``, before normalisation."""
    a, g = activations(vol), gradient(c)
    if method == "grad-cam":
        return weighted(a, [sum(g[(k, *p)] for p in POSITIONS) / 8 for k in range(2)])
    if method == "grad-cam++":
        ws = []
        for k in range(2):
            total_a = sum(a[(k, *p)] for p in POSITIONS)
            wk = 0.0
            for p in POSITIONS:
                gp = g[(k, *p)]
                denom = 2 * gp**2 + gp**3 * total_a
                alpha = gp**2 / denom if gp != 0 and denom != 0 else 0.0
                wk += alpha * max(gp, 0.0)
            ws.append(wk)
        return weighted(a, ws)
    if method == "xgrad-cam":
        ws = [
            sum(a[(k, *p)] * g[(k, *p)] for p in POSITIONS) / sum(a[(k, *p)] for p in POSITIONS)
            for k in range(2)
        ]
        return weighted(a, ws)
    per_term = {
        "layer-cam": lambda gv, av: max(gv, 0.0) * av,
        "hires-cam": lambda gv, av: gv * av,
        "grad-cam-elementwise": lambda gv, av: max(gv * av, 0.0),
    }[method]
    return grid({p: sum(per_term(g[(k, *p)], a[(k, *p)]) for k in range(2)) for p in POSITIONS})


GRADIENT = ["grad-cam", "grad-cam++", "xgrad-cam", "layer-cam", "hires-cam"]
GRADIENT += ["grad-cam-elementwise"]


@pytest.mark.parametrize("method", GRADIENT)
def test_gradient_family_maps_at_layer_size(method: str, x: torch.Tensor) -> None:
    net = Net3D().double()
    out = sacam.explain_full(net, x, method, targets=[0, 1], upsample=False)
    assert out.maps.shape == (2, 2, 2, 2)
    for b, c in ((0, 0), (1, 1)):
        want = minmax(expected_map(method, x[b], c))
        np.testing.assert_allclose(out.maps[b].numpy(), want, rtol=0, atol=1e-6)


def test_grad_cam_upsamples_trilinearly(x: torch.Tensor) -> None:
    """2 → 4 along each axis, half-pixel centres: rows ``a, (3a+b)/4, (a+3b)/4, b``."""
    net = Net3D().double()
    maps = sacam.explain(net, x, "grad-cam", targets=2)
    assert maps.shape == (2, 4, 4, 4)
    m = np.array([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]])
    for b in range(2):
        low = np.maximum(expected_map("grad-cam", x[b], 2), 0.0)
        up = np.einsum("ti,hj,wk,ijk->thw", m, m, m, low)
        np.testing.assert_allclose(maps[b].numpy(), minmax(up), rtol=0, atol=1e-6)


def _principal(rows: np.ndarray) -> np.ndarray:
    """Projection on the top eigenvector of ``rows^T rows`` (eigh, not an SVD)."""
    _, vecs = np.linalg.eigh(rows.T @ rows)
    return rows @ vecs[:, -1]


def test_eigen_cam_is_the_first_principal_component(x: torch.Tensor) -> None:
    net = Net3D().double()
    maps = sacam.explain(net, x, "eigen-cam", upsample=False)
    for b in range(2):
        a = activations(x[b])
        rows = np.array([[a[(k, *p)] for k in range(2)] for p in POSITIONS])  # (8, K)
        p = _principal(rows)
        p = p if (np.maximum(p, 0) ** 2).sum() >= (np.minimum(p, 0) ** 2).sum() else -p
        np.testing.assert_allclose(maps[b].numpy().ravel(), minmax(p), rtol=0, atol=1e-6)


def test_eigen_grad_cam_is_the_centred_component_of_g_times_a(x: torch.Tensor) -> None:
    net = Net3D().double()
    maps = sacam.explain(net, x, "eigen-grad-cam", targets=0, upsample=False)
    for b in range(2):
        a, g = activations(x[b]), gradient(0)
        rows = np.array([[g[(k, *p)] * a[(k, *p)] for k in range(2)] for p in POSITIONS])
        rows = rows - rows.mean(axis=0)
        p = _principal(rows)
        hires = rows.sum(axis=1)  # centring shifts it by a constant: same correlation
        p = p if np.corrcoef(p, hires)[0, 1] >= 0 else -p
        np.testing.assert_allclose(maps[b].numpy().ravel(), minmax(p), rtol=0, atol=1e-6)


def test_a_linear_tail_makes_shapley_and_smooth_variants_equal_their_base(x) -> None:
    """After the layer the network is linear: the Hessian term is 0 and noise moves no gradient."""
    net = Net3D().double()
    base = sacam.explain(net, x, "grad-cam", targets=1)
    torch.testing.assert_close(sacam.explain(net, x, "shapley-cam", targets=1), base)
    plus = sacam.explain(net, x, "grad-cam++", targets=1)
    smooth = sacam.explain(net, x, "smooth-grad-cam++", targets=1, n_samples=4)
    torch.testing.assert_close(smooth, plus, rtol=1e-9, atol=1e-9)


CNN_METHODS = [m for m in sacam.list_methods() if sacam.method_info(m).family != "transformer"]


@pytest.mark.parametrize("method", CNN_METHODS)
def test_every_method_explains_or_refuses_5d(method: str, x: torch.Tensor) -> None:
    net = Net3D().double()
    if method in volume_methods():
        maps = sacam.explain(net, x, method)
        assert maps.shape == (2, 4, 4, 4)
        assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    else:
        with pytest.raises(sacam.SacamError, match="5-D") as info:
            sacam.explain(net, x, method)
        assert "grad-cam" in str(info.value) or "gradient" in str(info.value)


def test_the_families_the_issue_names_take_volumes() -> None:
    assert set(GRADIENT) | {"eigen-cam", "eigen-grad-cam", "smooth-grad-cam++"} <= set(
        volume_methods()
    )
    assert not {"score-cam", "ablation-cam", "fullgrad", "guided-grad-cam"} & set(volume_methods())


def test_a_4d_layer_of_a_volume_model_is_refused(x: torch.Tensor) -> None:
    class Frames(nn.Module):  # a 2-D conv on the mean over time: a 4-D layer
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, v: torch.Tensor) -> torch.Tensor:
            return self.conv(v.mean(2)).mean(dim=(2, 3))

    with pytest.raises(sacam.LayerError, match=r"not \(B, K, t, h, w\)"):
        sacam.explain(Frames().double(), x, "grad-cam", layer="conv")
    with pytest.raises(sacam.LayerError, match="5-D output"):
        sacam.explain(Frames().double(), x, "grad-cam")


def test_eigen_smooth_and_batches_work_on_volumes(x: torch.Tensor) -> None:
    net = Net3D().double()
    both = sacam.explain(net, x, "layer-cam", targets=0, eigen_smooth=True)
    one = sacam.explain(net, x[1:], "layer-cam", targets=0, eigen_smooth=True)
    assert both.shape == (2, 4, 4, 4)
    torch.testing.assert_close(both[1:], one)


def _frame_nets() -> tuple[nn.Module, nn.Module]:
    """A 2-D CNN and the 3-D CNN with the same weights and kernels of depth 1."""
    g = torch.Generator().manual_seed(5)
    net2 = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    ).double()
    net3 = nn.Sequential(
        nn.Conv3d(2, 4, (1, 3, 3), padding=(0, 1, 1)),
        nn.ReLU(),
        nn.Conv3d(4, 6, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
        nn.ReLU(),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    ).double()
    with torch.no_grad():
        for p2, p3 in zip(net2.parameters(), net3.parameters(), strict=True):
            p2.copy_(torch.randn(p2.shape, generator=g, dtype=torch.float64))
            p3.copy_(p2.view(p3.shape))
    return net2, net3


@pytest.mark.parametrize("method", volume_methods())
def test_one_frame_volume_equals_the_image(method: str) -> None:
    """T = 1 with depth-1 kernels is the 2-D network: the maps must be the 2-D maps."""
    net2, net3 = _frame_nets()
    images = torch.rand(2, 2, 12, 12, generator=torch.Generator().manual_seed(6)).double()
    options = {"n_samples": 2} if method == "smooth-grad-cam++" else {}
    flat = sacam.explain(net2, images, method, layer="2", targets=[0, 2], **options)
    vol = sacam.explain(net3, images[:, :, None], method, layer="2", targets=[0, 2], **options)
    assert vol.shape == (2, 1, 12, 12)
    # maps are float32: upsampling (trilinear here, bilinear there) rounds differently
    torch.testing.assert_close(vol[:, 0], flat, rtol=0, atol=1e-6)


def test_sa_cam_refuses_volumes_with_a_2d_base(x: torch.Tensor) -> None:
    with pytest.raises(sacam.InputError, match="sa-cam's base 'score-cam'.*base='grad'"):
        sacam.explain(Net3D().double(), x, "sa-cam", base="score")
