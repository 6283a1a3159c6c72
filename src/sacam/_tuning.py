"""Batch size and memory format for many forward passes, chosen by measurement.

Perturbation methods run hundreds of forward passes per image. How fast one pass is per
image depends on the batch size and the memory format (on a 2-core CPU, the default model
at 224×224: 28.7 ms/image at batch 16, 44.6 at batch 32, 25.9 at batch 32 in
channels_last), so sacam measures instead of guessing: a few timed forward passes per
(model, input shape, device), cached for the life of the model. Only the *input* is made
channels_last; the user's model is not touched, and the results are the same numbers up
to float rounding (the same convolutions in another loop order).

Memory: a batch is capped so that its estimated live memory stays within a budget. The
estimate per sample is 4 bytes × (input elements + 3 × the largest module output), from
the shapes of the probe forward; it bounds what an inference-mode pass keeps alive at
once (an input, an output and a temporary).
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from ._layers import ProbeRecord

CANDIDATE_BATCHES = (8, 16, 32, 64)


@dataclass(frozen=True)
class Plan:
    """How to run many forward passes: batch size and whether inputs go channels_last."""

    batch_size: int
    channels_last: bool
    ms_per_image: float | None = None


_PLANS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, Plan]] = weakref.WeakKeyDictionary()


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


def measure_plan(
    model: nn.Module,
    sample: torch.Tensor,
    cap: int,
    candidates: tuple[int, ...] = CANDIDATE_BATCHES,
) -> Plan:
    """Time a forward pass per (batch size ≤ cap, memory format); return the fastest.

    ``sample`` is one ``(C, H, W)`` input. Cached per model, input shape, dtype and device.
    """
    key = (tuple(sample.shape), sample.dtype, str(sample.device), cap, candidates)
    per_model = _PLANS.setdefault(model, {})
    if key in per_model:
        return per_model[key]
    sizes = sorted({min(b, cap) for b in candidates})
    best = Plan(sizes[-1], False, None)
    best_ms = float("inf")
    with torch.inference_mode():
        for size in sizes:
            x = sample[None].expand(size, *sample.shape).contiguous()
            for cl in (False, True):
                xi = x.contiguous(memory_format=torch.channels_last) if cl and x.ndim == 4 else x
                model(xi)  # warm-up
                t0 = time.perf_counter()
                model(xi)
                ms = 1000 * (time.perf_counter() - t0) / size
                if ms < best_ms:
                    best_ms, best = ms, Plan(size, cl and x.ndim == 4, ms)
    per_model[key] = best
    return best
