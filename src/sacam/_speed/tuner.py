"""The tuner: batch size and memory format of many forward passes, chosen on real work.

Perturbation methods and the deletion/insertion curves run hundreds of forward passes of
one input shape. How fast a pass is per input depends on how many inputs it holds and on
their memory format (contiguous or channels_last; only the *input* is made
channels_last, the user's model is not touched, and the results are the same numbers up
to float rounding), and the fastest choice differs between models and machines, so
sacam measures it, without a separate sweep: a :class:`Tuner` hands out the plan of each
chunk of the caller's own work and times the chunks it marks, trying each candidate
twice (the second timing counts: the first may include one-off setup) until it knows
the fastest. At the end of that first call the tuner settles on the fastest plan timed
and the loop runs once more with it (:meth:`Tuner.settle`), so a call's result never
depends on timing: the first call on an unseen model costs about two later ones, and
every call gives the same bits.

The candidates are never larger than the caller allows (an explicit
``inputs_per_pass``, the memory cap of :mod:`sacam._speed.memory`): a model exported
for a fixed batch of 1 runs with ``inputs_per_pass=1``. A tuner is kept per model, input
shape, dtype, device and purpose for the life of the model, and its choice on disk
(:mod:`sacam._speed.store`), so a later process starts at the chosen plan and times
nothing.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from .._outputs import unwrap
from ..errors import MethodError, SacamError
from .store import load_plan, plan_key, save_plan

PerPass = int | Literal["auto"]
CANDIDATE_BATCHES = (8, 16, 32, 64)
# a GPU runs a small model's pass at batch 64 in about the time of batch 8 (kernel
# launches, not arithmetic), so larger batches are tried there too; the caps bound them
CUDA_CANDIDATE_BATCHES = (*CANDIDATE_BATCHES, 128, 256)
# a candidate whose first timed chunk is this much slower than the best finished one is
# not timed again (a first chunk can include one-off setup, so the margin is wide)
PRUNE_SLOWER = 1.5


def check_inputs_per_pass(
    value: object,
    name: str = "inputs_per_pass",
    error: type[SacamError] = MethodError,
    *,
    auto: bool = True,
) -> PerPass:
    """``value`` if it is a whole number ≥ 1 (or ``"auto"`` where allowed), else ``error``.

    The one check of every "inputs per forward pass" option: the perturbation methods'
    and the curves' ``inputs_per_pass``, the confidence metrics' ``images_per_pass``.

    Example:
        >>> check_inputs_per_pass(16), check_inputs_per_pass("auto")
        (16, 'auto')
    """
    if auto and value == "auto" and isinstance(value, str):
        return "auto"
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    allowed = " or 'auto' (tuned within the memory budget)" if auto else ""
    raise error(
        f"{name} must be a whole number of at least 1 (the most inputs one forward pass "
        f"holds){allowed}, got {value!r}"
    )


def candidate_batches(device: torch.device) -> tuple[int, ...]:
    """The batch sizes a tuner tries on ``device``: up to 64 on CPUs, up to 256 on CUDA.

    Example:
        >>> candidate_batches(torch.device("cpu"))
        (8, 16, 32, 64)
    """
    return CUDA_CANDIDATE_BATCHES if device.type == "cuda" else CANDIDATE_BATCHES


@dataclass(frozen=True)
class Plan:
    """How to run one chunk of forward passes: inputs per pass, and the memory format."""

    inputs_per_pass: int
    channels_last: bool


def sync(device: torch.device) -> float:
    """Wait for the device's queued work; returns the time after it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


