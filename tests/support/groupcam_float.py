"""Group-CAM's float-rounding bound, shared by the tests that compare two Group-CAM runs.

Group-CAM's map is Σ_g s_g m̂_g min-max normalised, with s_g = p(masked) - p(blurred) a
difference of two float32 probabilities. Another batch size or batch composition rounds
the forward passes differently, so s_g moves by δ (a few ulps of a probability); on the
random test model the s_g are ~1e-4 and the raw map's range R as small as ~3e-5, so the
normalisation magnifies δ (measured: map differences up to 9e-4 from δ = 3e-8). What is
stable, and tested, is: (1) the masks and the s_g agree to float32 rounding, and (2) the
maps differ by no more than that rounding propagated through the formula:
  raw moves by d ≤ Σ_g |Δs_g| max m̂_g + Σ_g |s_g| max|Δm̂_g| (+ the einsum's rounding,
  G u max|s_g|); ReLU, min and max move by ≤ d, so the normalised map moves by
  ≤ 2d/(R - 2d) + 2d/(R - 2d) = 4d/(R - 2d).
Tolerances of (1): a probability's rounding, |Δp| ≤ p(1-p)|Δlogit| ≤ |Δlogit|/4, where
the logits (O(1), sums of ≤ 200 float32 products) move by at most ~200 u ≈ 1.2e-5
between summation orders -> |Δs_g| ≤ 2 · 1.2e-5 / 4 < 1e-5; the masks (sums of products
of O(1) gradients and activations over ≤ 16 channels) move by ≤ 16 · 4 u relative to
their largest value, < 1e-5. The 70 % quantile de-noising is a step: a mask value within
rounding of its threshold could switch sides and move the map by a jump, not by rounding;
that needs two neighbouring order statistics within ~1e-7 relative of each other, which
these images do not have, and the check that the same positions are kept says so if a
future input does.
"""

from __future__ import annotations

import torch

from sacam.explanation import Explanation, normalize_maps

U32 = 2.0**-24


def groupcam_float_bound(a: Explanation, b: Explanation) -> torch.Tensor:
    """Per-image bound 4d/(R - 2d) on the normalised maps' difference (see above)."""
    (ia,) = a.extras["group-cam"].values()
    (ib,) = b.extras["group-cam"].values()
    norm_a = torch.stack([normalize_maps(m)[0] for m in ia.masks])
    norm_b = torch.stack([normalize_maps(m)[0] for m in ib.masks])
    d_gain = (ia.gains - ib.gains).abs()
    d_mask = (norm_a - norm_b).abs().amax(dim=(2, 3))
    g = ia.gains.shape[1]
    d = (
        (d_gain * norm_a.amax(dim=(2, 3))).sum(1)
        + (ia.gains.abs() * d_mask).sum(1)
        + g * 2 * U32 * ia.gains.abs().amax(1)
    )
    relu = ia.raw.clamp_min(0).flatten(1)
    span = relu.amax(1) - relu.amin(1)
    return 4 * d / (span - 2 * d)


def groupcam_stable_parts_agree(a: Explanation, b: Explanation) -> None:
    (ia,) = a.extras["group-cam"].values()
    (ib,) = b.extras["group-cam"].values()
    scale = ia.masks.abs().amax(dim=(2, 3), keepdim=True)
    assert ((ia.masks - ib.masks).abs() <= 1e-5 * scale).all()
    assert torch.equal(ia.masks > 0, ib.masks > 0)  # the 70 % quantile kept the same values
    assert torch.allclose(ia.gains, ib.gains, rtol=0, atol=1e-5)
    bound = groupcam_float_bound(a, b)
    assert (bound > 0).all()
    diff = (a.maps - b.maps).abs().flatten(1).amax(1)
    assert (diff <= bound).all(), (diff, bound)
