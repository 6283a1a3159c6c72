"""Detection and segmentation runs, per object: match, explain, score.

Each annotated object is matched to what the model predicts on the clean image:

- detection: the detection of the object's label (score at least ``score_threshold``)
  with the highest IoU with the true box, if that IoU is at least ``min_iou``; its map
  explains that detection (:class:`~sacam.detection.DetectionTarget` with the detection's
  own box, followed across perturbed copies by label and IoU);
- segmentation: the pixels the model labels with the object's class, if their IoU with
  the true class mask is at least ``min_iou``; its map explains the class's scores over
  those pixels (:class:`~sacam.targets.SemanticSegmentationTarget`). For an instance, the
  predicted pixels are the connected parts of the class's region that touch the instance
  (:class:`~sacam.targets.InstanceMaskTarget`).

An object without a match is *missed*: it gets no map and no metric values, and is
counted. A matched object's map is scored against the true region: the pointing game
(the map's maximum within ``tolerance`` pixels of the region), the share of the map's
energy inside it, and deletion/insertion curves of the matched prediction's own score
(the detection's score; the class's mean probability over its predicted pixels).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from ... import detection
from ..._outputs import logits_model, to_logits
from ...api import explain_full
from ...errors import ModelError
from ...filters import gaussian_blur
from ...images import load_image
from ...models import LoadedModel
from ...targets import InstanceMaskTarget, SemanticSegmentationTarget
from ..config import BenchmarkConfig
from ..curves import curve, pixel_rank
from ..faithfulness import step_size
from ..localization import energy_pointing_game, pointing_game
from .task_data import TaskImage, TaskObject, detection_objects, segmentation_objects

TASK_METRICS = ("pointing", "energy_pointing", "deletion", "insertion")
"""The registry's metrics a detection or segmentation run scores, per object."""

Scorer = Callable[[object], torch.Tensor]


def dense(config: BenchmarkConfig) -> detection.DenseFormat:
    """How the run reads a YOLO-style detector's tensor output."""
    return detection.DenseFormat(config.box_format, config.objectness, config.dense_layout)


@dataclass
class Match:
    """An object and what the model predicts for it: the target to explain, or None (missed).

    ``score`` is the matched prediction's score on the clean image and ``iou`` its
    overlap with the object (NaN where missed).
    """

    obj: TaskObject
    target: Any
    score: float
    iou: float


def match_detections(
    model: nn.Module, x: torch.Tensor, objects: Sequence[TaskObject], config: BenchmarkConfig
) -> list[Match]:
    """Each object's best-overlapping detection of its label (module docstring)."""
    found = detection.detect(
        model, x, score_threshold=config.score_threshold, max_detections=100, dense=dense(config)
    )
    matches = []
    for obj in objects:
        assert obj.box is not None
        same = [d for d in found if d.label == obj.label]
        best, best_iou = None, float("nan")
        if same:
            iou = detection.box_iou(torch.tensor([d.box for d in same]), torch.tensor(obj.box))
            k = int(iou.argmax())
            if float(iou[k]) >= config.min_iou and float(iou[k]) > 0:
                best, best_iou = same[k], float(iou[k])
        target = None if best is None else best.target(config.min_iou)
        matches.append(Match(obj, target, best.score if best else float("nan"), best_iou))
    return matches


def match_segments(
    model: nn.Module, x: torch.Tensor, objects: Sequence[TaskObject], config: BenchmarkConfig
) -> list[Match]:
    """Each class's predicted pixels, where they overlap its true mask enough."""
    with torch.inference_mode():
        logits = to_logits(model(x))
    if logits.ndim != 4:
        raise ModelError(
            f"--task segmentation needs a model whose output is a (B, classes, H, W) score "
            f"map; it returned {tuple(logits.shape)}: use --task detection or classification"
        )
    predicted = logits[0].argmax(0)
    probs = torch.softmax(logits[0].float(), 0)
    matches = []
    for obj in objects:
        region = predicted == obj.label
        if obj.instance:
            region = _components_on(region, obj.mask)
        at_input = F.interpolate(region[None, None].float(), size=obj.mask.shape, mode="nearest")
        pred = at_input[0, 0].bool().cpu()
        union = int((pred | obj.mask).sum())
        iou = int((pred & obj.mask).sum()) / union if union else 0.0
        if region.any() and iou >= config.min_iou:
            score = float(probs[obj.label][region].mean())
            target: Any = SemanticSegmentationTarget(obj.label, region.float())
            if obj.instance:
                target = InstanceMaskTarget(obj.label, region)
            matches.append(Match(obj, target, score, iou))
        else:
            matches.append(Match(obj, None, float("nan"), iou))
    return matches


def _components_on(region: torch.Tensor, instance: torch.Tensor) -> torch.Tensor:
    """The connected parts of a predicted class ``region`` that touch the ``instance``.

    ``region`` is on the output grid, ``instance`` at the input size (resized to the grid).
    """
    grid = F.interpolate(instance[None, None].float(), size=region.shape, mode="nearest")
    parts, _ = ndimage.label(region.cpu().numpy())
    touched = np.unique(parts[grid[0, 0].bool().numpy() & (parts > 0)])
    return torch.from_numpy(np.isin(parts, touched)).to(region.device)