@dataclass
class Tuner:
    """Plans of a loop's chunks, chosen by timing the chunks themselves (module docs).

    While tuning, :meth:`next` hands out each candidate (in order) for two timed chunks.
    Clearly slower candidates are cut short: one whose first chunk is
    :data:`PRUNE_SLOWER` × slower than the best finished candidate is not timed again
    (``prune_first``; off on CUDA, where the first pass of every new batch shape pays for
    the choice of kernels and the allocator's growth), and once a batch size is slower
    than the next smaller one in the same memory format, the larger sizes of that format
    are skipped. Then the fastest is used; ``even`` splits the rest of the work into
    equal chunks of at most its size (else full chunks and a last smaller one).
    """

    candidates: tuple[Plan, ...]
    times: dict[Plan, list[float]] = field(default_factory=dict)
    dropped: set[Plan] = field(default_factory=set)
    cache_key: str | None = None
    prune_first: bool = True
    even: bool = True

    @classmethod
    def fixed(cls, plan: Plan, even: bool = True) -> Tuner:
        """A finished tuner that always answers ``plan`` (an explicit size, a stored plan)."""
        return cls((plan,), {plan: [0.0, 0.0]}, even=even)

    def _pending(self, plan: Plan) -> bool:
        return plan not in self.dropped and len(self.times.get(plan, ())) < 2

    def next(self, remaining: int) -> tuple[Plan, bool]:
        """The plan of the next chunk (of ``remaining`` inputs left) and whether to time it."""
        for plan in self.candidates:
            if self._pending(plan):
                return plan, True
        self._save()
        best = self.best()
        if not self.even or remaining <= 0:
            return best, False
        size = math.ceil(remaining / math.ceil(remaining / best.inputs_per_pass))
        return Plan(size, best.channels_last), False

    @property
    def settled(self) -> bool:
        """Whether the tuner answers one plan for good (stored, explicit, or settled)."""
        return len(self.candidates) == 1 and not self._pending(self.candidates[0])

    def settle(self) -> None:
        """Keep to the fastest plan timed so far, from now on (and store it).

        A loop whose chunks were tuned runs again with the settled plan, so that its
        result is the one every later call gives: the size of a pass changes the last
        bits of a model's output, and a call's result must not depend on timing.
        """
        best = self.best()
        self._save()
        timed = self.times.get(best) or [0.0]
        self.candidates, self.times, self.dropped = (best,), {best: [timed[-1]] * 2}, set()

    def _finished(self) -> dict[Plan, float]:
        return {p: t[-1] for p, t in self.times.items() if len(t) >= 2 and p not in self.dropped}

    def record(self, plan: Plan, ms_per_input: float) -> None:
        """Add one timing of ``plan`` (and cut short the candidates it shows to be slow)."""
        timings = self.times.setdefault(plan, [])
        timings.append(ms_per_input)
        finished = self._finished()
        slow = finished and ms_per_input > PRUNE_SLOWER * min(finished.values())
        if self.prune_first and len(timings) == 1 and slow:
            self.dropped.add(plan)
        if len(timings) == 2:
            same = [p for p in finished if p.channels_last == plan.channels_last]
            smaller = [p for p in same if p.inputs_per_pass < plan.inputs_per_pass]
            if smaller and ms_per_input > finished[max(smaller, key=lambda p: p.inputs_per_pass)]:
                for p in self.candidates:
                    if (
                        p.channels_last == plan.channels_last
                        and p.inputs_per_pass > plan.inputs_per_pass
                    ):
                        self.dropped.add(p)

    def best(self) -> Plan:
        """The fastest candidate timed so far (the first, smallest, before any timing)."""
        timed = [p for p in self.candidates if self.times.get(p) and p not in self.dropped]
        if not timed:
            return self.candidates[0]
        return min(timed, key=lambda p: self.times[p][-1])

    def _save(self) -> None:
        if self.cache_key is None:
            return
        best = self.best()
        ms = self.times[best][-1] if self.times.get(best) else None
        entry = {"inputs_per_pass": best.inputs_per_pass, "channels_last": best.channels_last}
        save_plan(self.cache_key, entry | {"ms_per_input": ms})
        self.cache_key = None  # saved once

    @classmethod
    def from_store(cls, key: str, candidates: tuple[Plan, ...], even: bool) -> Tuner | None:
        """A finished tuner holding the plan stored under ``key``, if it is still a candidate."""
        stored = load_plan(key)
        if stored is None:
            return None
        size, channels_last = stored.get("inputs_per_pass"), stored.get("channels_last")
        if not isinstance(size, int) or not isinstance(channels_last, bool):
            return None
        plan = Plan(size, channels_last)
        if plan not in candidates:
            return None
        ms = stored.get("ms_per_input")
        ms = float(ms) if isinstance(ms, int | float) else 0.0
        return cls((plan,), {plan: [ms, ms]}, even=even)


_TUNERS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, Tuner]] = weakref.WeakKeyDictionary()


def tuner_for(
    model: nn.Module,
    sample: torch.Tensor,
    purpose: str,
    cap: int | Callable[[], int],
    *,
    even: bool = True,
) -> Tuner:
    """The (cached) tuner of ``model``'s passes of inputs like ``sample`` (one ``(C, H, W)``).

    ``cap`` is the most inputs a pass may hold: every candidate size is cut to it. A
    callable cap is asked only when the tuner is made (then one tuner serves every call
    of the purpose); a number is part of the cache key. ``purpose`` names the loop
    (``"curves"``, ``"perturbation"``) so that different loops keep different plans.
    """
    where = (purpose, tuple(sample.shape), sample.dtype, str(sample.device), even)
    key = (*where, cap if isinstance(cap, int) else None)
    tuners = _TUNERS.setdefault(unwrap(model), {})  # a LogitsModel: its model's tuners
    if key not in tuners:
        limit = cap if isinstance(cap, int) else cap()
        sizes = sorted({min(b, limit) for b in candidate_batches(sample.device)})
        formats = (False, True) if sample.ndim == 3 else (False,)
        candidates = tuple(Plan(b, cl) for b in sizes for cl in formats)
        shape, dtype, device = tuple(sample.shape), sample.dtype, sample.device
        # a plan tuned under a tighter cap is no answer for a looser one: a number cap
        # keys the stored plan too (a callable one is the same on every call)
        stored_as = purpose if callable(cap) else f"{purpose}/{max(sizes)}"
        disk = plan_key(unwrap(model), shape, dtype, device, stored_as)
        prune = device.type != "cuda"
        tuners[key] = Tuner.from_store(disk, candidates, even) or Tuner(
            candidates, cache_key=disk, prune_first=prune, even=even
        )
    return tuners[key]
