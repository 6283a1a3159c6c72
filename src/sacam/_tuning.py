"""Batch size and memory format for many forward passes, chosen by measurement.

Perturbation methods run hundreds of forward passes per image. How fast one pass is per
image depends on the batch size and the memory format (on a 2-core CPU, the default model
at 224×224: 28.7 ms/image at batch 16, 44.6 at batch 32, 25.9 at batch 32 in
channels_last), so sacam measures instead of guessing: a few timed forward passes per
(model, input shape, device), cached for the life of the model and on disk
(:mod:`sacam._plancache`: a later process with the same architecture, input, device and
threads measures nothing; so is the memory cost below). Only the *input* is made
channels_last; the user's model is not touched, and the results are the same numbers up
to float rounding (the same convolutions in another loop order).

Memory: a batch is capped so that the memory its passes use stays within a budget. The
cost is measured, not guessed (:func:`measure_memory`): two inference-mode forward passes
each of 8 and of 2 copies of one input, and the peak memory they add above what was in
use before them. On CUDA that is the allocator's peak (``torch.cuda.max_memory_allocated``);
on Linux CPUs the process's peak resident set (``VmHWM``, reset through
``/proc/self/clear_refs``), after glibc's ``malloc_trim`` has handed free blocks back so
that reused blocks count too; elsewhere the shape estimate below. A line on or above the
two points gives a fixed and a per-sample cost, and :func:`plan_batch` picks the largest
batch whose predicted peak, with the perturbed inputs a method builds (3 × the input per
sample), fits the budget. The measurement runs once per (model, device, input shape,
dtype), cached for the life of the model (about 0.5 s on a 2-core CPU for
EfficientNet-Lite0 at 224); it resets the process's peak counter (``VmHWM``, or CUDA's
peak statistics) that once. ``malloc_trim`` also runs after each timing pass of
:func:`measure_plan`: passes of other sizes and formats leave freed blocks that the next
cannot reuse, and resident beside it they doubled the peak.

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
from ._outputs import unwrap
from ._plancache import load_plan, plan_key, save_plan
from .allocator import release_free_memory

CANDIDATE_BATCHES = (8, 16, 32, 64)
# on a GPU a small model's pass costs about the same at batch 8 and 64 (kernel launches,
# not arithmetic: EfficientNet-Lite0 ran 2,000 images/s at batch 8 on an H200), so larger
# batches are tried there too; the memory cap still bounds them
CUDA_CANDIDATE_BATCHES = (*CANDIDATE_BATCHES, 128, 256)


def candidate_batches(device: torch.device) -> tuple[int, ...]:
    """The batch sizes a plan tries on ``device``: up to 64 on CPUs, up to 256 on CUDA.

    Example:
        >>> candidate_batches(torch.device("cpu"))
        (8, 16, 32, 64)
    """
    return CUDA_CANDIDATE_BATCHES if device.type == "cuda" else CANDIDATE_BATCHES


CPU_BUDGET_MB = 1024.0
CUDA_BUDGET_MB = (1024.0, 8192.0)  # a quarter of the free GPU memory, within these bounds


def device_budget_mb(device: torch.device) -> float:
    """Memory budget of the metrics' batched forward passes on ``device``, in MiB.

    1024 on CPUs. On CUDA a quarter of the device's free memory, at least 1024 and at
    most 8192: the shape estimate of EfficientNet-Lite0 at 224×224 is about 15 MB per
    image, so 1024 MB caps a batch at 70, where a large GPU runs 256 in the same time.

    Example:
        >>> device_budget_mb(torch.device("cpu"))
        1024.0
    """
    if device.type != "cuda":
        return CPU_BUDGET_MB
    free, _ = torch.cuda.mem_get_info(device)
    low, high = CUDA_BUDGET_MB
    return float(min(max(free / 4 / 2**20, low), high))


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
MEASURE_BATCH = 8
# the plan fills this share of the budget: the line through batches of 2 and 8 undercounts
# large batches (measured on EfficientNet-Lite0, 2 CPU threads: 1348 MB at batch 51
# against 1015 MB predicted), so a fifth of the budget is left as headroom
HEADROOM = 0.8
MEASURE_BUDGET_MB = 256  # the measurement's own passes stay within this (shape estimate)
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


def _peak_above_start(model: nn.Module, x: torch.Tensor, source: str, passes: int = 2) -> float:
    """Peak bytes ``passes`` inference passes of ``x`` add above the memory in use before.

    Two passes, not one: on a CPU the second pass of a batch does not reuse every block the
    first freed, and its peak is 20-50 % higher (then steady); the perturbed loop runs
    many passes in a row.
    """
    with torch.inference_mode():
        if source == "cuda":
            torch.cuda.synchronize(x.device)
            torch.cuda.reset_peak_memory_stats(x.device)
            start = torch.cuda.memory_allocated(x.device)
            for _ in range(passes):
                model(x)
            torch.cuda.synchronize(x.device)
            return float(torch.cuda.max_memory_allocated(x.device) - start)
        release_free_memory()
        start_kb = _status_kb("VmRSS")
        _reset_rss_peak()
        for _ in range(passes):
            model(x)
        peak_kb = _status_kb("VmHWM")
    if start_kb is None or peak_kb is None:  # pragma: no cover - checked by the caller
        return 0.0
    return 1024.0 * max(0, peak_kb - start_kb)


def cost_from_peaks(points: list[tuple[int, float]]) -> tuple[float, float]:
    """``(fixed, per_sample)`` of a line above measured ``(batch size, peak)`` points.

    The slope is that of the two extreme points, but at least half of the largest pass
    per sample (a noisy small pass must not make samples look free); the intercept is
    the smallest that keeps the line on or above every point, and never negative.

    Example:
        >>> cost_from_peaks([(2, 100.0), (8, 220.0)])  # 20 per sample + 60 fixed
        (60.0, 20.0)
    """
    pts = sorted(points)
    n_big, p_big = pts[-1]
    per = p_big / (2 * n_big)
    if len(pts) > 1 and n_big > pts[0][0]:
        n_small, p_small = pts[0]
        per = max(per, (p_big - p_small) / (n_big - n_small))
    fixed = max(max(p - n * per for n, p in pts), 0.0)
    return fixed, per


def measure_memory(model: nn.Module, sample: torch.Tensor) -> MemoryCost:
    """Measured memory cost of an inference pass of copies of ``sample`` (``(C, H, W)``).

    Two passes each of ``n`` and ``n / 4`` copies (``n = 8``, fewer where the shape
    estimate says 8 would not fit in 256 MB). Cached per model, device, input shape and
    dtype (see the module docs). The model should be in the mode it will run in (sacam
    calls it during a call, in eval mode).
    """
    key = (tuple(sample.shape), sample.dtype, str(sample.device))
    per_model = _COSTS.setdefault(unwrap(model), {})  # a LogitsModel: its model's cache
    if key in per_model:
        return per_model[key]
    disk = plan_key(unwrap(model), tuple(sample.shape), sample.dtype, sample.device, "memory")
    stored = _stored_cost(disk)
    if stored is not None:
        per_model[key] = stored
        return stored
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
        n_big = max(1, min(MEASURE_BATCH, MEASURE_BUDGET_MB * 2**20 // estimate))
        sizes = sorted({n_big, max(1, n_big // 4)})
        points = [
            (n, _peak_above_start(model, sample[None].expand(n, *sample.shape).clone(), source))
            for n in reversed(sizes)
        ]
        fixed, per = cost_from_peaks(points)
        cost = MemoryCost(fixed, per, source)
        if source == "rss":
            release_free_memory()
    per_model[key] = cost
    save_plan(disk, {"fixed": cost.fixed, "per_sample": cost.per_sample, "source": cost.source})
    return cost


def _stored_cost(key: str) -> MemoryCost | None:
    """A measured cost kept on disk by an earlier process (:mod:`sacam._plancache`)."""
    stored = load_plan(key)
    if stored is None:
        return None
    fixed, per, source = stored.get("fixed"), stored.get("per_sample"), stored.get("source")
    if not (isinstance(fixed, int | float) and isinstance(per, int | float) and per > 0):
        return None
    if source not in ("cuda", "rss", "estimate") or fixed < 0:
        return None
    return MemoryCost(float(fixed), float(per), str(source))


def plan_batch(cost: MemoryCost, sample_bytes: int, budget_mb: float) -> int:
    """Largest ``n`` with ``fixed + n · (per_sample + 3 · sample_bytes) ≤ 0.8 budget`` (≥ 1).

    ``sample_bytes`` is one input's size; the method's perturbed inputs, masks and a
    temporary (:data:`BUILD_INPUTS` inputs per sample) are live beside the pass;
    :data:`HEADROOM` is the 0.8.

    Example:
        >>> plan_batch(MemoryCost(fixed=2**20, per_sample=2**20, source="rss"), 0, 10.0)
        7
    """
    per = cost.per_sample + BUILD_INPUTS * sample_bytes
    room = HEADROOM * budget_mb * 2**20 - cost.fixed
    if per <= 0:
        return 2**31 - 1
    return max(1, math.floor(room / per))


def measured_cap(model: nn.Module, sample: torch.Tensor, budget_mb: float) -> int:
    """The largest batch of copies of ``sample`` whose measured memory fits ``budget_mb``."""
    cost = measure_memory(model, sample)
    return plan_batch(cost, sample.numel() * sample.element_size(), budget_mb)


def tail_estimate(record: ProbeRecord, name: str, call: int) -> tuple[int, int] | None:
    """Elements per sample of layer ``name@call``'s output and of the largest output after it.

    ``None`` when the probe did not see that call. "After" is the probe's completion
    order: the modules that finish once the layer has (the network after the layer, and
    the containers that hold the layer, whose outputs are later tensors).
    """
    index = next((i for i, (n, c, _) in enumerate(record.order) if (n, c) == (name, call)), None)
    if index is None or record.order[index][2] is None:
        return None

    def elements(shape: tuple[int, ...] | None) -> int:
        return math.prod(shape[1:]) if shape else 0

    layer = elements(record.order[index][2])
    after = max((elements(shape) for _, _, shape in record.order[index + 1 :]), default=0)
    return layer, after


def expand_cap(
    model: nn.Module, sample: torch.Tensor, name: str, call: int, budget_mb: float
) -> int:
    """Edited rows of layer ``name@call`` per pass that feeds ``sample`` once and fits the budget.

    Such a pass (``LayerTail``'s ``"expand"``) runs the layers before the target on one
    image and the network after it on every row, so a row costs what the network after
    the layer holds, not a whole pass: :data:`BUILD_INPUTS` copies of the layer's output
    (the rows a method builds, and their temporaries) plus 3 × the largest output after
    the layer, scaled by how far the measured whole pass exceeds its own shape estimate
    (:func:`bytes_per_sample`; never scaled down). The whole pass of the one image and the
    measured fixed cost come off the budget (with :data:`HEADROOM`) first. Never fewer
    than :func:`measured_cap` rows, the cap of whole passes. On EfficientNet-Lite0's head
    (1,280 × 7 × 7, then pooling and the classifier) a row is about 0.8 MB, so a 1 GiB
    budget takes about 1,000 rows per pass where whole passes take about 50.
    """
    whole = measured_cap(model, sample, budget_mb)
    record = probe(unwrap(model), sample[None])
    found = tail_estimate(record, name, call)
    if found is None:
        return whole
    layer, after = found
    cost = measure_memory(model, sample)
    size = sample.element_size()
    scale = max(1.0, cost.per_sample / bytes_per_sample(record, tuple(sample.shape)))
    per_row = size * (BUILD_INPUTS * layer + scale * 3 * after)
    room = HEADROOM * budget_mb * 2**20 - cost.fixed - cost.per_sample
    if per_row <= 0:
        return whole
    return max(whole, math.floor(room / per_row))


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
    candidates: tuple[int, ...] | None = None,
) -> Plan:
    """Time a forward pass per (batch size ≤ cap, memory format); return the fastest.

    ``sample`` is one ``(C, H, W)`` input; ``candidates`` defaults to
    :func:`candidate_batches` of its device. Each (batch size, memory format) is timed once
    per model, input shape, dtype and device (CUDA passes are synchronised), and the
    timings are kept: another ``cap`` reuses them and times only sizes not seen yet.
    """
    key = (tuple(sample.shape), sample.dtype, str(sample.device))
    disk = plan_key(unwrap(model), tuple(sample.shape), sample.dtype, sample.device, "perturbation")
    per_model = _TIMINGS.setdefault(unwrap(model), {})  # a LogitsModel: its model's cache
    if key not in per_model:
        per_model[key] = _stored_timings(disk)
    timings = per_model[key]
    if candidates is None:
        candidates = candidate_batches(sample.device)
    sizes = sorted({min(b, cap) for b in candidates})
    formats = (False, True) if sample.ndim == 3 else (False,)
    cpu = sample.device.type == "cpu"
    measured = False
    with torch.inference_mode():
        for size in sizes:
            if all((size, cl) in timings for cl in formats):
                continue
            measured = True
            x = sample[None].expand(size, *sample.shape).contiguous()
            for cl in formats:
                xi = x.contiguous(memory_format=torch.channels_last) if cl else x
                timings[(size, cl)] = _time_pass(model, xi)
                del xi
                if cpu:
                    # passes of other sizes and formats leave freed blocks the next one
                    # cannot reuse; resident beside it, they would add up to twice the
                    # budget (measured on EfficientNet-Lite0)
                    release_free_memory()
            del x
    if measured:
        save_plan(disk, {"timings": [[size, cl, ms] for (size, cl), ms in timings.items()]})
    best = min((timings[(size, cl)], size, cl) for size in sizes for cl in formats)
    ms, size, cl = best
    return Plan(size, cl, ms)


def _stored_timings(key: str) -> dict[tuple[int, bool], float]:
    """Timings kept on disk by an earlier process (:mod:`sacam._plancache`); {} if none."""
    stored = load_plan(key)
    rows = stored.get("timings") if stored else None
    out: dict[tuple[int, bool], float] = {}
    for row in rows if isinstance(rows, list) else []:
        if (
            isinstance(row, list)
            and len(row) == 3
            and isinstance(row[0], int)
            and row[0] > 0
            and isinstance(row[1], bool)
            and isinstance(row[2], int | float)
        ):
            out[(row[0], row[1])] = float(row[2])
    return out
