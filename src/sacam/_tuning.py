"""Batch size and memory format for many forward passes, chosen by measurement.

Perturbation methods run hundreds of forward passes per image. How fast one pass is per
image depends on the batch size and the memory format (on a 2-core CPU, the default model
at 224×224: 28.7 ms/image at batch 16, 44.6 at batch 32, 25.9 at batch 32 in
channels_last), so sacam measures instead of guessing: a few timed forward passes per
(model, input shape, device), cached for the life of the model. Only the *input* is made
channels_last; the user's model is not touched, and the results are the same numbers up
to float rounding (the same convolutions in another loop order).

Memory: a batch is capped so that the memory its pass uses stays within a budget. The
cost is measured, not guessed (:func:`measure_memory`): two inference-mode forward passes
of copies of one input (``n`` and 1 samples), and the peak memory each adds above what
was in use before it: on CUDA the allocator's peak (``torch.cuda.max_memory_allocated``),
on Linux CPUs the process's peak resident set (``VmHWM``, reset through
``/proc/self/clear_refs``), elsewhere the shape estimate below. A straight line through
the two points gives a fixed and a per-sample cost; :func:`plan_batch` picks the largest
batch whose predicted peak, including the perturbed inputs a method builds (3 × the input
per sample), fits the budget. The measurement runs once per (model, device, input shape,
dtype) and is cached for the life of the model; it resets the process's peak-memory
counter (``VmHWM``, or CUDA's peak statistics) that once.

The shape estimate (:func:`bytes_per_sample`): 4 bytes × (input elements + 3 × the
largest module output), from the probe forward's shapes. On EfficientNet-Lite0 at 224 it
undercounts by about 2× (a pass keeps more than three of its largest outputs alive, and
the CPU allocator holds freed blocks), which is why the plan measures.
"""

from __future__ import annotations

import math
import sys
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ._layers import ProbeRecord, probe

CANDIDATE_BATCHES = (8, 16, 32, 64)


@dataclass(frozen=True)
class Plan:
    """How to run many forward passes: batch size and whether inputs go channels_last."""

    batch_size: int
    channels_last: bool
    ms_per_image: float | None = None


def bytes_per_sample(record: ProbeRecord, sample_shape: tuple[int, ...]) -> int:
    """Estimated live bytes of one sample's inference forward pass (see module docs)."""
    largest = 0
    for _, _, shape in record.order:
        if shape:
            n = 1
            for s in shape[1:]:
                n *= s
            largest = max(largest, n)
    inp = 1
    for s in sample_shape:
        inp *= s
    return 4 * (inp + 3 * largest)


def memory_cap(record: ProbeRecord, sample_shape: tuple[int, ...], budget_mb: float) -> int:
    """The largest batch whose estimated live memory fits ``budget_mb`` (at least 1)."""
    return max(1, int(budget_mb * 2**20 // bytes_per_sample(record, sample_shape)))


@dataclass(frozen=True)
class MemoryCost:
    """Memory of one inference forward pass of ``n`` samples: ``fixed + n · per_sample`` bytes.

    Attributes:
        fixed: bytes a pass adds whatever its batch size (workspaces).
        per_sample: bytes each sample adds.
        source: ``"cuda"``, ``"rss"`` (Linux peak RSS) or ``"estimate"`` (shapes only).
    """

    fixed: float
    per_sample: float
    source: str


_COSTS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, MemoryCost]] = weakref.WeakKeyDictionary()
MEASURE_BATCH = 4
BUILD_INPUTS = 3  # perturbed inputs, masks and a temporary a method builds per sample


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_rss_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # "5": reset the peak RSS (VmHWM)
    except OSError:
        return False
    return True


def _peak_above_start(model: nn.Module, x: torch.Tensor, source: str) -> float:
    """Peak bytes one inference pass of ``x`` adds above the memory in use before it."""
    with torch.inference_mode():
        if source == "cuda":
            torch.cuda.synchronize(x.device)
            torch.cuda.reset_peak_memory_stats(x.device)
            start = torch.cuda.memory_allocated(x.device)
            model(x)
            torch.cuda.synchronize(x.device)
            return float(torch.cuda.max_memory_allocated(x.device) - start)
        start_kb = _status_kb("VmRSS")
        _reset_rss_peak()
        model(x)
        peak_kb = _status_kb("VmHWM")
    if start_kb is None or peak_kb is None:  # pragma: no cover - checked by the caller
        return 0.0
    return 1024.0 * max(0, peak_kb - start_kb)


