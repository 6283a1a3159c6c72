"""Score-CAM against masked scores computed by hand."""

from __future__ import annotations

import math

import torch

import sacam
from tests.support.nets import GapNet

A = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [1.0, 0.0]]]])
W = [[1.0, 2.0], [3.0, -1.0]]


def test_scorecam_by_hand() -> None:
    # The layer is the input itself (2×2, no upsampling), so M0 = minmax(A0) =
    # [[0, 1/3], [2/3, 1]], M1 = A1. Masked inputs x*M0 and x*M1, then GAP and fc:
    #   x*M0: channel means 5/3 and 1/4 -> logits (5/3 + 1/2, 5 - 1/4)
    #   x*M1: channel means 5/4 and 1/2 -> logits (5/4 + 1, 15/4 - 1/2)
    p0 = 1 / (1 + math.exp((5 - 0.25) - (5 / 3 + 0.5)))  # 0.070219
    p1 = 1 / (1 + math.exp((3.75 - 0.5) - 2.25))  # 0.268941
    raw = p0 * A[0, 0] + p1 * A[0, 1]
    expect = (raw - raw.min()) / (raw.max() - raw.min())
    got = sacam.explain(GapNet(W), A, method="score-cam", layer="feat", targets=0, upsample=False)
    assert torch.allclose(got[0], expect, atol=1e-6)
    assert torch.allclose(expect, torch.tensor([[0.0, 0.828475], [1.0, 0.514575]]), atol=1e-6)


def test_scorecam_softmax_variant_by_hand() -> None:
    # pytorch-grad-cam / torchcam: softmax across channels of the class logits
    l0, l1 = 5 / 3 + 0.5, 2.25
    w0 = math.exp(l0) / (math.exp(l0) + math.exp(l1))
    raw = w0 * A[0, 0] + (1 - w0) * A[0, 1]
    expect = (raw - raw.min()) / (raw.max() - raw.min())
    got = sacam.explain(
        GapNet(W), A, method="score-cam", layer="feat", targets=0, upsample=False, variant="softmax"
    )
    assert torch.allclose(got[0], expect, atol=1e-6)


def test_constant_channel_is_skipped() -> None:
    x = A.clone()
    x[0, 1] = 5.0  # channel 1 constant -> weight 0 -> map = p0 * A0 -> minmax(A0)
    got = sacam.explain(GapNet(W), x, method="score-cam", layer="feat", targets=0, upsample=False)
    assert torch.allclose(got[0], torch.tensor([[0.0, 1 / 3], [2 / 3, 1.0]]), atol=1e-6)


def test_batch_size_does_not_change_the_result(cnn, images) -> None:
    a = sacam.explain(cnn, images, method="score-cam", inputs_per_pass=1)
    b = sacam.explain(cnn, images, method="score-cam", inputs_per_pass=16)
    assert torch.allclose(a, b, atol=1e-6)
