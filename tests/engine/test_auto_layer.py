"""The automatic layer is one a user would pick: a grid of this image, not a table or the output."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sacam
from sacam.examples import tiny_cnn
from sacam.targets import SemanticSegmentationTarget


class BiasTable(nn.Module):
    """A relative-position-bias-like table: (1, heads, n, n), the same for every input."""

    def __init__(self, n: int = 16) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(1, 2, n, n))

    def forward(self) -> torch.Tensor:
        return self.table * 1.0


class WithBias(nn.Module):
    """conv -> ReLU; a bias table computed after them and mixed into the logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.bias = BiasTable()
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.act(self.conv(x)).mean((2, 3))
        return self.head(feats) + self.bias().mean()


class Proposals(nn.Module):
    """Five regions per batch, cropped from the feature map: a batch of regions, not images."""

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f[:1].expand(5, -1, -1, -1)[:, :, :4, :4] * 1.0


class WithRegions(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.rois = Proposals()
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.act(self.conv(x))
        return self.head(feats.mean((2, 3))) + self.rois(feats).mean()


class Segmenter(nn.Module):
    """conv -> ReLU -> classifier conv (the score map), optionally upsampled as DeepLabV3 does."""

    def __init__(self, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(3, 8, 3, padding=1, stride=stride)
        self.act = nn.ReLU()
        self.classifier = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.classifier(self.act(self.conv(x)))
        if self.stride > 1:
            out = F.interpolate(out, size=x.shape[2:], mode="bilinear", align_corners=False)
        return {"out": out}


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("build", [WithBias, WithRegions], ids=["bias-table", "regions"])
def test_tables_and_region_batches_are_skipped(build: type[nn.Module], batch: int) -> None:
    torch.manual_seed(0)
    net = build().eval()
    x = torch.rand(batch, 3, 16, 16)
    out = sacam.explain_full(net, x, method="grad-cam")
    assert out.layers == ["act"]
    assert out.maps.shape == (batch, 16, 16)


@pytest.mark.parametrize("stride", [1, 2], ids=["same-size", "upsampled"])
def test_a_segmenters_score_map_is_not_its_own_explanation(stride: int) -> None:
    torch.manual_seed(0)
    net = Segmenter(stride).eval()
    x = torch.rand(2, 3, 16, 16)
    target = SemanticSegmentationTarget(1, torch.ones(16, 16, dtype=torch.bool))
    out = sacam.explain_full(net, x, method="grad-cam", targets=target)
    assert out.layers == ["act"]  # not "classifier", whose output is the model's output


def test_a_classifier_keeps_its_last_grid() -> None:
    torch.manual_seed(0)
    net = tiny_cnn()  # conv "0", ReLU "1", pool, flatten, linear
    assert sacam.explain_full(net, torch.rand(1, 3, 16, 16)).layers == ["1"]


def test_the_probe_leaves_the_model_and_the_rng_as_they_were() -> None:
    torch.manual_seed(0)
    net = WithBias().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    sacam.explain(net, torch.rand(1, 3, 16, 16), method="grad-cam")
    assert net.training
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), expected)  # the probe's noise image has its own generator


def test_a_padded_grid_is_seen_to_change_with_the_image() -> None:
    # zero padding's border is the same for every image: a probe that sampled only border
    # pixels (16 evenly spaced values of a (1, 240, 32, 32) output all land on pixel (0, 0)
    # of a channel) would take the padded grid for a constant table
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 240, 1),
        nn.ZeroPad2d(1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(240, 2),
    )
    assert sacam.explain_full(net, torch.rand(1, 3, 30, 30), method="grad-cam").layers == ["1"]
