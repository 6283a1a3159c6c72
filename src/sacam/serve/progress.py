"""A job of the model thread and its progress, counted in forward passes.

A *forward pass* here is one image through the model: a gradient method's forward and
backward on the image is one pass, a batched call on 16 masked copies is 16, and a tail
method that widens the batch at a layer (Ablation-CAM, FD-CAM, Recipro-CAM feed one image
and edit it there) counts one pass per edited copy. The worker counts them as they
happen, with a forward hook on the model that reads the rows of each call's output
(:func:`passes_in`); a job plans them per stage (:meth:`Progress.plan`) from each
method's :meth:`~sacam.core.BaseCAM.expected_rows`, the same count the page shows as a
method's expected time.

The plan is an estimate and is corrected as the job goes: a finished stage counts the
passes it really made, the running one at least those it made so far, so ``passes_done``
never exceeds ``passes_planned`` and the two are equal when the job is done. The time
left is the passes left at the rate this job has run so far (before its first pass, at
the rate earlier jobs measured).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ..errors import TargetError
from ..scores import output_logits

JobStatus = Literal["queued", "running", "done", "error", "cancelled"]


class JobCancelled(Exception):
    """Raised inside a job's forward passes once the job has been cancelled."""


class JobError(Exception):
    """A job failed for a reason the client caused: an HTTP status and a message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass
class Job:
    """One unit of model work and what the client may ask about it.

    Attributes:
        id: random hex id (the client's handle; never a path).
        kind: what the job does (``"explain"``, ``"curves"``, ...).
        status: queued, running, done, error or cancelled.
        stage: a short description of the current stage (e.g. the method running).
        progress: estimated fraction done, in [0, 1]; 1 only when done.
        result: the job's answer once done.
        error: ``(status, message)`` once failed.
        partial: what the job has published while running (e.g. the maps done so far).
        owner: the client that started the job (``""``: unknown).
        passes_done: forward passes (images through the model) made so far.
        passes_planned: forward passes planned in all, corrected as stages end (0 for
            a job that planned none).
        seconds_per_pass: the rate earlier jobs measured, for an estimate before this
            job's first pass (``None``: unknown).
    """

    id: str
    kind: str
    status: JobStatus = "queued"
    stage: str = ""
    progress: float = 0.0
    result: Any = None
    error: tuple[int, str] | None = None
    partial: Any = None
    owner: str = ""
    passes_done: int = 0
    passes_planned: int = 0
    seconds_per_pass: float | None = None
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event)
    future: Future[Any] | None = None
    _stages: int = 1
    _stage_index: int = 0
    _expected: int = 1
    _seen: int = 0
    _plan: list[int] | None = None
    _made: list[int] = field(default_factory=list)
    _fn: Any = None

    def elapsed(self) -> float:
        """Seconds the job has run (0 while queued)."""
        if self.started is None:
            return 0.0
        return (self.finished or time.monotonic()) - self.started

    def eta(self) -> float | None:
        """Seconds left: passes left at this job's rate so far (``None`` when unknown)."""
        if self.status != "running":
            return None
        if self.passes_planned > 0:
            left = self.passes_planned - self.passes_done
            if self.passes_done > 0:
                return self.elapsed() / self.passes_done * left
            return None if self.seconds_per_pass is None else self.seconds_per_pass * left
        if self.progress <= 0.01:
            return None
        return self.elapsed() * (1 - self.progress) / self.progress

    def snapshot(self) -> dict[str, Any]:
        """The job as JSON-ready data (without its result)."""
        out: dict[str, Any] = {
            "job_id": self.id,
            "kind": self.kind,
            "status": self.status,
            "stage": self.stage,
            "progress": round(self.progress, 4),
            "elapsed_s": round(self.elapsed(), 2),
            "eta_s": None if (eta := self.eta()) is None else round(eta, 1),
            "passes_done": self.passes_done,
            "passes_planned": self.passes_planned,
        }
        if self.error is not None:
            out["error"] = {"status": self.error[0], "message": self.error[1]}
        return out


class Progress:
    """What a running job's function uses to report its stages.

    A job declares its stages, either by the forward passes each is expected to make
    (:meth:`plan`; progress is then passes done of passes planned, so a stage of 500
    passes weighs 500 times one of a single pass) or as a count of equal stages
    (:meth:`stages`, for work that cannot say), then starts each stage; the worker's
    forward hook counts the passes. Progress stays below 1 until the job ends.
    """

    def __init__(self, job: Job) -> None:
        self._job = job

    def stages(self, count: int) -> None:
        """Declare the number of stages of the job (at least 1), all of equal weight."""
        self._job._stages = max(1, int(count))
        self._job._plan = None
        self._job.passes_planned = 0

    def plan(self, expected_passes: list[int]) -> None:
        """Declare the stages by the forward passes each is expected to make."""
        job = self._job
        job._plan = [max(1, int(n)) for n in expected_passes] or [1]
        job._stages = len(job._plan)
        job._made = [0] * job._stages
        self._update()

    def stage(self, index: int, name: str, expected_passes: int) -> None:
        """Start stage ``index`` (0-based) named ``name``, expecting that many passes.

        The stages before ``index`` are over: from now on they count the passes they made.
        """
        job = self._job
        job._stage_index = index
        job._expected = max(1, int(expected_passes))
        job._seen = 0
        job.stage = name
        if job._plan is not None and index < len(job._plan):
            job._plan[index] = job._expected
        self._update()
        self.check()

    def publish(self, partial: Any) -> None:
        """Make ``partial`` (JSON-ready) visible to clients polling the job."""
        self._job.partial = partial

    def check(self) -> None:
        """Raise :class:`JobCancelled` if the job was cancelled."""
        if self._job.cancel_event.is_set():
            raise JobCancelled(self._job.id)

    def count(self, passes: int) -> None:
        """Record ``passes`` forward passes made by one call of the model (by the hook)."""
        job = self._job
        job.passes_done += passes
        job._seen += passes
        if job._plan is not None:
            job._made[min(job._stage_index, len(job._made) - 1)] += passes
        self._update()

    def finish(self) -> None:
        """End the last stage: the plan becomes the passes made (called by the worker)."""
        job = self._job
        if job._plan is not None:
            job._stage_index = len(job._plan)
            self._update()
        job.progress = 1.0

    def _update(self) -> None:
        """Recompute ``passes_planned`` and ``progress`` from the plan and the counts."""
        job = self._job
        if job._plan is None:
            within = min(job._seen / job._expected, 0.99)
            job.progress = min((job._stage_index + within) / job._stages, 0.999)
            return
        now = job._stage_index
        planned = 0
        for k, (estimate, made) in enumerate(zip(job._plan, job._made, strict=True)):
            planned += made if k < now else max(estimate, made) if k == now else estimate
        job.passes_planned = planned
        job.progress = min(job.passes_done / max(planned, 1), 0.999)


def passes_in(output: Any, args: tuple[Any, ...]) -> int:
    """Forward passes one call of the model made: one per row of its output.

    The logits' leading size (:func:`sacam.scores.output_logits` reads tuple, dict and
    ``.logits`` outputs), else the input's, else 1.
    """
    try:
        return int(output_logits(output).shape[0])
    except (TargetError, IndexError):
        first = args[0] if args else None
        return int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() else 1
