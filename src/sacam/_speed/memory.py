"""How many inputs fit one forward pass: memory budgets and measured memory costs.

A batch of perturbed inputs is capped so that the memory its passes use stays within a
budget. The cost is measured, not guessed (:func:`measure_memory`): two inference-mode
forward passes each of ``n`` and of ``n / 4`` copies of one input (``n`` is 8, or the
caller's own limit when it is smaller, so no pass is larger than the caller allows), and
the peak memory they add above what was in use before them. On CUDA that is the
allocator's peak (``torch.cuda.max_memory_allocated``); on Linux CPUs the process's peak
resident set (``VmHWM``, reset through ``/proc/self/clear_refs``), after glibc's
``malloc_trim`` has handed free blocks back so that reused blocks count too; elsewhere
the shape estimate below. A line on or above the points gives a fixed and a per-sample
cost, and :func:`plan_batch` picks the largest batch whose predicted peak, with the
perturbed inputs a method builds (:data:`BUILD_INPUTS` × the input per sample), fits
the budget. The measurement runs once per (model, device, input shape, dtype), cached
for the life of the model and on disk (:mod:`sacam._speed.store`); it resets the
process's peak counter (``VmHWM``, or CUDA's peak statistics) that once.

The shape estimate (:func:`bytes_per_sample`): 4 bytes × (input elements + 3 × the
largest module output), from the probe forward's shapes. It undercounts real passes
(a pass keeps more than three of its largest outputs alive, and the CPU allocator holds
freed blocks), which is why the cap is measured; docs/performance.md has the numbers.
"""

from __future__ import annotations

import math
import sys
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .._layers import ProbeRecord, probe
from .._outputs import unwrap
from .allocator import release_free_memory
from .store import load_plan, plan_key, save_plan

CPU_BUDGET_MB = 1024.0
CUDA_BUDGET_MB = (1024.0, 8192.0)  # a quarter of the free GPU memory, within these bounds


def device_budget_mb(device: torch.device) -> float:
    """Memory budget of the metrics' batched forward passes on ``device``, in MiB.

    1024 on CPUs. On CUDA a quarter of the device's free memory, at least 1024 and at
    most 8192: a large GPU runs a batch of hundreds of images in the time a small batch
    takes, so its budget grows with its memory.

    Example:
        >>> device_budget_mb(torch.device("cpu"))
        1024.0
    """
    if device.type != "cuda":
        return CPU_BUDGET_MB
    free, _ = torch.cuda.mem_get_info(device)
    low, high = CUDA_BUDGET_MB
    return float(min(max(free / 4 / 2**20, low), high))


def fixed_batch(model: nn.Module) -> int | None:
    """The one batch size ``model`` accepts, or None when it takes any.

    A ``torch.export`` program exported without a dynamic batch dimension (the default)
    checks that every input has the batch it was exported with; its first input's shape,
    kept in the graph, says which. Other models: None.

    Example:
        >>> from torch import nn
        >>> fixed_batch(nn.Linear(2, 2)) is None
        True
    """
    graph = getattr(unwrap(model), "graph", None)
    if not isinstance(graph, torch.fx.Graph):
        return None
    for node in graph.nodes:
        if node.op == "placeholder":
            shape = getattr(node.meta.get("val"), "shape", None)
            first = shape[0] if shape else None
            return int(first) if isinstance(first, int) else None
    return None


def passes_within(model: nn.Module, wanted: int) -> int:
    """``wanted`` inputs per pass, or fewer where ``model`` only takes a fixed batch."""
    fixed = fixed_batch(model)
    return wanted if fixed is None else max(1, min(wanted, fixed))


def bytes_per_sample(record: ProbeRecord, sample_shape: tuple[int, ...]) -> int:
    """Estimated live bytes of one sample's inference forward pass (see module docs)."""
    largest = 0
    for _, _, shape in record.order:
        if shape:
            largest = max(largest, math.prod(shape[1:]))
    return 4 * (math.prod(sample_shape) + 3 * largest)


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
# the plan fills this share of the budget: the line through two small batches undercounts
# large batches (docs/performance.md), so a fifth of the budget is left as headroom
HEADROOM = 0.8
MEASURE_BUDGET_MB = 256  # the measurement's own passes stay within this (shape estimate)
BUILD_INPUTS = 3  # perturbed inputs, masks and a temporary a method builds per sample
UNMEASURED_SCALE = 4.0  # how far a pass may exceed its shape estimate, when not measured
UNMEASURED_ROWS = 64  # rows per expanded pass that make measuring memory unnecessary


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
    first freed, and its peak is higher (then steady); the perturbed loop runs many passes
    in a row.
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


