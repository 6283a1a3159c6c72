"""Deletion / insertion curves: perturbed forward passes in tuned batches.

:func:`curve` runs every image's ``n + 1`` perturbation points through the model in
forward passes drawn across images; :class:`_Tuner` picks their batch size and memory
format by timing the curves' own first chunks (the choice kept on disk by
:mod:`sacam._plancache`). The metrics built on them, deletion and insertion, live in
:mod:`sacam.evaluation.faithfulness`.
"""

from __future__ import annotations

import math
import time
import weakref
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from .._hooks import model_guard
from .._layers import probe
from .._outputs import logits_model, unwrap
from .._plancache import load_plan, plan_key, save_plan
from .._tuning import Plan, candidate_batches, device_budget_mb, memory_cap
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
    batch_size: int | Literal["auto"] = "auto",
    seed: int = 0,
    rank: torch.Tensor | None = None,
) -> CurveResult:
    """Probability of each class as pixels switch from ``start`` to ``finish`` by rank.

    Every image's ``n + 1`` perturbation points go through the model together, in
    forward passes of ``batch_size`` perturbed images drawn across images, and the
    probabilities stay on the device (no host sync per pass but while tuning).

    Args:
        model: the classifier.
        start: ``(B, C, H, W)`` images at point 0.
        finish: ``(B, C, H, W)`` images once every pixel is switched.
        maps: ``(B, H, W)`` saliency; pixels switch in decreasing saliency.
        classes: ``(B,)`` class per image.
        step: pixels switched per point.
        batch_size: perturbed images per forward pass, or ``"auto"`` (tuned on the curves'
            own first chunks, then cached; see :class:`_Tuner`).
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
        tuner = _tuner(model, start, batch_size)
        lo = 0
        with torch.inference_mode():
            while lo < total:
                plan, timed = tuner.next(total - lo)
                hi = min(lo + plan.batch_size, total)
                t0 = _sync(device) if timed else 0.0
                img = torch.arange(lo, hi, device=device) // points
                fmt = torch.channels_last if plan.channels_last else torch.contiguous_format
                x = _perturbed(start, finish, rank, thresholds, lo, hi, fmt)
                logits = model(x)
                probs[lo:hi] = torch.softmax(logits.float(), 1).gather(1, classes[img, None])[:, 0]
                if timed and hi - lo == plan.batch_size:
                    tuner.record(plan, 1000 * (_sync(device) - t0) / (hi - lo))
                lo = hi
    curves = probs.view(b_count, points).cpu()
    xs = (thresholds.clamp(max=h * w) / (h * w)).double().cpu()  # the last step may be partial
    auc = torch.trapezoid(curves.double(), xs, dim=1).float()
    return CurveResult(auc=auc, curves=curves, step=step)


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


def _sync(device: torch.device) -> float:
    """Wait for the device's queued work; returns the time after it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


# a candidate whose first timed chunk is this much slower than the best finished one is
# not timed again (a first chunk can include one-off setup, so the margin is wide)
PRUNE_SLOWER = 1.5


