"""Wrappers usable with any method: test-time augmentation, eigen-smoothing, token models."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sacam
from sacam.errors import LayerError, MethodError
from sacam.smoothing import eigen_smooth, tta
from sacam.transforms import vit_reshape_transform
from tests.support.calls import layer_data
from tests.support.nets import F64_ATOL, FlatNet, GapNet, in_double, small_cnn

A = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [1.0, 0.0]]]])
W = [[1.0, 2.0], [3.0, -1.0]]
V = torch.tensor([[[0.5, -1.0], [2.0, 1.0]], [[1.5, 0.25], [-0.5, 3.0]]])


def _hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


def _minmax(t: torch.Tensor) -> torch.Tensor:
    t = t.clamp_min(0)
    return (t - t.min()) / (t.max() - t.min())


# ------------------------------------------------------------------------------- TTA


def test_tta_without_augmentation_is_the_plain_map(cnn, images) -> None:
    plain = sacam.explain(cnn, images, method="grad-cam")
    out = tta(sacam.build_method(cnn, "grad-cam"), images, scales=(1.0,), hflip=False)
    assert torch.allclose(out.maps, plain, atol=1e-6)
    assert out.extras["tta"] == [(1.0, False)]


def test_tta_flip_of_a_position_wise_map_changes_nothing() -> None:
    # on GapNet the Grad-CAM map is a per-position sum, so explaining the flipped image and
    # flipping the map back gives the same map
    net = GapNet(W)
    plain = sacam.explain(net, A, method="grad-cam", layer="feat", targets=0)
    got = sacam.explain(net, A, method="grad-cam", layer="feat", targets=0, tta={"scales": (1.0,)})
    assert torch.allclose(got, plain, atol=1e-6)


def test_tta_scales_by_hand() -> None:
    # scale 2: the 4×4 bilinear upsampling of A, whose Grad-CAM map (class 0) is
    # minmax(x0 + 2 x1); back to 2×2 bilinearly, averaged with the plain map, renormalised
    net = GapNet(W)
    plain = _minmax(A[0, 0] + 2 * A[0, 1])
    x2 = F.interpolate(A, size=(4, 4), mode="bilinear", align_corners=False)
    m2 = _minmax(x2[0, 0] + 2 * x2[0, 1])
    back = F.interpolate(m2[None, None], size=(2, 2), mode="bilinear", align_corners=False)[0, 0]
    expect = _minmax((plain + back) / 2)
    got = sacam.explain(
        net,
        A,
        method="grad-cam",
        layer="feat",
        targets=0,
        tta={"scales": (1.0, 2.0), "hflip": False},
    )
    assert torch.allclose(got[0], expect, atol=1e-6)


def test_tta_keeps_the_class_of_the_original_image() -> None:
    # FlatNet's position-dependent weights: the flipped image may prefer another class,
    # but every augmentation must explain the class of the original image
    net = FlatNet(torch.stack([V.flatten(), V.flip(-1).flatten() * 1.1]))
    x = torch.tensor([[[[0.0, 3.0], [0.0, 2.0]], [[0.0, 1.0], [0.5, 0.0]]]])
    c = int(net(x).argmax())
    assert int(net(x.flip(-1)).argmax()) != c  # the premise of this test
    a = sacam.explain(net, x, method="hires-cam", layer="feat", targets=c)
    b = sacam.explain(net, x.flip(-1), method="hires-cam", layer="feat", targets=c).flip(-1)
    expect = _minmax((a + b)[0] / 2)
    out = sacam.explain_full(net, x, method="hires-cam", layer="feat", tta={"scales": [1.0]})
    assert out.class_idx.tolist() == [c]
    assert torch.allclose(out.maps[0], expect, atol=1e-6)


@pytest.mark.parametrize("method", ["grad-cam", "layer-cam", "score-cam", "eigen-cam", "random"])
def test_tta_works_with_any_method(method: str, cnn, images) -> None:
    cnn.train()
    before = [m.training for m in cnn.modules()]
    out = sacam.explain_full(cnn, images, method=method, tta=True)
    assert out.maps.shape == (3, 16, 16)
    assert torch.isfinite(out.maps).all() and out.maps.min() >= 0 and out.maps.max() <= 1
    assert len(out.extras["tta"]) == 6
    assert out.layer_maps[out.layers[0]].shape == (3, 16, 16)
    plain = sacam.explain_full(cnn, images, method=method)
    assert torch.equal(out.class_idx, plain.class_idx)
    assert torch.allclose(out.scores, plain.scores, atol=1e-6)
    assert [m.training for m in cnn.modules()] == before and _hooks(cnn) == 0


def test_tta_batch_equals_single_calls(cnn, images) -> None:
    net, x = in_double(cnn, images)  # see F64_ATOL in conftest: two computations
    batch = sacam.explain(net, x, method="grad-cam", tta=True)
    singles = torch.cat(
        [sacam.explain(net, x[i : i + 1], method="grad-cam", tta=True) for i in range(3)]
    )
    torch.testing.assert_close(batch, singles, rtol=0, atol=F64_ATOL)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tta": True, "upsample": False}, "upsample=True"),
        ({"tta": {"scale": 2}}, "unknown tta option"),
        ({"tta": {"scales": ()}}, "scales"),
        ({"tta": {"scales": (1.0, -2.0)}}, "scales"),
        ({"tta": "yes"}, "tta must be"),
    ],
)
def test_tta_bad_options(kwargs: dict, message: str, cnn, images) -> None:
    with pytest.raises(MethodError, match=message):
        sacam.explain(cnn, images, **kwargs)


# ----------------------------------------------------------------------- eigen-smoothing


def _power_projection(rows: list[list[float]]) -> list[float]:
    """Centred rows projected on their first principal direction (power iteration)."""
    k = len(rows[0])
    means = [sum(r[c] for r in rows) / len(rows) for c in range(k)]
    rows = [[r[c] - means[c] for c in range(k)] for r in rows]
    gram = [[sum(r[a] * r[b] for r in rows) for b in range(k)] for a in range(k)]
    v = [1.0] + [0.3] * (k - 1)
    for _ in range(500):
        v = [sum(gram[a][b] * v[b] for b in range(k)) for a in range(k)]
        norm = math.sqrt(sum(x * x for x in v))
        v = [x / norm for x in v]
    return [sum(r[c] * v[c] for c in range(k)) for r in rows]


def _eigen_reference(contrib: torch.Tensor) -> torch.Tensor:
    """contrib (K, 2, 2) -> engine map of its eigen-smoothing, sign set by the channel sum."""
    rows = [
        [float(contrib[k, i, j]) for k in range(contrib.shape[0])]
        for i in range(2)
        for j in range(2)
    ]
    proj = _power_projection(rows)
    ref = [sum(r) for r in rows]
    mp, mr = sum(proj) / 4, sum(ref) / 4
    sign = 1.0 if sum((p - mp) * (r - mr) for p, r in zip(proj, ref, strict=True)) >= 0 else -1.0
    return _minmax(torch.tensor(proj).view(2, 2) * sign)


def test_eigen_smooth_gradcam_by_power_iteration() -> None:
    # Grad-CAM on GapNet, class 0: contributions A0/4 and A1/2
    contrib = torch.stack([A[0, 0] / 4, A[0, 1] / 2])
    got = sacam.explain(
        GapNet(W), A, method="grad-cam", layer="feat", targets=0, upsample=False, eigen_smooth=True
    )
    assert torch.allclose(got[0], _eigen_reference(contrib), atol=1e-5)


def test_eigen_smooth_of_an_elementwise_method() -> None:
    net = FlatNet(torch.stack([V.flatten(), -V.flatten()]))
    contrib = V.clamp_min(0) * A[0]  # Layer-CAM's terms
    got = sacam.explain(
        net, A, method="layer-cam", layer="feat", targets=0, upsample=False, eigen_smooth=True
    )
    assert torch.allclose(got[0], _eigen_reference(contrib), atol=1e-5)


def test_eigen_smooth_function_matches_the_engine(cnn, images) -> None:
    cam = sacam.build_method(cnn, "grad-cam", "4", eigen_smooth=True)
    out = cam.explain(images, upsample=False)
    plain = sacam.build_method(cnn, "grad-cam", "4")
    # the same contributions, from the layer data the engine hands the plain method
    ctx, layers = layer_data(plain, images)
    contrib = plain.channel_maps(layers[0], ctx)
    expect = sacam.explanation.normalize_maps(eigen_smooth(contrib).clamp_min(0))[0]
    assert torch.allclose(out.maps, expect, atol=1e-6)


@pytest.mark.parametrize("method", ["eigen-cam", "group-cam", "sa-cam", "random"])
def test_eigen_smooth_is_refused_where_it_does_not_apply(method: str) -> None:
    with pytest.raises(MethodError, match="eigen_smooth"):
        sacam.build_method(small_cnn(), method, eigen_smooth=True)


def test_eigen_smooth_leaves_the_model_as_it_was(cnn, images) -> None:
    cnn.train()
    before = [m.training for m in cnn.modules()]
    maps = sacam.explain(cnn, images, method="grad-cam++", eigen_smooth=True)
    assert maps.shape == (3, 16, 16) and torch.isfinite(maps).all()
    assert [m.training for m in cnn.modules()] == before and _hooks(cnn) == 0


# ------------------------------------------------------------------------- token models


class TinyViT(nn.Module):
    """Patch embedding (4×4 conv), one encoder layer on tokens, mean pool, linear head."""

    def __init__(self, cls_token: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.patch = nn.Conv2d(3, 16, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, 16)) if cls_token else None
        self.encoder = nn.TransformerEncoderLayer(
            16, nhead=2, dim_feedforward=32, dropout=0.1, batch_first=True
        )
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)  # (B, 16 patches, 16)
        if self.cls is not None:
            tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], dim=1)
        return self.head(self.encoder(tokens).mean(dim=1))


@pytest.mark.parametrize("cls_token", [False, True])
def test_gradcam_on_a_transformer_layer(cls_token: bool) -> None:
    net = TinyViT(cls_token).train()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    transform = vit_reshape_transform(4, 4, skip_tokens=1 if cls_token else 0)
    out = sacam.explain_full(
        net, x, method="grad-cam", layer="encoder", reshape_transform=transform
    )
    assert out.maps.shape == (2, 16, 16)
    assert torch.isfinite(out.maps).all() and out.maps.min() >= 0 and out.maps.max() <= 1
    assert not out.constant.any()
    low = sacam.explain(
        net, x, method="grad-cam", layer="encoder", reshape_transform=transform, upsample=False
    )
    assert low.shape == (2, 4, 4)
    assert net.training and all(m.training for m in net.modules()) and _hooks(net) == 0


def test_vit_reshape_transform_layout() -> None:
    tokens = torch.arange(2 * 7 * 3, dtype=torch.float32).view(2, 7, 3)
    grid = vit_reshape_transform(2, 3, skip_tokens=1)(tokens)
    assert grid.shape == (2, 3, 2, 3)
    for b in range(2):
        for r in range(2):
            for c in range(3):
                assert torch.equal(grid[b, :, r, c], tokens[b, 1 + r * 3 + c])


def test_vit_reshape_transform_errors() -> None:
    with pytest.raises(LayerError, match="tokens"):
        vit_reshape_transform(4, 4)(torch.zeros(1, 16, 8))  # 16 tokens, 1 skipped: 15
    with pytest.raises(LayerError, match=r"\(B, N, C\)"):
        vit_reshape_transform(4, 4)(torch.zeros(1, 8, 4, 4))
    with pytest.raises(MethodError, match="height"):
        vit_reshape_transform(0, 4)
    net = TinyViT()
    with pytest.raises(LayerError, match="tokens"):
        sacam.explain(
            net,
            torch.rand(1, 3, 16, 16),
            layer="encoder",
            reshape_transform=vit_reshape_transform(3, 3),
        )
