"""Segmentation outputs: instance-mask targets, per-class maps in one call, clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sacam
from sacam.errors import TargetError
from sacam.labels import explain_segmentation
from sacam.targets import InstanceMaskTarget

SIZE, SIDE = 32, 8
CLASSES = 3  # background, red square, blue square


def scenes(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Dark noisy images with a red and a blue square at random cells; their label maps."""
    x = torch.rand(n, 3, SIZE, SIZE, generator=gen) * 0.2
    labels = torch.zeros(n, SIZE, SIZE, dtype=torch.long)
    cells = [(r, c) for r in range(0, SIZE, SIDE) for c in range(0, SIZE, SIDE)]
    for i in range(n):
        for k, j in enumerate(torch.randperm(len(cells), generator=gen)[:2].tolist()):
            r, c = cells[j]
            x[i, :, r : r + SIDE, c : c + SIDE] = 0.0
            x[i, 2 * k, r : r + SIDE, c : c + SIDE] = 1.0  # red (class 1), blue (class 2)
            labels[i, r : r + SIDE, c : c + SIDE] = k + 1
    return x, labels


class Segmenter(nn.Module):
    """Three convolutions and a 1×1 classifier; a dict output like torchvision's."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(),
        )
        self.classifier = nn.Conv2d(8, CLASSES, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.classifier(self.features(x))}


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    torch.manual_seed(0)
    net = Segmenter()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(150):
        x, y = scenes(8, gen)
        opt.zero_grad()
        nn.functional.cross_entropy(net(x)["out"], y).backward()
        opt.step()
    return net.eval()


def test_the_segmenter_learnt_the_squares(segmenter: Segmenter) -> None:
    x, y = scenes(16, torch.Generator().manual_seed(1))
    with torch.no_grad():
        predicted = segmenter(x)["out"].argmax(1)
    assert float((predicted == y).float().mean()) > 0.97


def test_each_class_map_lands_on_its_object(segmenter: Segmenter) -> None:
    x, y = scenes(8, torch.Generator().manual_seed(2))
    maps = explain_segmentation(segmenter, x, "grad-cam", classes=[1, 2])
    inside = []
    for i, per_class in enumerate(maps):
        assert sorted(per_class) == [1, 2]
        for c, m in per_class.items():
            obj = y[i] == c
            peak = int(m.argmax())
            assert bool(obj.flatten()[peak])  # the map's maximum is on the object
            inside.append(float(m[obj].sum() / m.sum()))
    # the object covers 1/16 of the image; most of each map's mass lies on it
    assert sum(inside) / len(inside) > 0.5


def test_the_instance_target_is_the_class_score_over_the_mask(segmenter: Segmenter) -> None:
    x, y = scenes(2, torch.Generator().manual_seed(3))
    masks = y == 1  # (B, H, W): one instance per image
    out = sacam.explain_full(segmenter, x, "grad-cam", targets=InstanceMaskTarget(1, masks))
    with torch.no_grad():
        scores = segmenter(x)["out"][:, 1]
    torch.testing.assert_close(out.scores, (scores * masks).flatten(1).sum(1))
    assert out.layers == ["features"]  # not the classifier, whose output is the model's


def test_a_class_index_on_a_segmentation_output_says_what_to_pass(segmenter: Segmenter) -> None:
    x = torch.rand(1, 3, SIZE, SIZE)
    with pytest.raises(TargetError, match=r"\(1, 3, 32, 32\).*SemanticSegmentationTarget"):
        sacam.explain(segmenter, x, "grad-cam", targets=1)
    with pytest.raises(TargetError, match="explain_segmentation"):
        sacam.explain(segmenter, x, "grad-cam")


def test_instance_masks_are_checked() -> None:
    with pytest.raises(TargetError, match="boolean mask"):
        InstanceMaskTarget(1, torch.ones(4, 4))
    with pytest.raises(TargetError, match="empty"):
        InstanceMaskTarget(1, torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(TargetError, match="does not fit the output"):
        InstanceMaskTarget(1, torch.ones(4, 4, dtype=torch.bool))(torch.zeros(1, 2, 8, 8))
