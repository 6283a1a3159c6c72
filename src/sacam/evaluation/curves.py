"""Deletion / insertion curves: perturbed forward passes in tuned batches.

:func:`curve` runs every image's ``n + 1`` perturbation points through the model in
forward passes drawn across images; sacam's one tuner (:mod:`sacam._speed.tuner`) picks
their inputs per pass and memory format by timing the curves' own first chunks. The
metrics built on them, deletion and insertion, live in
:mod:`sacam.evaluation.faithfulness`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .._hooks import model_guard
from .._layers import probe
from .._outputs import logits_model, probabilities
from .._speed.memory import device_budget_mb, memory_cap
from .._speed.tuner import PerPass, Plan, Tuner, check_inputs_per_pass, sync, tuner_for
from ..errors import InputError


@dataclass
class CurveResult:
    """Per-sample AUCs of a deletion or insertion curve, and the curves themselves."""

    auc: torch.Tensor  # (B,)
    curves: torch.Tensor  # (B, n + 1)
    step: int


def pixel_rank(maps: torch.Tensor, seed: int) -> torch.Tensor:
    """Rank of each pixel by decreasing saliency (0 = most salient); seeded tiny jitter.

    Ties (a clipped map's zeros: often half its pixels) are broken by a jitter of at most
    1e-9 drawn once per call from ``seed`` for one image's pixels and added to every row,
    so an image's ranking does not depend on its place in the batch.
    """
    flat = maps.flatten(1).double()
    g = torch.Generator(device="cpu").manual_seed(seed)
    jitter = torch.rand(flat.shape[1], generator=g, dtype=torch.float64).to(flat.device) * 1e-9
    order = torch.argsort(flat + jitter, dim=1, descending=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return rank


def curve(
    model: nn.Module,
    start: torch.Tensor,
    finish: torch.Tensor,
    maps: torch.Tensor,
    classes: torch.Tensor,
    step: int,
    inputs_per_pass: PerPass = "auto",
    seed: int = 0,
    rank: torch.Tensor | None = None,
) -> CurveResult:
    """Probability of each class as pixels switch from ``start`` to ``finish`` by rank.

    Every image's ``n + 1`` perturbation points go through the model together, in
    forward passes of ``inputs_per_pass`` perturbed images drawn across images, and the
    probabilities stay on the device (no host sync per pass but while tuning).

    Args:
        model: the classifier.
        start: ``(B, C, H, W)`` images at point 0.
        finish: ``(B, C, H, W)`` images once every pixel is switched.
        maps: ``(B, H, W)`` saliency; pixels switch in decreasing saliency.
        classes: ``(B,)`` class per image.
        step: pixels switched per point.
        inputs_per_pass: the most perturbed images one forward pass holds, or ``"auto"``
            (tuned on the curves' own chunks within the device's memory budget, then
            settled and cached; :mod:`sacam._speed.tuner`).
        seed: seed of the tie-breaking jitter.
        rank: ``pixel_rank(maps, seed)`` when already computed (deletion and insertion share it).
    """
    b_count, _, h, w = start.shape
    points = math.ceil(h * w / step) + 1
    rank = (pixel_rank(maps, seed) if rank is None else rank).to(torch.int32)
    device = start.device
    thresholds = (torch.arange(points, device=device) * step).to(torch.int32)  # switched at t
    classes = classes.to(device)
    total = b_count * points
    probs, model = torch.empty(total, device=device), logits_model(model)
    with model_guard(model):
        tuner = _tuner(model, start, inputs_per_pass)
        settled = tuner.settled
        for _ in range(1 if settled else 2):  # a tuned first call runs again, settled
            _curve_passes(model, tuner, probs, (start, finish, rank, thresholds), classes, points)
            tuner.settle()
    curves = probs.view(b_count, points).cpu()
    xs = (thresholds.clamp(max=h * w) / (h * w)).double().cpu()  # the last step may be partial
    auc = torch.trapezoid(curves.double(), xs, dim=1).float()
    return CurveResult(auc=auc, curves=curves, step=step)


def _curve_passes(
    model: nn.Module,
    tuner: Tuner,
    probs: torch.Tensor,
    curve: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    classes: torch.Tensor,
    points: int,
) -> None:
    """Every perturbation point's class probability into ``probs``, chunk by chunk.

    ``curve`` is ``(start, finish, rank, thresholds)`` of :func:`curve`.
    """
    start, finish, rank, thresholds = curve
    device, total, lo = start.device, probs.shape[0], 0
    with torch.inference_mode():
        while lo < total:
            plan, timed = tuner.next(total - lo)
            hi = min(lo + plan.inputs_per_pass, total)
            t0 = sync(device) if timed else 0.0
            img = torch.arange(lo, hi, device=device) // points
            fmt = torch.channels_last if plan.channels_last else torch.contiguous_format
            x = _perturbed(start, finish, rank, thresholds, lo, hi, fmt)
            logits = model(x)
            probs[lo:hi] = probabilities(model, logits).gather(1, classes[img, None])[:, 0]
            if timed and hi - lo == plan.inputs_per_pass:
                tuner.record(plan, 1000 * (sync(device) - t0) / (hi - lo))
            lo = hi


def _perturbed(
    start: torch.Tensor,
    finish: torch.Tensor,
    rank: torch.Tensor,
    thresholds: torch.Tensor,
    lo: int,
    hi: int,
    fmt: torch.memory_format,
) -> torch.Tensor:
    """Perturbed inputs ``lo..hi`` of the flattened (image, point) grid, in format ``fmt``.

    Written image by image straight into one buffer of the pass's memory format, from
    the image's ``start`` and ``finish`` broadcast over its points (no gathered copies).
    """
    points = thresholds.shape[0]
    _, c, h, w = start.shape
    x = torch.empty((hi - lo, c, h, w), dtype=start.dtype, device=start.device)
    x = x.contiguous(memory_format=fmt)
    i = lo
    while i < hi:
        b = i // points
        end = min(hi, (b + 1) * points)
        t = thresholds[i - b * points : end - b * points, None]
        switched = (rank[b][None] < t).view(-1, 1, h, w)
        torch.where(switched, finish[b : b + 1], start[b : b + 1], out=x[i - lo : end - lo])
        i = end
    return x


def _tuner(model: nn.Module, images: torch.Tensor, inputs_per_pass: object) -> Tuner:
    """The (cached) tuner of the curves' passes; fixed for a whole-number ``inputs_per_pass``."""
    per_pass = check_inputs_per_pass(inputs_per_pass, error=InputError)
    if per_pass != "auto":
        return Tuner.fixed(Plan(per_pass, False))

    def cap() -> int:
        budget = device_budget_mb(images.device)
        return memory_cap(probe(model, images[:1]), tuple(images.shape[1:]), budget)

    return tuner_for(model, images[0], "curves", cap)


def tuned_plan(model: nn.Module, images: torch.Tensor) -> Plan:
    """The curves' inputs per pass and memory format for ``model`` and inputs like ``images``."""
    return _tuner(model, images, "auto").best()
