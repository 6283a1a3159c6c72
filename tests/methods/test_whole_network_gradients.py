"""Gradient methods that follow the whole network: Guided Grad-CAM (guided backpropagation),
FullGrad (input and bias gradients) and LIFT-CAM (DeepLIFT's rescale rule), by hand.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sacam
from sacam.errors import MethodError
from tests.support.nets import GapNet, in_double


class GuidedNet(nn.Module):
    """x (1 channel) -> 1×1 conv to (x - 1.5, 1.5 - x) -> ReLU -> r0 - r1/2 -> mean."""

    def __init__(self, act: nn.Module | None = None) -> None:
        super().__init__()
        self.feat = nn.Conv2d(1, 2, 1)
        self.relu = act if act is not None else nn.ReLU()
        self.mix = nn.Conv2d(2, 1, 1, bias=False)
        with torch.no_grad():
            self.feat.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            self.feat.bias.copy_(torch.tensor([-1.5, 1.5]))
            self.mix.weight.copy_(torch.tensor([1.0, -0.5]).view(1, 2, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(self.relu(self.feat(x))).mean(dim=(2, 3))


GX = torch.tensor([[[[2.0, 1.0, 3.0]]]])


def test_guided_grad_cam_by_hand() -> None:
    out = sacam.explain_full(GuidedNet(), GX, method="guided-grad-cam", layer="relu")
    # pre-ReLU (0.5, -0.5, 1.5) and (-0.5, 0.5, -1.5); dy/dr = (1/3, -1/6) everywhere.
    # guided: the negative -1/6 is stopped: dy/dx = (1/3)·[1, 0, 1] = [1/3, 0, 1/3]
    # (the plain gradient adds +1/6 at the middle: [1/3, 1/2 - 1/3, 1/3] = [1/3, 1/6, 1/3])
    gb = out.extras["guided_backprop"]
    assert torch.allclose(gb, torch.tensor([[[[1 / 3, 0.0, 1 / 3]]]]), atol=1e-7)
    # Grad-CAM: r0/3 - r1/6 = [1/6, -1/12, 1/2] -> ReLU, minmax: M = [1/3, 0, 1]
    # M ⊙ G = [1/9, 0, 1/3] -> [1/3, 0, 1]
    assert torch.allclose(out.maps, torch.tensor([[[1 / 3, 0.0, 1.0]]]), atol=1e-6)


class _SwappedGuidedReLU(torch.autograd.Function):
    """A reference written the other way: a replacement ReLU with its own backward."""

    @staticmethod
    def forward(ctx, x):  # noqa: ANN001, ANN205
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        (x,) = ctx.saved_tensors
        return grad * (x > 0) * (grad > 0)


class _SwapModule(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _SwappedGuidedReLU.apply(x)


@pytest.mark.parametrize("channels", ["max-abs", "sum-abs", "sum"])
def test_guided_grad_cam_matches_a_module_swapping_reference(cnn, images, channels) -> None:
    import copy

    net, x = in_double(cnn, images)
    out = sacam.explain_full(net, x, method="guided-grad-cam", layer="3", channels=channels)
    ref_net = copy.deepcopy(net).eval()
    for i, m in enumerate(ref_net):
        if isinstance(m, nn.ReLU):
            ref_net[i] = _SwapModule()
    xr = x.clone().requires_grad_(True)
    logits = ref_net(xr)
    top = logits.argmax(1)
    (gb,) = torch.autograd.grad(logits.gather(1, top[:, None]).sum(), xr)
    cam = sacam.explain(net, x, method="grad-cam", layer="3", targets=top).double()
    prod = cam[:, None] * gb
    red = {"max-abs": prod.abs().amax(1), "sum-abs": prod.abs().sum(1), "sum": prod.sum(1)}
    expected, _ = sacam.explanation.normalize_maps(red[channels].clamp_min(0))
    torch.testing.assert_close(out.maps.double(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("act", [nn.ReLU(), nn.ReLU(inplace=True), nn.ReLU6()])
def test_guided_grad_cam_leaves_relu_modules_as_they_were(act) -> None:
    net = GuidedNet(act)
    before = [(n, type(m), getattr(m, "inplace", None)) for n, m in net.named_modules()]
    relu = net.relu
    out = sacam.explain_full(net, GX, method="guided-grad-cam", layer="relu")
    assert [(n, type(m), getattr(m, "inplace", None)) for n, m in net.named_modules()] == before
    assert net.relu is relu
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    # every ReLU kind is guided by default (ReLU6 has the same mask here: inputs < 6)
    assert torch.allclose(out.extras["guided_backprop"], torch.tensor([[[[1 / 3, 0.0, 1 / 3]]]]))
    # and afterwards the model computes the plain gradient again
    x = GX.clone().requires_grad_(True)
    net(x).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([[[[1 / 3, 1 / 6, 1 / 3]]]]))


def test_guided_grad_cam_pytorch_grad_cam_variant_guides_only_nn_relu() -> None:
    relu6 = sacam.explain_full(
        GuidedNet(nn.ReLU6()),
        GX,
        method="guided-grad-cam",
        layer="relu",
        variant="pytorch-grad-cam",
    )
    plain = torch.tensor([[[[1 / 3, 1 / 6, 1 / 3]]]])
    assert torch.allclose(relu6.extras["guided_backprop"], plain)
    relu = sacam.explain_full(
        GuidedNet(), GX, method="guided-grad-cam", layer="relu", variant="pytorch-grad-cam"
    )
    assert torch.allclose(relu.extras["guided_backprop"], torch.tensor([[[[1 / 3, 0, 1 / 3]]]]))


def _fg_net() -> nn.Sequential:
    """x -> conv 1×1 (2x + 1) -> BN (μ 1, σ² 4, γ 3, β 0.5, ε 0) -> ReLU -> mean."""
    net = nn.Sequential(
        nn.Conv2d(1, 1, 1),
        nn.BatchNorm2d(1, eps=0.0),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    with torch.no_grad():
        net[0].weight.fill_(2.0)
        net[0].bias.fill_(1.0)
        net[1].running_mean.fill_(1.0)
        net[1].running_var.fill_(4.0)
        net[1].weight.fill_(3.0)
        net[1].bias.fill_(0.5)
    return net


def test_fullgrad_by_hand() -> None:
    x = torch.tensor([[[[1.0, -1.0, 3.0]]]])
    # z = 2x + 1 = (3, -1, 7); u = 1.5 (z - 1) + 0.5 = (3.5, -2.5, 9.5); y = mean ReLU(u)
    # dy/du = (1/3, 0, 1/3), dy/dz = (1/2, 0, 1/2), dy/dx = (1, 0, 1)
    # terms: |x ∂y/∂x| = (1, 0, 3); conv |1 · dy/dz| = (1/2, 0, 1/2);
    # BN effective bias 0.5 - 1·3/2 = -1: |-1 · dy/du| = (1/3, 0, 1/3)
    # (completeness: 4 + 1 - 2/3 = 13/3 = y)
    e = 1e-6  # the authors' ψ: (t - min) / (max - min + 1e-6)
    s = (
        torch.tensor([1.0, 0.0, 3.0]) / (3 + e)
        + torch.tensor([0.5, 0.0, 0.5]) / (0.5 + e)
        + torch.tensor([1 / 3, 0.0, 1 / 3]) / (1 / 3 + e)
    )
    out = sacam.explain_full(_fg_net(), x, method="fullgrad")
    assert out.scores.tolist() == pytest.approx([13 / 3])
    assert torch.allclose(out.maps[0, 0], (s - s.min()) / (s.max() - s.min()), atol=1e-6)
    assert torch.allclose(out.maps, torch.tensor([[[7 / 9, 0.0, 1.0]]]), atol=1e-5)


def test_fullgrad_variants_normalise_per_image_or_per_channel() -> None:
    net = nn.Sequential(nn.Conv2d(2, 1, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[0].bias.zero_()
    x = torch.tensor([[[[1.0, 2.0, 4.0]], [[10.0, 30.0, 20.0]]]])
    # |x ∂y/∂x| = x / 3: channel 0 (1, 2, 4)/3, channel 1 (10, 30, 20)/3
    # paper, per image: ((0, 1, 3) + (9, 29, 19)) / 29 -> (9, 30, 22) -> (0, 1, 13/21)
    paper = sacam.explain(net, x, method="fullgrad")
    assert torch.allclose(paper, torch.tensor([[[0.0, 1.0, 13 / 21]]]), atol=1e-6)
    # pytorch-grad-cam, per channel: (0, 1/3, 1) + (0, 1, 1/2) -> (0, 4/3, 3/2) -> (0, 8/9, 1)
    pgc = sacam.explain(net, x, method="fullgrad", variant="pytorch-grad-cam")
    assert torch.allclose(pgc, torch.tensor([[[0.0, 8 / 9, 1.0]]]), atol=1e-6)


def test_fullgrad_layers_and_resize() -> None:
    from sacam.methods.fullgrad import bias_layers, resize_align_corners

    class MyConv(nn.Conv2d):
        pass

    net = nn.Sequential(
        MyConv(3, 4, 1), nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1)
    )
    assert bias_layers(net) == [net[0], net[2], net[3]]
    assert bias_layers(net, "pytorch-grad-cam") == [net[2], net[3]]
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(2, 5, 7, generator=g, dtype=torch.float64)
    ref = torch.nn.functional.interpolate(
        maps[:, None], size=(16, 23), mode="bilinear", align_corners=True
    )[:, 0]
    torch.testing.assert_close(resize_align_corners(maps, (16, 23)), ref, rtol=0, atol=1e-12)
    const = torch.full((1, 4, 4), 0.2, dtype=torch.float32)
    assert torch.equal(resize_align_corners(const, (16, 16)), torch.full((1, 16, 16), 0.2))


def test_fullgrad_refuses_what_does_not_apply() -> None:
    with pytest.raises(MethodError, match="do not apply"):
        sacam.build_method(_fg_net(), "fullgrad", eigen_smooth=True)
    with pytest.raises(MethodError, match="variant"):
        sacam.build_method(_fg_net(), "fullgrad", variant="official")


# ----------------------------------------------------------------------------- LIFT-CAM
class _LiftNet(nn.Module):
    """Identity layer -> per-channel 1x1 conv (w = 1, 2; b = −1, ½) -> ReLU -> mean -> sum."""

    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Identity()
        self.conv = nn.Conv2d(2, 2, 1, groups=2)
        self.relu = nn.ReLU()
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, 2.0]).view(2, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([-1.0, 0.5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.relu(self.conv(self.feat(x)))
        return torch.stack([z.mean(dim=(1, 2, 3)) * 2, -z.mean(dim=(1, 2, 3))], dim=1)


def test_lift_cam_rescale_rule_by_hand() -> None:
    # y = mean over positions of ReLU(A0 − 1) + ReLU(2 A1 + ½) (×2/2 channels = Σ of means).
    # A0 = [3, ½, 2]: z = [2, −½, 1], z0 = −1, so Δrelu/Δz = [2/3, 0, 1/2] and
    #   w0 = Σ A0 · m / 3 = (3·2/3 + 0 + 2·1/2) / 3 = 1 (= Δy of channel 0).
    # A1 = [1, −1, 0]: z = [2.5, −1.5, ½], z0 = ½, Δrelu/Δz = [1, 1/4, relu'(½) = 1] (Δz = 0),
    #   times the conv weight 2: w1 = (1·2 − 1·½ + 0) / 3 = ½ (a gradient would give 2/3).
    # map = ReLU(A0 + ½ A1) = [3.5, 0, 2] -> [1, 0, 4/7].
    x = torch.tensor([[[[3.0, 0.5, 2.0]], [[1.0, -1.0, 0.0]]]])
    out = sacam.explain(_LiftNet(), x, method="lift-cam", layer="feat", targets=0, upsample=False)
    torch.testing.assert_close(out[0, 0], torch.tensor([1.0, 0.0, 4 / 7]), rtol=0, atol=1e-6)


def _tail_net(inplace: bool = False) -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(inplace=inplace),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.SiLU(),
        nn.Conv2d(8, 8, 1),
        nn.Sigmoid(),
        nn.AvgPool2d(2),
        nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).double()


@pytest.mark.parametrize("inplace", [False, True])
def test_lift_cam_contributions_sum_to_the_score_change(images, inplace: bool) -> None:
    # DeepLIFT's rescale rule is exact on linear layers and element-wise activations:
    # Σ_k w_k = y(A) − y(0) for every image, whatever the activations (summation to delta).
    net = _tail_net(inplace).eval()
    x = images.double()
    targets = torch.tensor([0, 1, 3])
    ex = sacam.explain_full(net, x, method="lift-cam", layer="0", targets=targets)
    with torch.no_grad():
        y = net(x)[torch.arange(3), targets]
        y0 = net[1:](torch.zeros_like(net[0](x)))[torch.arange(3), targets]
    totals = ex.extras["lift-cam"]["0"].sum(dim=1)
    torch.testing.assert_close(totals, y - y0, rtol=0, atol=1e-10)


def test_lift_cam_rejects_bad_options() -> None:
    with pytest.raises(MethodError, match="eps"):
        sacam.build_method(GapNet([[1.0, 1.0]]), "lift-cam", eps=-1.0)
    with pytest.raises(MethodError, match="reshape_transform"):
        sacam.build_method(GapNet([[1.0, 1.0]]), "lift-cam", reshape_transform=lambda t: t)
