"""Methods, round 2 (issue 11), part 4: seg-eigen-cam, refine-cam, sess on tiny hand-made models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sacam
from sacam.errors import MethodError
from tests.support.nets import FlatNet, colour_net

# ------------------------------------------------------------------- Seg-Eigen-CAM

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


# ---------------------------------------------------------------------- Refine-CAM

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


# ---------------------------------------------------------------------------- SESS


def _sess_reference(net, x, c, scales, window, step, pool, theta):  # noqa: ANN001, ANN202
    """SESS of one image written out window by window (numpy fusion, no blur)."""
    h, w = x.shape[-2:]
    pasted, weights = [], []
    for s in scales:
        sh, sw = (s, int(s * w / h)) if h <= w else (int(s * h / w), s)
        img = F.interpolate(x, size=(sh, sw), mode="bilinear", antialias=True) if s != h else x
        tops = sorted({min(t, sh - window) for t in range(0, sh, step)})
        lefts = sorted({min(t, sw - window) for t in range(0, sw, step)})
        for t in tops:
            for left in lefts:
                crop = img[:, :, t : t + window, left : left + window]
                with torch.no_grad():
                    weights.append(float(torch.softmax(net(crop), 1)[0, c]))
                cam = sacam.explain(net, crop, method="grad-cam", targets=c)[0]
                canvas = torch.zeros(sh, sw)
                canvas[t : t + window, left : left + window] = cam
                back = F.interpolate(canvas[None, None], size=(h, w), mode="bilinear")[0, 0]
                pasted.append(back.numpy())
    stack = np.stack(pasted) * (np.array(weights) / max(weights))[:, None, None]
    if pool == "max":
        fused = stack.max(0)
    else:
        keep = stack > theta
        fused = np.where(keep, stack, 0).sum(0) / np.maximum(keep.sum(0), 1)
    return (fused - fused.min()) / (fused.max() - fused.min())


@pytest.mark.parametrize("pool", ["mean", "max"])
def test_sess_fuses_weighted_windows_like_a_reference(pool: str) -> None:
    net = colour_net()
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    opts = {"scales": [8, 12], "window_size": 4, "step_size": 3, "smooth": False, "pool": pool}
    m = sacam.explain(net, x, method="sess", targets=2, theta=0.1, **opts)
    expected = _sess_reference(net, x, 2, [8, 12], 4, 3, pool, 0.1)
    assert np.allclose(m[0].numpy(), expected, atol=1e-5)


def test_sess_default_scales_windows_and_blur() -> None:
    from sacam.filters import gaussian_blur
    from sacam.methods.sess import SESS

    net = colour_net()
    cam = SESS(net, None)
    window, patches = cam.windows(14, 14)
    # 12 scales 14 + 4i (r = round(14 · 2/7) = 4); non-overlapping windows, last shifted back
    assert window == 14 and sorted({p.scaled for p in patches})[-1] == (58, 58)
    assert sum(p.scaled == (18, 18) for p in patches) == 4
    x = torch.rand(1, 3, 14, 14, generator=torch.Generator().manual_seed(2))
    raw = sacam.explain(net, x, method="sess", smooth=False)
    smooth = sacam.explain(net, x, method="sess")
    blurred = gaussian_blur(raw[None], 11, 5.0)[0]
    lo, hi = blurred.amin(), blurred.amax()
    assert torch.allclose(smooth, (blurred - lo) / (hi - lo), atol=1e-5)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"scales": [8, 0]}, "positive int"),
        ({"scales": "8"}, "list of ints"),
        ({"pre_filter_ratio": 1.0}, "below 1"),
        ({"pool": "sum"}, "pool"),
        ({"score": "rank"}, "score"),
        ({"smooth": 1}, "True or False"),
        ({"windows_per_pass": 0}, "positive int"),
        ({"base": "sess"}, "another method"),
    ],
)
def test_sess_rejects_bad_options(cnn, options, message) -> None:
    with pytest.raises(MethodError, match=message):
        sacam.build_method(cnn, "sess", **options)


def test_sess_refuses_a_scale_below_the_window(cnn, images) -> None:
    with pytest.raises(MethodError, match="at least the window"):
        sacam.explain(cnn, images, method="sess", scales=[8, 16])


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