def cost_from_peaks(n: int, peak_n: float, peak_1: float) -> tuple[float, float]:
    """``(fixed, per_sample)`` of the line through ``(1, peak_1)`` and ``(n, peak_n)``.

    The slope is never below ``peak_n / n`` minus the fixed part that a second, smaller
    pass can hide: allocators keep freed blocks, so the pass of 1 (run second) can reuse
    memory and read low. The fit is therefore clamped to ``fixed ≥ 0`` and
    ``per_sample ≥ peak_n / (2 n)`` (at least half of the big pass is per sample).

    Example:
        >>> cost_from_peaks(4, 100.0, 40.0)  # 20 per sample + 20 fixed
        (20.0, 20.0)
    """
    if n <= 1:
        return 0.0, max(peak_n, 0.0)
    per = max((peak_n - peak_1) / (n - 1), peak_n / (2 * n), 0.0)
    fixed = max(peak_n - n * per, 0.0)
    return fixed, per


def measure_memory(model: nn.Module, sample: torch.Tensor) -> MemoryCost:
    """Measured memory cost of an inference pass of copies of ``sample`` (``(C, H, W)``).

    Cached per model, device, input shape and dtype (see the module docs for the method).
    The model should be in the mode it will run in (sacam calls it during a call, in
    eval mode).
    """
    key = (tuple(sample.shape), sample.dtype, str(sample.device))
    per_model = _COSTS.setdefault(model, {})
    if key in per_model:
        return per_model[key]
    record = probe(model, sample[None])
    estimate = bytes_per_sample(record, tuple(sample.shape))
    if sample.device.type == "cuda":
        source = "cuda"
    elif (
        sys.platform.startswith("linux") and _status_kb("VmHWM") is not None and (_reset_rss_peak())
    ):
        source = "rss"
    else:
        source = "estimate"
    if source == "estimate":
        cost = MemoryCost(0.0, float(estimate), source)
    else:
        n = MEASURE_BATCH
        big = _peak_above_start(model, sample[None].expand(n, *sample.shape).clone(), source)
        one = _peak_above_start(model, sample[None].clone(), source)
        fixed, per = cost_from_peaks(n, big, one)
        cost = MemoryCost(fixed, per, source)
    per_model[key] = cost
    return cost


def plan_batch(cost: MemoryCost, sample_bytes: int, budget_mb: float) -> int:
    """Largest batch ``n`` with ``fixed + n · (per_sample + 3 · sample_bytes) ≤ budget`` (≥ 1).

    ``sample_bytes`` is one input's size; the method's perturbed inputs, masks and a
    temporary (:data:`BUILD_INPUTS` inputs per sample) are live beside the pass.

    Example:
        >>> plan_batch(MemoryCost(fixed=2**20, per_sample=2**20, source="rss"), 0, 10.0)
        9
    """
    per = cost.per_sample + BUILD_INPUTS * sample_bytes
    room = budget_mb * 2**20 - cost.fixed
    if per <= 0:
        return 2**31 - 1
    return max(1, math.floor(room / per))


def measured_cap(model: nn.Module, sample: torch.Tensor, budget_mb: float) -> int:
    """The largest batch of copies of ``sample`` whose measured memory fits ``budget_mb``."""
    cost = measure_memory(model, sample)
    return plan_batch(cost, sample.numel() * sample.element_size(), budget_mb)


_TIMINGS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, dict[tuple[int, bool], float]]] = (
    weakref.WeakKeyDictionary()
)


def _time_pass(model: nn.Module, x: torch.Tensor) -> float:
    """Milliseconds per image of one inference pass of ``x`` (after one warm-up pass)."""
    cuda = x.device.type == "cuda"
    model(x)  # warm-up (and, on CUDA, kernel selection)
    if cuda:
        torch.cuda.synchronize(x.device)
    t0 = time.perf_counter()
    model(x)
    if cuda:
        torch.cuda.synchronize(x.device)
    return 1000 * (time.perf_counter() - t0) / x.shape[0]


def measure_plan(
    model: nn.Module,
    sample: torch.Tensor,
    cap: int,
    candidates: tuple[int, ...] = CANDIDATE_BATCHES,
) -> Plan:
    """Time a forward pass per (batch size ≤ cap, memory format); return the fastest.

    ``sample`` is one ``(C, H, W)`` input. Each (batch size, memory format) is timed once
    per model, input shape, dtype and device (CUDA passes are synchronised), and the
    timings are kept: another ``cap`` reuses them and times only sizes not seen yet.
    """
    key = (tuple(sample.shape), sample.dtype, str(sample.device))
    timings = _TIMINGS.setdefault(model, {}).setdefault(key, {})
    sizes = sorted({min(b, cap) for b in candidates})
    formats = (False, True) if sample.ndim == 3 else (False,)
    with torch.inference_mode():
        for size in sizes:
            if all((size, cl) in timings for cl in formats):
                continue
            x = sample[None].expand(size, *sample.shape).contiguous()
            for cl in formats:
                xi = x.contiguous(memory_format=torch.channels_last) if cl else x
                timings[(size, cl)] = _time_pass(model, xi)
            del x
    best = min((timings[(size, cl)], size, cl) for size in sizes for cl in formats)
    ms, size, cl = best
    return Plan(size, cl, ms)