@dataclass
class _Tuner:
    """Batch size and memory format of the curves' passes, chosen by timing real work.

    While tuning, each candidate (batch size ≤ the memory cap × contiguous or
    channels_last) runs two of the curves' own chunks, timed (the second timing counts:
    the first may include one-off setup); then the fastest is used, in equal chunks of at
    most its size. Clearly slower candidates are cut short: one whose first chunk is
    :data:`PRUNE_SLOWER` × slower than the best finished candidate is not timed again
    (``prune_first``; off on CUDA, where the first pass of every new batch shape pays for
    cuDNN's choice of algorithms and the allocator's growth, which made every batch above
    8 look slow on an H200), and once a batch size is slower than the next smaller one in
    the same memory format, the larger sizes of that format are skipped. No forward pass
    is spent on measuring alone; the state is cached per model, input shape, dtype and
    device, and the choice is kept on disk (:mod:`sacam._plancache`) so that later
    processes start from it.
    """

    candidates: tuple[Plan, ...]
    times: dict[Plan, list[float]] = field(default_factory=dict)
    dropped: set[Plan] = field(default_factory=set)
    cache_key: str | None = None
    prune_first: bool = True

    def _pending(self, plan: Plan) -> bool:
        return plan not in self.dropped and len(self.times.get(plan, ())) < 2

    def next(self, remaining: int) -> tuple[Plan, bool]:
        """The plan of the next chunk and whether to time it."""
        for plan in self.candidates:
            if self._pending(plan):
                return plan, True
        self._save()
        best = self.best()
        size = math.ceil(remaining / math.ceil(remaining / best.batch_size))
        return Plan(size, best.channels_last), False

    def _finished(self) -> dict[Plan, float]:
        return {p: t[-1] for p, t in self.times.items() if len(t) >= 2 and p not in self.dropped}

    def record(self, plan: Plan, ms_per_image: float) -> None:
        """Add one timing of ``plan`` (and cut short the candidates it shows to be slow)."""
        timings = self.times.setdefault(plan, [])
        timings.append(ms_per_image)
        finished = self._finished()
        slow = finished and ms_per_image > PRUNE_SLOWER * min(finished.values())
        if self.prune_first and len(timings) == 1 and slow:
            self.dropped.add(plan)
        if len(timings) == 2:
            same = [p for p in finished if p.channels_last == plan.channels_last]
            smaller = [p for p in same if p.batch_size < plan.batch_size]
            if smaller and ms_per_image > finished[max(smaller, key=lambda p: p.batch_size)]:
                for p in self.candidates:
                    if p.channels_last == plan.channels_last and p.batch_size > plan.batch_size:
                        self.dropped.add(p)

    def best(self) -> Plan:
        """The fastest candidate timed so far (the first candidate before any timing)."""
        timed = [p for p in self.candidates if self.times.get(p) and p not in self.dropped]
        if not timed:
            return self.candidates[0]
        return min(timed, key=lambda p: self.times[p][-1])

    def _save(self) -> None:
        if self.cache_key is None:
            return
        best = self.best()
        save_plan(
            self.cache_key,
            {
                "batch_size": best.batch_size,
                "channels_last": best.channels_last,
                "ms_per_image": self.times[best][-1] if self.times.get(best) else None,
            },
        )
        self.cache_key = None  # saved once


_TUNERS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, _Tuner]] = weakref.WeakKeyDictionary()


def _tuner(model: nn.Module, images: torch.Tensor, batch_size: int | Literal["auto"]) -> _Tuner:
    """The (cached) tuner of ``model`` for these inputs; fixed for an int ``batch_size``."""
    if batch_size != "auto" and (not isinstance(batch_size, int) or batch_size < 1):
        raise InputError(f"batch_size must be a positive int or 'auto', got {batch_size!r}")
    if batch_size != "auto":
        fixed = Plan(int(batch_size), False)
        return _Tuner((fixed,), {fixed: [0.0, 0.0]})
    key = (tuple(images.shape[1:]), images.dtype, str(images.device))
    tuners = _TUNERS.setdefault(unwrap(model), {})  # a LogitsModel: its model's tuner
    if key not in tuners:
        budget = device_budget_mb(images.device)
        cap = memory_cap(probe(model, images[:1]), tuple(images.shape[1:]), budget)
        sizes = sorted({min(b, cap) for b in candidate_batches(images.device)})
        candidates = tuple(Plan(b, cl) for b in sizes for cl in (False, True))
        disk = plan_key(
            unwrap(model), tuple(images.shape[1:]), images.dtype, images.device, "curves"
        )
        tuners[key] = _from_disk(disk, candidates) or _Tuner(
            candidates, cache_key=disk, prune_first=images.device.type != "cuda"
        )
    return tuners[key]


def _from_disk(key: str, candidates: tuple[Plan, ...]) -> _Tuner | None:
    """A finished tuner holding the plan stored under ``key``, if it is still a candidate."""
    stored = load_plan(key)
    if stored is None:
        return None
    size, channels_last = stored.get("batch_size"), stored.get("channels_last")
    if not isinstance(size, int) or not isinstance(channels_last, bool):
        return None
    plan = Plan(size, channels_last)
    if plan not in candidates:
        return None
    ms = stored.get("ms_per_image")
    ms = float(ms) if isinstance(ms, int | float) else 0.0
    return _Tuner((plan,), {plan: [ms, ms]})


def tuned_plan(model: nn.Module, images: torch.Tensor) -> Plan:
    """The curves' batch size and memory format for ``model`` and inputs like ``images``."""
    return _tuner(model, images, "auto").best()
