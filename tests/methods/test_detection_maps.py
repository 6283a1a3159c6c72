"""Maps of detections land on the objects: a pointing game on a detector trained here.

:func:`tests.support.detectors.trained_detector` trains :class:`sacam.examples.TinyDetector`
(seed 0, 300 Adam steps, about 10 s on one core) on 64×64 grey scenes with coloured
squares of two classes. For every true object, the detection of its label with the
highest IoU (at least 0.5) among :func:`sacam.detection.explain_detections`'s records is
the object's detection, and the object is a hit when the argmax of that detection's map
lies inside the true box (no detection: a miss). The random baseline is the mean share
of the image a true box covers (about 0.07).

Measured hit rates on the scenes below (seed 0, and the range over training seeds 0-3):

    method                   one object    two, distinct classes   two, same class
    grad-cam                 1.00 (1.00)        1.00 (1.00)          0.83 (0.83-0.88)
    hires-cam                1.00 (1.00)        1.00 (1.00)          0.96 (0.92-0.96)
    grad-cam++               0.92 (0.58-0.92)   0.83 (0.50-0.88)     0.42 (0.42-0.50)
    sa-cam, temperature=30   1.00 (0.92-1.00)   0.92 (0.92-1.00)     0.88 (0.83-0.88)
    sa-cam, temperature=50   1.00 (1.00)        1.00 (1.00)          0.88 (0.83-0.88)
    sa-cam, defaults         0.58 (0.17-0.58)   0.50 (0.12-0.50)     0.29 (0.12-0.38)
    recipro-cam              1.00 (1.00)        1.00 (1.00)          0.92 (0.92)
    eigen-cam, center=True   0.92 (0.92-1.00)   0.50 (0.50)          0.46 (0.46-0.50)
    ablation-cam             0.83 (0.33-0.83)   0.71 (0.29-0.71)     0.42 (0.33-0.42)
    score-cam                0.42 (0.25-0.58)   0.17 (0.17-0.29)     0.21 (0.21-0.33)

(Recipro-CAM on the first six scenes of each set.) Grad-CAM through the dense view
(YOLO-style, index targets), two objects of distinct classes: 0.96 (0.96-1.00).

The cases asserted here hold for every seed measured, with hit rate ≥ 0.8 and ≥ 3× the
baseline: one per family (gradient, attention, gradient-free), and the dense view.
Eigen-CAM is class-agnostic, so it is asserted on one-object scenes only. Grad-CAM++ is
asserted at 3× the baseline only: its weights keep positive gradients alone and are not
scale-free, and on this detector's probability scores its hit rate depends on the
training seed. SA-CAM's default temperature (10) spreads the attention over this 8×8
layer, and the base map of one detection is negative over the background, so the
diffused map of the object's cells falls below zero: a constant map, its argmax in a
corner. 30 keeps the attention on the object, and at 50 SA-CAM points as well as
Grad-CAM, whose map it then nearly equals (sacam.detection.DEFAULT_METHOD is Grad-CAM).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from sacam import detection
from sacam.detection import DenseFormat, box_iou
from tests.support.detectors import SIZE, DenseView, scenes, trained_detector

Scenes = tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Small convolutions: one thread is faster, and fair to a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pointing_game(
    model: torch.nn.Module,
    data: Scenes,
    method: str,
    layer: str,
    dense: DenseFormat | None = None,
    **options: Any,
) -> tuple[float, float]:
    """``(hit rate, random baseline)`` over every true object of ``data``."""
    hits, areas = [], []
    for image, boxes, labels in zip(*data, strict=True):
        records = detection.explain_detections(
            model, image, method, layer, score_threshold=0.3, dense=dense, **options
        )
        for box, label in zip(boxes, labels, strict=True):
            areas.append(float((box[2] - box[0]) * (box[3] - box[1])) / SIZE**2)
            wanted = int(label) - (1 if dense is not None else 0)  # dense: class columns
            matched = [
                (float(box_iou(torch.tensor([r.box]), box)[0]), r)
                for r in records
                if r.label == wanted
            ]
            matched = [(iou, r) for iou, r in matched if iou >= 0.5]
            if not matched:
                hits.append(False)
                continue
            cam = max(matched, key=lambda m: m[0])[1].map
            row, col = divmod(int(cam.argmax()), cam.shape[1])
            hits.append(bool(box[0] <= col < box[2] and box[1] <= row < box[3]))
    return sum(hits) / len(hits), sum(areas) / len(areas)


ONE = scenes(12, seed=8, objects=(1,))
TWO = scenes(12, seed=7, objects=(2,), distinct=True)
FEW = (TWO[0][:6], TWO[1][:6], TWO[2][:6])

# the least hit rate of each case, on every CPU the detector may be trained on; Eigen-CAM's
# first principal component ignores the class, and its rate moved between 0.75 and 1.0
# with the CPU kernels the training ran on (the others stayed at 0.83 to 1.0)
CASES = [
    pytest.param("grad-cam", {}, TWO, 0.8, id="grad-cam"),
    pytest.param("hires-cam", {}, TWO, 0.8, id="hires-cam"),
    pytest.param("sa-cam", {"temperature": 30.0}, TWO, 0.8, id="sa-cam"),
    pytest.param("sa-cam", {"temperature": 50.0}, TWO, 0.9, id="sa-cam-temperature-50"),
    pytest.param("recipro-cam", {}, FEW, 0.8, id="recipro-cam"),
    pytest.param("eigen-cam", {"center": True}, ONE, 0.6, id="eigen-cam-one-object"),
]


@pytest.mark.parametrize(("method", "options", "data", "least"), CASES)
def test_maps_of_detections_point_at_their_objects(
    method: str, options: dict[str, Any], data: Scenes, least: float
) -> None:
    net = trained_detector()
    hit, baseline = pointing_game(net, data, method, "backbone", **options)
    assert hit >= least and hit >= 5 * baseline, (method, hit, baseline)


def test_grad_cam_plus_plus_points_above_chance() -> None:
    hit, baseline = pointing_game(trained_detector(), ONE, "grad-cam++", "backbone")
    assert hit >= 3 * baseline, (hit, baseline)


def test_dense_predictions_point_at_their_objects() -> None:
    view = DenseView(trained_detector(), objectness=True, layout="bdn")
    fmt = DenseFormat(objectness=True)
    hit, baseline = pointing_game(view, TWO, "grad-cam", "net.backbone", dense=fmt)
    assert hit >= 0.8 and hit >= 3 * baseline, (hit, baseline)


def test_the_detector_finds_the_objects() -> None:
    """The premise: a detection of the right label on (nearly) every true object."""
    net = trained_detector()
    found = total = 0
    for image, boxes, labels in zip(*TWO, strict=True):
        dets = detection.detect(net, image, score_threshold=0.3)
        for box, label in zip(boxes, labels, strict=True):
            total += 1
            found += any(
                d.label == int(label) and float(box_iou(torch.tensor([d.box]), box)[0]) >= 0.5
                for d in dets
            )
    assert found >= 0.9 * total, (found, total)
