"""Detection targets, dense outputs, the explain functions and the detection drawing.

The scores are checked against hand-computed values on hand-written outputs; the
explain functions run on :class:`sacam.examples.TinyDetector` with random weights
(their maps' meaning is tested in ``tests/methods/test_detection_maps.py``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sacam
from sacam import detection
from sacam.detection import ClassTarget, DenseFormat, DetectionScores, DetectionTarget
from sacam.errors import MethodError, ModelError, TargetError
from sacam.examples import TinyDetector, tiny_detector
from sacam.viz import BOX_COLOURS, draw_detections
from tests.support.detectors import DenseView, DetachedDetector


def _dicts() -> list[dict[str, torch.Tensor]]:
    """Two images: three detections, then none."""
    return [
        {
            "boxes": torch.tensor([[0.0, 0, 10, 10], [2, 0, 12, 10], [20, 20, 30, 30]]),
            "labels": torch.tensor([1, 1, 2]),
            "scores": torch.tensor([0.6, 0.8, 0.9]),
        },
        {
            "boxes": torch.zeros(0, 4),
            "labels": torch.zeros(0, dtype=torch.long),
            "scores": torch.zeros(0),
        },
    ]


@pytest.fixture
def net() -> TinyDetector:
    torch.manual_seed(0)
    return tiny_detector().eval()


@pytest.fixture
def scene() -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))


# ----------------------------------------------------------------- scoring


def test_box_target_matches_by_label_and_iou() -> None:
    out = _dicts()
    # IoU of (2, 0, 12, 10) with (0, 0, 10, 10): 80 / 120
    cases = {
        DetectionTarget(1, box=(0, 0, 10, 10)): [max(0.6 * 1.0, 0.8 * 80 / 120), 0.0],
        DetectionTarget(1, box=(0, 0, 10, 10), iou_weighted=False): [0.6, 0.0],
        DetectionTarget(1, box=(2, 0, 12, 10), iou_weighted=False): [0.8, 0.0],
        DetectionTarget(1, box=(0, 0, 10, 10), min_iou=0.9): [0.6, 0.0],
        DetectionTarget(2, box=(0, 0, 10, 10)): [0.0, 0.0],  # the label-2 box is elsewhere
        DetectionTarget(1, box=(40, 40, 50, 50)): [0.0, 0.0],  # nothing there
        DetectionTarget(1): [0.8, 0.0],  # best of the label anywhere
        ClassTarget(1): [1.4, 0.0],
        ClassTarget(1, score_threshold=0.7): [0.8, 0.0],
    }
    for target, expected in cases.items():
        got = DetectionScores([target])(out)
        assert got.shape == (2, 1)
        assert torch.allclose(got[:, 0], torch.tensor(expected)), (target, got)


def test_columns_hold_one_target_each_and_rows_are_independent() -> None:
    out = _dicts()
    targets = [DetectionTarget(2, box=(20, 20, 30, 30)), ClassTarget(1)]
    both = DetectionScores(targets)(out)
    assert torch.allclose(both, torch.tensor([[0.9, 1.4], [0.0, 0.0]]))
    for row in range(2):  # a row's scores do not depend on the other rows of the pass
        assert torch.equal(DetectionScores(targets)([out[row]]), both[row : row + 1])
    assert DetectionScores(targets).column(1)(both).tolist() == pytest.approx([1.4, 0.0])


def test_bad_targets_are_refused_with_what_to_do() -> None:
    with pytest.raises(TargetError, match="x2 > x1"):
        DetectionTarget(1, box=(10, 10, 5, 20))
    with pytest.raises(TargetError, match="not both"):
        DetectionTarget(1, box=(0, 0, 1, 1), index=3)
    with pytest.raises(TargetError, match="min_iou"):
        DetectionTarget(1, box=(0, 0, 1, 1), min_iou=1.5)
    with pytest.raises(TargetError, match="give the detection's box"):
        DetectionScores([DetectionTarget(1, index=0)])(_dicts())
    with pytest.raises(TargetError, match="lacks"):
        DetectionScores([ClassTarget(1)])([{"boxes": torch.zeros(0, 4)}])
    with pytest.raises(TargetError, match="list of dicts"):
        DetectionScores([ClassTarget(1)])(torch.zeros(2, 5))
    with pytest.raises(TargetError, match="non-empty list"):
        DetectionScores([])


def _dense_rows() -> torch.Tensor:
    """(1, 3, 4 + 1 + 2): xywh box, objectness, two class scores."""
    return torch.tensor(
        [
            [
                [5.0, 5.0, 10.0, 10.0, 0.5, 0.8, 0.2],  # xyxy (0, 0, 10, 10)
                [25.0, 25.0, 10.0, 10.0, 1.0, 0.1, 0.9],  # xyxy (20, 20, 30, 30)
                [6.0, 5.0, 10.0, 10.0, 0.9, 0.5, 0.5],  # xyxy (1, 0, 11, 10): IoU 90/110
            ]
        ]
    )


def test_dense_outputs_by_index_and_by_box() -> None:
    rows = _dense_rows()
    fmt = DenseFormat(objectness=True, num_classes=2)
    by_index = DetectionScores([DetectionTarget(0, index=0), DetectionTarget(1, index=1)], fmt)
    assert torch.allclose(by_index(rows), torch.tensor([[0.5 * 0.8, 1.0 * 0.9]]))
    by_box = DetectionScores([DetectionTarget(0, box=(0, 0, 10, 10))], fmt)
    assert torch.allclose(by_box(rows), torch.tensor([[max(0.4, 0.45 * 90 / 110)]]))
    unweighted = DetectionScores([DetectionTarget(0, box=(1, 0, 11, 10), iou_weighted=False)], fmt)
    assert torch.allclose(unweighted(rows), torch.tensor([[0.45]]))
    # the same predictions as (B, D, N), in corner format, as a (pred, aux) tuple
    corners = rows.clone()
    corners[..., :4] = detection.to_xyxy(rows[..., :4], "xywh")
    other = DenseFormat(box_format="xyxy", objectness=True, num_classes=2)
    again = DetectionScores([DetectionTarget(0, box=(0, 0, 10, 10))], other)
    assert torch.allclose(again((corners.transpose(1, 2), "aux")), by_box(rows))


def test_dense_layout_is_read_from_the_shapes_or_named() -> None:
    rows = torch.rand(2, 16, 6)  # (B, N, 4 + 2)
    target = [ClassTarget(1)]
    expected = rows[..., 5].sum(1, keepdim=True)
    assert torch.allclose(DetectionScores(target)(rows), expected)
    assert torch.allclose(DetectionScores(target)(rows.transpose(1, 2)), expected)
    square = torch.rand(1, 6, 6)
    with pytest.raises(TargetError, match="layout='bnd'"):
        DetectionScores(target)(square)
    named = DetectionScores(target, DenseFormat(layout="bnd"))(square)
    assert torch.allclose(named, square[..., 5].sum(1, keepdim=True))
    with pytest.raises(TargetError, match="not 4 \\+ 1 \\+ 3 = 8"):
        DetectionScores(target, DenseFormat(objectness=True, num_classes=3, layout="bnd"))(rows)
    with pytest.raises(TargetError, match="out of range"):
        DetectionScores([ClassTarget(5)])(rows)
    with pytest.raises(TargetError, match="out of range"):
        DetectionScores([DetectionTarget(0, index=99)])(rows)


def test_scores_keep_the_graph_to_the_input(net: TinyDetector, scene: torch.Tensor) -> None:
    x = scene.clone().requires_grad_(True)
    scores = DetectionScores([ClassTarget(1), ClassTarget(2)])(net(x))
    (grad,) = torch.autograd.grad(scores.sum(), x)
    assert grad.abs().sum() > 0


# ----------------------------------------------------------------- explaining


def test_explain_gives_each_image_its_own_target(net: TinyDetector, scene: torch.Tensor) -> None:
    (first,) = detection.detect(net, scene[0], score_threshold=0.0, max_detections=1)
    targets = [first.target(), ClassTarget(2)]
    for method in ("grad-cam", "ablation-cam", "score-cam"):
        both = detection.explain(net, scene, targets, method, "backbone")
        for b in range(2):
            one = detection.explain(net, scene[b : b + 1], targets[b], method, "backbone")
            assert torch.allclose(both.maps[b], one.maps[0], atol=1e-5), method
            assert torch.allclose(both.scores[b], one.scores[0])
    assert both.maps.shape == (2, 32, 32) and both.class_idx is None


def test_explain_refuses_what_it_sets_itself(net: TinyDetector, scene: torch.Tensor) -> None:
    with pytest.raises(MethodError, match="output_transform"):
        detection.explain(net, scene, ClassTarget(1), "grad-cam", output_transform=lambda o: o)
    with pytest.raises(MethodError, match="tta"):
        detection.explain(net, scene, ClassTarget(1), "grad-cam", tta=True)
    with pytest.raises(TargetError, match="3 detection targets for 2 images"):
        detection.explain(net, scene, [ClassTarget(1)] * 3, "grad-cam")


def test_detached_post_processing_is_named_for_gradient_methods(
    net: TinyDetector, scene: torch.Tensor
) -> None:
    detached = DetachedDetector(net)
    for method in ("grad-cam", "grad-cam++", "sa-cam"):
        with pytest.raises(ModelError, match="carry no gradient.*eigen-cam, ablation-cam"):
            detection.explain(detached, scene, ClassTarget(1), method, "net.backbone")
    for method in ("eigen-cam", "ablation-cam"):  # gradient-free methods need no graph
        plain = detection.explain(net, scene, ClassTarget(1), method, "backbone").maps
        same = detection.explain(detached, scene, ClassTarget(1), method, "net.backbone").maps
        assert torch.equal(plain, same), method


def test_detect_and_explain_detections_agree(net: TinyDetector, scene: torch.Tensor) -> None:
    image = scene[0]
    found = detection.detect(net, image, score_threshold=0.0, max_detections=3)
    assert len(found) == 3 and [d.score for d in found] == sorted(
        (d.score for d in found), reverse=True
    )
    with torch.no_grad():
        (out,) = net(image[None])
    assert found[0].score == pytest.approx(float(out["scores"].max()))
    assert found[0].box == pytest.approx(out["boxes"][out["scores"].argmax()].tolist())
    flags = [m.training for m in net.modules()]
    records = detection.explain_detections(
        net, image, "grad-cam", "backbone", score_threshold=0.0, max_detections=3, batch_size=2
    )
    assert [(r.box, r.label, r.score) for r in records] == [
        (d.box, d.label, d.score) for d in found
    ]
    for r, d in zip(records, found, strict=True):
        alone = detection.explain(net, image[None], d.target(), "grad-cam", "backbone").maps[0]
        assert r.map.shape == (32, 32) and torch.allclose(r.map, alone, atol=1e-5)
    assert [m.training for m in net.modules()] == flags
    assert all(p.requires_grad for p in net.parameters())
    every = detection.detect(net, image, score_threshold=0.0, max_detections=100)
    label = every[-1].label
    only = detection.detect(net, image, score_threshold=0.0, max_detections=100, classes=[label])
    assert only == [d for d in every if d.label == label]
    assert (
        detection.explain_detections(net, image, "grad-cam", "backbone", score_threshold=1.1) == []
    )


def test_dense_detections_are_explained_by_index(net: TinyDetector, scene: torch.Tensor) -> None:
    image = scene[1]
    dense = DenseView(net, objectness=True, layout="bdn")
    fmt = DenseFormat(objectness=True)
    found = detection.detect(dense, image, dense=fmt, score_threshold=0.0, max_detections=4)
    with torch.no_grad():
        (plain,) = net(image[None])  # the same network with its own suppression
    assert found[0].label == int(plain["labels"][0]) - 1
    assert found[0].score == pytest.approx(float(plain["scores"][0]), rel=1e-4)
    assert all(d.index is not None for d in found)
    records = detection.explain_detections(
        dense, image, "grad-cam", "net.backbone", dense=fmt, score_threshold=0.0, max_detections=4
    )
    # the index target scores exactly the dict target's class score of the same cell
    first = detection.explain(
        dense, image[None], found[0].target(), "grad-cam", "net.backbone", dense=fmt
    )
    assert torch.allclose(first.scores, torch.tensor([found[0].score]), rtol=1e-4)
    assert torch.allclose(records[0].map, first.maps[0], atol=1e-5)


def test_sacam_explain_takes_the_scorer_as_output_transform(
    net: TinyDetector, scene: torch.Tensor
) -> None:
    scorer = DetectionScores([ClassTarget(1)])
    maps = sacam.explain(
        net, scene, "grad-cam", "backbone", targets=scorer.column(0), output_transform=scorer
    )
    assert torch.equal(
        maps, detection.explain(net, scene, ClassTarget(1), "grad-cam", "backbone").maps
    )


# ----------------------------------------------------------------- drawing


def test_drawn_boxes_have_their_colour_on_their_outline() -> None:
    records = [
        detection.DetectionRecord((10.0, 20.0, 40.0, 50.0), 1, 0.9, torch.zeros(64, 64)),
        detection.DetectionRecord((30.0, 5.0, 60.0, 25.0), 2, 0.7, torch.ones(64, 64)),
    ]
    image = torch.full((3, 64, 64), 0.5)
    picture = np.asarray(draw_detections(image, records, width=1))
    assert picture.shape == (64, 64, 3)
    one, two = BOX_COLOURS[1], BOX_COLOURS[2]
    # the left and bottom edges of the first box, the right edge of the second
    for y in (30, 40, 49):
        assert tuple(picture[y, 10]) == one
    for x in (15, 25):
        assert tuple(picture[50, x]) == one
    for y in (10, 20):
        assert tuple(picture[y, 60]) == two
    assert tuple(picture[35, 25]) != one  # inside: the map, no outline
    panels = np.asarray(
        draw_detections(image, records, combined=False, colours={1: (255, 0, 255)}, width=1)
    )
    assert panels.shape == (64, 128, 3)
    assert tuple(panels[40, 10]) == (255, 0, 255)  # first panel, first box
    assert tuple(panels[15, 64 + 60]) == two  # second panel, second box
    assert tuple(panels[40, 64 + 10]) != (255, 0, 255)  # the second panel has no first box
