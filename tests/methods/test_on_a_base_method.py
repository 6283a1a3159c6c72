"""Methods that run another registered method: Finer-CAM (its base on a logit difference)
and SESS (its base on sliding windows at several scales), against references.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sacam
from sacam.errors import MethodError
from sacam.filters import gaussian_blur
from tests.support.nets import F64_ATOL, GapNet, colour_net, in_double

# Two 2×2 channels: A0 = [[1, 2], [3, 4]], A1 = [[0, 1], [1, 0]].
A = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [1.0, 0.0]]]])


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