class SegmentScores:
    """An ``output_transform``: each target's mean class probability over its pixels.

    The targets are :class:`~sacam.targets.SemanticSegmentationTarget` or
    :class:`~sacam.targets.InstanceMaskTarget` with a 2-D mask.

    Column ``t`` is ``mean(softmax(output)[:, c_t] over region_t)``, one row per image.
    """

    def __init__(self, targets: Sequence[SemanticSegmentationTarget | InstanceMaskTarget]) -> None:
        self.targets = list(targets)

    def __call__(self, output: object) -> torch.Tensor:
        """The ``(rows, targets)`` scores of a ``(rows, K, H, W)`` output."""
        probs = torch.softmax(to_logits(output).float(), 1)
        cols = []
        for t in self.targets:
            region = t.mask.to(probs.device, torch.float32)
            cols.append((probs[:, t.category] * region).flatten(1).sum(1) / region.sum())
        return torch.stack(cols, 1)


def explain_matches(
    model: nn.Module,
    x: torch.Tensor,
    matches: Sequence[Match],
    method: str,
    config: BenchmarkConfig,
) -> torch.Tensor:
    """The maps ``(k, S, S)`` of the matched objects of one image (``x`` is ``(1, C, S, S)``)."""
    targets = [m.target for m in matches]
    xs = x.expand(len(targets), *x.shape[1:])
    options = config.method_options.get(method, {})
    layer = config.method_layer()
    if config.task == "detection":
        ex = detection.explain(model, xs, targets, method, layer, dense=dense(config), **options)
    else:
        ex = explain_full(model, xs, method, layer, targets, **options)
    return ex.maps.detach().float()


def scorer(matches: Sequence[Match], config: BenchmarkConfig) -> Scorer:
    """The ``output_transform`` scoring each matched prediction (one column per match)."""
    targets = [m.target for m in matches]
    if config.task == "detection":
        return detection.DetectionScores(targets, dense(config))
    return SegmentScores(targets)


def score_maps(
    model: nn.Module,
    x: torch.Tensor,
    maps: torch.Tensor,
    matches: Sequence[Match],
    config: BenchmarkConfig,
) -> dict[str, torch.Tensor]:
    """Per-object values ``(k,)`` of the chosen metrics (:data:`TASK_METRICS`) of the maps."""
    masks = torch.stack([m.obj.mask for m in matches]).to(maps.device)
    chosen = set(config.metrics)
    values: dict[str, torch.Tensor] = {}
    if "pointing" in chosen:
        values["pointing_game"] = pointing_game(maps, masks, config.tolerance)
    if "energy_pointing" in chosen:
        values["energy_pointing_game"] = energy_pointing_game(maps, masks.cpu())
    curves = [kind for kind in ("deletion", "insertion") if kind in chosen]
    if not curves:
        return values
    k = len(matches)
    wrapped = logits_model(model, scorer(matches, config), activation="none")
    xs = x.expand(k, *x.shape[1:])
    step = step_size(x.shape[-2], x.shape[-1], config.steps)
    rank = pixel_rank(maps, config.seed)
    columns = torch.arange(k, device=x.device)
    per_pass = config.curve_inputs_per_pass
    for kind in curves:
        start, finish = (xs, torch.zeros_like(xs))
        if kind == "insertion":
            start, finish = gaussian_blur(xs, 11, 5.0), xs
        res = curve(wrapped, start, finish, maps, columns, step, per_pass, config.seed, rank)
        values[kind] = res.auc
    return values


def baselines(obj: TaskObject, tolerance: float) -> dict[str, float]:
    """What a uniformly random map scores on ``obj`` on average.

    ``pointing_baseline``: the share of pixels within ``tolerance`` of the region (where a
    random maximum hits); ``energy_baseline``: the region's share of the image.
    """
    mask = obj.mask.cpu().numpy()
    near = ndimage.distance_transform_edt(~mask) <= tolerance
    return {"pointing_baseline": float(near.mean()), "energy_baseline": float(mask.mean())}


def match_image(
    lm: LoadedModel, image: TaskImage, config: BenchmarkConfig
) -> tuple[torch.Tensor, torch.Tensor, list[Match]]:
    """One image read and its objects matched to the model's predictions.

    Returns the ``(3, S, S)`` pixels in [0, 1], the model input ``(1, C, S, S)`` on the
    run's device, and one :class:`Match` per annotated object.
    """
    picture = load_image(str(image.path))
    pixels = lm.preprocess.pixels(picture)
    x = lm.preprocess.normalize(pixels)[None].to(config.device)
    if config.task == "detection":
        objects = detection_objects(image, picture.size, lm.preprocess)
        return pixels, x, match_detections(lm.model, x, objects, config)
    objects = segmentation_objects(image, lm.preprocess)
    return pixels, x, match_segments(lm.model, x, objects, config)
