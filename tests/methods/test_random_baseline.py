"""The random baseline and the seeded noise it (and SS-CAM, Smooth Grad-CAM++) draws."""

from __future__ import annotations

import pytest
import torch

import sacam
from tests.support.hand import A, W, explain_feat, grid, norm
from tests.support.nets import GapNet


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("device", ["cpu", torch.device("cpu"), "cuda"])
def test_seeded_noise_is_the_cpu_stream_on_any_device(device, dtype) -> None:  # noqa: ANN001
    from sacam._seeding import cpu_generator, seeded_noise

    if str(device) == "cuda" and not torch.cuda.is_available():
        device = "meta"  # no values there, but the draw must still come from the CPU stream
    expect = torch.randn(3, 5, generator=torch.Generator("cpu").manual_seed(11))
    got = seeded_noise((3, 5), 11, device, dtype)
    assert got.dtype == dtype and got.device.type == torch.device(device).type
    if got.device.type != "meta":
        assert torch.equal(got.cpu(), expect.to(dtype))
    # a generator continues its stream (draws under 16 values go value by value, so three
    # draws of 5 are one draw of 15)
    gen = cpu_generator(11)
    halves = [seeded_noise((5,), gen, "cpu") for _ in range(3)]
    assert torch.equal(torch.cat(halves).view(3, 5), expect)


def test_random_map_is_the_seeded_draw() -> None:
    out = sacam.explain(
        GapNet(W), A.repeat(3, 1, 1, 1), method="random", layer="feat", seed=5, upsample=False
    )
    draw = torch.rand((2, 2), generator=torch.Generator().manual_seed(5))
    expect = (draw - draw.min()) / (draw.max() - draw.min())
    for b in range(3):  # the same map for every image of the batch
        assert torch.allclose(out[b], expect, atol=1e-6)


def test_random_is_reproducible_and_seed_dependent(cnn, images) -> None:
    a = sacam.explain(cnn, images, method="random", seed=1)
    assert torch.equal(a, sacam.explain(cnn, images, method="random", seed=1))
    assert not torch.allclose(a, sacam.explain(cnn, images, method="random", seed=2), atol=1e-3)
    assert torch.allclose(a, sacam.explain(cnn, images[:1], method="random", seed=1).expand_as(a))


def test_random_weights_variant_by_hand() -> None:
    w = 2 * torch.rand(2, generator=torch.Generator().manual_seed(0)) - 1
    expect = norm(
        grid(lambda i, j: float(w[0]) * float(A[0, 0, i, j]) + float(w[1]) * float(A[0, 1, i, j]))
    )
    got = explain_feat(GapNet(W), A, "random", variant="weights")
    assert torch.allclose(got, expect, atol=1e-6)
