"""Methods that combine the maps of several layers: Refine-CAM (the product of a base
method's layer maps) and Poly-CAM (stage maps fused from deep to shallow), by hand.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sacam
from sacam.errors import MethodError
from tests.support.nets import GapNet


def _minmax(t: torch.Tensor) -> torch.Tensor:
    return (t - t.min()) / (t.max() - t.min())


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


# layer "0" = A (2 channels with negative values), layer "1" = ReLU(A); GAP; y = Σ_k mean(A⁺_k)
REFINE_A = torch.tensor([[[[-2.0, 1.0], [2.0, 4.0]], [[3.0, -1.0], [0.0, 0.0]]]])


def _relu_gap_net() -> nn.Sequential:
    net = nn.Sequential(nn.Identity(), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    net.append(nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        net[4].weight.fill_(1.0)
    return net


def test_refine_cam_multiplies_the_layer_maps_by_hand() -> None:
    net = _relu_gap_net()
    # Grad-CAM at "1": weights 1/4 each, map Σ A⁺ / 4 = [[3, 1], [2, 4]] / 4 → [[2/3, 0], [1/3, 1]]
    # at "0": dy/dA = 1[A > 0] / 4, weights (3/16, 1/16): [[-3, 2], [6, 12]] / 16
    #         → ReLU, min-max → [[0, 1/6], [1/2, 1]]
    # product [[0, 0], [1/6, 1]], already in [0, 1] with min 0 and max 1
    m = sacam.explain(
        net, REFINE_A, method="refine-cam", layer=["0", "1"], base="grad-cam", upsample=False
    )
    assert torch.allclose(m, torch.tensor([[[0.0, 0.0], [1 / 6, 1.0]]]), atol=1e-6)


def test_refine_cam_torchcam_variant_multiplies_on_the_layer_grid(cnn, images) -> None:
    opts = {"method": "refine-cam", "layer": ["3", "4"], "base": "grad-cam"}
    grid = sacam.explain(cnn, images, upsample=False, **opts)  # (3, 8, 8): the layer grid
    up = F.interpolate(grid[:, None], size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
    lo = up.flatten(1).amin(1)[:, None, None]
    hi = up.flatten(1).amax(1)[:, None, None]
    expected = (up - lo) / (hi - lo)
    torchcam = sacam.explain(cnn, images, variant="torchcam", **opts)
    assert torch.allclose(torchcam, expected, atol=1e-6)
    # pytorch-grad-cam's multiplies the upsampled maps: another map
    default = sacam.explain(cnn, images, **opts)
    assert not torch.allclose(default, torchcam, atol=1e-3)


def test_refine_cam_with_one_layer_is_its_base(cnn, images) -> None:
    a = sacam.explain(cnn, images, method="refine-cam", layer="4")
    b = sacam.explain(cnn, images, method="grad-cam++", layer="4")
    assert torch.allclose(a, b, atol=1e-6)
    c = sacam.explain(
        cnn,
        images,
        method="refine-cam",
        layer="4",
        base="score-cam",
        base_options={"inputs_per_pass": 4},
    )
    assert torch.allclose(c, sacam.explain(cnn, images, method="score-cam", layer="4"), atol=1e-5)


def test_refine_cam_variants_pick_the_base_variant(cnn, images) -> None:
    lay = ["1", "4"]
    pgc = sacam.explain(cnn, images, method="refine-cam", layer=lay, variant="pytorch-grad-cam")
    explicit = sacam.explain(
        cnn, images, method="refine-cam", layer=lay, base_options={"variant": "pytorch-grad-cam"}
    )
    assert torch.equal(pgc, explicit)
    cam = sacam.build_method(cnn, "refine-cam", variant="torchcam")
    assert cam.base.variant == "torchcam"
    kept = sacam.build_method(
        cnn, "refine-cam", variant="torchcam", base_options={"variant": "paper"}
    )
    assert kept.base.variant == "paper"
    assert sacam.build_method(cnn, "refine-cam").base.variant == "paper"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"base": "refine-cam"}, "another method"),
        ({"base": "nope"}, "unknown method"),
        ({"base": 3}, "method name"),
        ({"base_options": {"bogus": 1}}, "does not accept"),
        ({"variant": "pytorch"}, "variant must be"),
    ],
)
def test_refine_cam_rejects_bad_options(cnn, options, message) -> None:
    with pytest.raises(MethodError, match=message):
        sacam.build_method(cnn, "refine-cam", **options)


def test_a_multilayer_method_is_one_override(cnn, images) -> None:
    """The engine's fuse step: a product of Grad-CAM's layer maps is Refine-CAM on Grad-CAM."""
    from sacam.core import normalize_maps
    from sacam.methods.gradient import GradCAM

    class ProductGradCAM(GradCAM):
        def fuse(self, layer_maps, raw):  # noqa: ANN001, ANN202
            return normalize_maps(torch.stack(list(layer_maps.values())).prod(dim=0))

    got = ProductGradCAM(cnn, ["1", "4"]).explain(images)
    expect = sacam.explain_full(cnn, images, method="refine-cam", base="grad-cam", layer=["1", "4"])
    assert torch.equal(got.maps, expect.maps)
    assert list(got.layer_maps) == ["1", "4"]
    # by hand: the product of the two normalised maps, normalised
    by_hand = normalize_maps(got.layer_maps["1"] * got.layer_maps["4"])[0]
    assert torch.equal(got.maps, by_hand)


def test_select_layers_and_combine_are_the_layer_steps(cnn, images) -> None:
    """A method choosing its layers and merging their raw maps overrides two steps only."""
    from sacam.methods.gradient import GradCAM

    class LastLayerTwice(GradCAM):
        def select_layers(self, record, images):  # noqa: ANN001, ANN202
            return super().select_layers(record, images)[-1:]

        def combine(self, layers, ctx):  # noqa: ANN001, ANN202
            (layer,) = layers
            return {"twice": 2 * self.layer_map(layer, ctx)}

    out = LastLayerTwice(cnn, ["1", "4"]).explain(images)
    assert out.layers == ["twice"]
    # doubling the raw map changes nothing after min-max normalisation
    expect = sacam.explain(cnn, images, method="grad-cam", layer="4")
    assert torch.allclose(out.maps, expect, atol=1e-6)
    assert not torch.allclose(out.maps, sacam.explain(cnn, images, method="grad-cam", layer="1"))
