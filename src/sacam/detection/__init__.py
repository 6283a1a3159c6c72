"""Object detectors: explain one detection, or every detection of a class, with any method.

A detector's output is not a ``(B, classes)`` tensor, so a detection is explained through
the engine's ``output_transform``: :class:`DetectionScores` maps the detector's raw
output, for every forward pass a method makes (perturbed copies included), to a
``(rows, targets)`` tensor of per-image scores, one column per target, and each image
explains its own column. Every method then sees an ordinary ``(B, K)`` tensor and scores
each row (each perturbed copy) independently.

Two output conventions are read:

- **torchvision** (Faster R-CNN, RetinaNet, FCOS, SSD in eval mode): a list with one dict
  per image, ``boxes`` ``(n, 4)`` in ``xyxy`` pixels, ``labels`` ``(n,)``, ``scores``
  ``(n,)``. The detections change from pass to pass, so a detection is followed by its
  label and a reference box (:class:`DetectionTarget`).
- **YOLO-style dense predictions**: a tensor ``(B, N, D)`` or ``(B, D, N)`` with
  ``D = 4 + C`` (box, class scores: YOLOv8) or ``5 + C`` (box, objectness, class scores:
  YOLOv5), read as :class:`DenseFormat` says. Prediction ``n`` is the same anchor in every
  pass, so a target may name it by ``index`` as well as by a reference box.

Reference boxes are always ``xyxy`` pixels, whatever the model's own box format.
"""

from .boxes import BoxFormat, DenseFormat, box_iou, detections_of, nms, to_xyxy
from .maps import DEFAULT_METHOD, Detection, DetectionRecord, detect, explain, explain_detections
from .targets import (
    NO_GRADIENT,
    Box,
    ClassTarget,
    Column,
    DetectionScores,
    DetectionTarget,
    Target,
)

__all__ = [
    "DEFAULT_METHOD",
    "NO_GRADIENT",
    "Box",
    "BoxFormat",
    "ClassTarget",
    "Column",
    "DenseFormat",
    "Detection",
    "DetectionRecord",
    "DetectionScores",
    "DetectionTarget",
    "Target",
    "box_iou",
    "detect",
    "detections_of",
    "explain",
    "explain_detections",
    "nms",
    "to_xyxy",
]
