"""Detection datasets on disk for the benchmark tests, and the run settings they share.

:func:`write_detection_set` writes scenes of :func:`tests.support.detectors.scenes` as PNG
files with an ``annotations.csv`` of their boxes, plus a plain grey image whose one
annotated object no detector finds; :func:`detection_config` is a run of the trained tiny
detector on them.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sacam.evaluation.config import BenchmarkConfig
from tests.support.detectors import scenes
from tests.support.segmenters import square_scenes

DETECTOR = "tests.support.task_models:detector"
SEGMENTER = "tests.support.segmenters:segmenter"


def save_png(image: torch.Tensor, path: Path) -> None:
    """Save ``(3, H, W)`` pixels in [0, 1] as an 8-bit PNG."""
    arr = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(arr).save(path)


def write_detection_set(root: Path, n: int, seed: int = 11) -> int:
    """``n`` scenes of one or two squares and ``plain.png``; the number of objects."""
    images, boxes, labels = scenes(n, seed=seed, objects=(1, 2))
    rows: list[list[Any]] = []
    for i, image in enumerate(images):
        save_png(image, root / f"scene{i:02d}.png")
        for box, label in zip(boxes[i].tolist(), labels[i].tolist(), strict=True):
            rows.append([f"scene{i:02d}.png", label, *box])
    save_png(torch.full((3, 64, 64), 0.5), root / "plain.png")
    rows.append(["plain.png", 1, 10.0, 10.0, 26.0, 26.0])
    with (root / "annotations.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "label", "x0", "y0", "x1", "y1"])
        writer.writerows(rows)
    return len(rows)


def write_segmentation_scenes(root: Path, n: int, seed: int) -> list[str]:
    """``n`` square scenes as ``s{i}.png`` with class masks ``m{i}.png``; the CSV lines.

    The lines start with the header ``file,mask``; write them as ``annotations.csv``
    (after any more rows).
    """
    x, y = square_scenes(n, seed=seed)
    lines = ["file,mask"]
    for i in range(len(x)):
        save_png(x[i], root / f"s{i}.png")
        Image.fromarray(y[i].numpy().astype(np.uint8), mode="L").save(root / f"m{i}.png")
        lines.append(f"s{i}.png,m{i}.png")
    return lines


def detection_config(data: Path, out: Path, **changes: Any) -> BenchmarkConfig:
    """Grad-CAM and the random baseline on the tiny detector's backbone, strict pointing."""
    settings: dict[str, Any] = {
        "out": out,
        "model": DETECTOR,
        "image_size": 64,
        "mean": (0.0, 0.0, 0.0),
        "std": (1.0, 1.0, 1.0),
        "methods": ["grad-cam", "random"],
        "task": "detection",
        "layer": ["backbone"],
        "tolerance": 0.0,
        "curve_inputs_per_pass": 64,
    }
    return BenchmarkConfig(data, **(settings | changes))


def result_rows(out: Path) -> list[dict[str, str]]:
    """The rows of a run's ``results.csv``."""
    with (out / "results.csv").open(newline="") as f:
        return list(csv.DictReader(f))