def _source(device: torch.device) -> str:
    """Where a peak is read: ``"cuda"``, ``"rss"`` (Linux) or ``"estimate"``."""
    if device.type == "cuda":
        return "cuda"
    if sys.platform.startswith("linux") and _status_kb("VmHWM") is not None and _reset_rss_peak():
        return "rss"
    return "estimate"


def measure_memory(
    model: nn.Module, sample: torch.Tensor, limit: int = MEASURE_BATCH
) -> MemoryCost:
    """Measured memory cost of an inference pass of copies of ``sample`` (``(C, H, W)``).

    Two passes each of ``n`` and ``n / 4`` copies, with ``n`` the smallest of 8, ``limit``
    (the most inputs the caller lets one pass hold) and what the shape estimate says fits
    in 256 MB. Cached per model, device, input shape, dtype and ``n`` (see the module
    docs). The model should be in the mode it will run in (sacam calls it during a call,
    in eval mode).
    """
    n_big = max(1, min(MEASURE_BATCH, limit))
    key = (tuple(sample.shape), sample.dtype, str(sample.device), n_big)
    per_model = _COSTS.setdefault(unwrap(model), {})  # a LogitsModel: its model's cache
    if key in per_model:
        return per_model[key]
    shape, dtype, device = tuple(sample.shape), sample.dtype, sample.device
    disk = plan_key(unwrap(model), shape, dtype, device, f"memory/{n_big}")
    cost = _stored_cost(disk)
    if cost is None:
        record = probe(model, sample[None])
        estimate = bytes_per_sample(record, shape)
        source = _source(device)
        if source == "estimate":
            cost = MemoryCost(0.0, float(estimate), source)
        else:
            n_big = max(1, min(n_big, MEASURE_BUDGET_MB * 2**20 // estimate))
            sizes = sorted({n_big, max(1, n_big // 4)}, reverse=True)
            copies = [sample[None].expand(n, *shape).clone() for n in sizes]
            points = [(x.shape[0], _peak_above_start(model, x, source)) for x in copies]
            del copies
            cost = MemoryCost(*cost_from_peaks(points), source)
            if source == "rss":
                release_free_memory()
        save_plan(disk, {"fixed": cost.fixed, "per_sample": cost.per_sample, "source": source})
    per_model[key] = cost
    return cost


def _stored_cost(key: str) -> MemoryCost | None:
    """A measured cost kept on disk by an earlier process (:mod:`sacam._speed.store`)."""
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


def measured_cap(
    model: nn.Module, sample: torch.Tensor, budget_mb: float, limit: int = MEASURE_BATCH
) -> int:
    """The largest batch of copies of ``sample`` whose measured memory fits ``budget_mb``.

    ``limit`` bounds the measurement's own passes (:func:`measure_memory`).
    """
    cost = measure_memory(model, sample, limit)
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
    than :func:`measured_cap` rows, the cap of whole passes. Near a classifier's head a
    row costs a small fraction of a whole pass, so a pass takes many times more rows.
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


def unmeasured_rows(
    model: nn.Module, sample: torch.Tensor, name: str, call: int, budget_mb: float, rows: int
) -> tuple[int, int] | None:
    """``(rows per expanded pass, whole passes per batch)`` without measuring memory, or None.

    The memory measurement costs about twenty single-input passes: more than a call of a
    tail method on one image near the head (Recipro-CAM's 7 × 7 rows). A pessimistic
    shape estimate (:data:`UNMEASURED_SCALE` times the shape estimate of the whole pass
    and of the network after the layer, plus :data:`BUILD_INPUTS` copies of the layer's
    output per row) gives how many rows surely fit the budget beside the image's whole
    pass. When that is all ``rows`` of an image, or at least :data:`UNMEASURED_ROWS`,
    nothing is measured; whole passes per batch (used only where a model cannot run an
    expanded pass) come from the same estimate, at most :data:`MEASURE_BATCH`. ``None``
    when fewer fit: then the memory is measured.
    """
    record = probe(unwrap(model), sample[None])
    found = tail_estimate(record, name, call)
    if found is None:
        return None
    layer, after = found
    size = sample.element_size()
    whole_pass = UNMEASURED_SCALE * bytes_per_sample(record, tuple(sample.shape))
    per_row = size * (BUILD_INPUTS * layer + UNMEASURED_SCALE * 3 * after)
    room = HEADROOM * budget_mb * 2**20 - whole_pass
    fit = math.floor(room / per_row) if per_row > 0 else rows
    if fit < min(rows, UNMEASURED_ROWS):
        return None
    per_input = whole_pass + BUILD_INPUTS * size * math.prod(sample.shape)
    whole = max(1, min(MEASURE_BATCH, math.floor((room + whole_pass) / per_input)))
    return max(1, min(rows, fit)), whole
