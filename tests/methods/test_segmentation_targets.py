"""Segmentation outputs: instance-mask targets, per-class maps in one call, clear errors."""

from __future__ import annotations

import pytest
import torch

import sacam
from sacam.errors import TargetError
from sacam.labels import explain_segmentation
from sacam.targets import InstanceMaskTarget
from tests.support.segmenters import SIZE, SquareSegmenter, square_scenes, trained_segmenter


@pytest.fixture(scope="module")
def segmenter() -> SquareSegmenter:
    """The segmenter trained on red and blue squares (classes 1 and 2)."""
    return trained_segmenter()


def test_the_segmenter_learnt_the_squares(segmenter: SquareSegmenter) -> None:
    x, y = square_scenes(16, seed=1)
    with torch.no_grad():
        predicted = segmenter(x)["out"].argmax(1)
    assert float((predicted == y).float().mean()) > 0.97


def test_each_class_map_lands_on_its_object(segmenter: SquareSegmenter) -> None:
    x, y = square_scenes(8, seed=2)
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


def test_the_instance_target_is_the_class_score_over_the_mask(segmenter: SquareSegmenter) -> None:
    x, y = square_scenes(2, seed=3)
    masks = y == 1  # (B, H, W): one instance per image
    out = sacam.explain_full(segmenter, x, "grad-cam", targets=InstanceMaskTarget(1, masks))
    with torch.no_grad():
        scores = segmenter(x)["out"][:, 1]
    torch.testing.assert_close(out.scores, (scores * masks).flatten(1).sum(1))
    assert out.layers == ["features"]  # not the classifier, whose output is the model's


def test_a_class_index_on_a_segmentation_output_says_what_to_pass(
    segmenter: SquareSegmenter,
) -> None:
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
