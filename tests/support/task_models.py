"""Models for the command line and the web app by ``--model tests.support.task_models:NAME``.

:func:`detector` is the tiny detector trained on coloured squares
(:func:`tests.support.detectors.trained_detector`), a copy each call; :func:`dense_detector`
the same network as a YOLO-style ``(B, N, 4 + 2)`` tensor with ``xyxy`` boxes;
:func:`segmenter` a small seeded network with a ``(B, 3, H, W)`` score map.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from tests.support.detectors import DenseView, trained_detector


def detector() -> nn.Module:
    """The trained tiny detector (torchvision-style output), a fresh copy."""
    return copy.deepcopy(trained_detector())


def dense_detector() -> nn.Module:
    """The trained tiny detector as a dense ``(B, N, 6)`` output, boxes ``xyxy``."""
    return DenseView(detector(), box_format="xyxy")


def segmenter() -> nn.Module:
    """A seeded fully convolutional network: a 3-class score map at the input's size."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 3, 1),
    )
