"""One thread that owns the model: a queue of jobs with progress and cancellation.

Every piece of model work of the web app runs here, one job at a time, in the order it
was submitted (a ``ThreadPoolExecutor`` with one worker), so the event loop never
blocks on the model and requests never run the model concurrently.

Progress and cancellation work with any method: while a job runs, a forward pre-hook
on the root model raises :class:`JobCancelled` once the job is cancelled, and a forward
hook counts the rows of each pass's output against an estimate the job gives per stage.
Rows, not input images: the tail methods' "expand" passes (Ablation-CAM, FD-CAM,
Recipro-CAM) feed one image and widen the batch at the layer, so the output has a row
per edited copy and the count follows the work done. The hooks exist only while the job
runs and are removed in ``finally``; sacam's engine
restores the model's flags and removes its own hooks when the exception passes through
it, so a cancelled job leaves the model as it was.

The queue is bounded (``max_queue`` jobs waiting; one more is refused with
:class:`QueueFull`), and a job's function, with whatever input it holds, is dropped
as soon as the job is cancelled or finished, so cancelled work frees its memory at once.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from .._outputs import to_logits
from ..errors import SacamError, TargetError

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


class QueueFull(JobError):
    """The queue holds ``max_queue`` waiting jobs: try again after ``retry_after`` seconds."""

    def __init__(self, waiting: int, retry_after: int) -> None:
        super().__init__(
            429,
            f"the server is busy: {waiting} requests are already waiting; "
            f"try again in {retry_after} s",
            {"Retry-After": str(retry_after)},
        )
        self.retry_after = retry_after


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
        work_done: images (output rows) its forward passes have processed.
        work_planned: images it plans to process in all (0 until it says).
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
    work_done: int = 0
    work_planned: int = 0
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event)
    future: Future[Any] | None = None
    _stages: int = 1
    _stage_index: int = 0
    _expected: int = 1
    _seen: int = 0
    _weights: list[int] | None = None
    _fn: Any = None

    def elapsed(self) -> float:
        """Seconds the job has run (0 while queued)."""
        if self.started is None:
            return 0.0
        return (self.finished or time.monotonic()) - self.started

    def eta(self) -> float | None:
        """Seconds left, from the work done so far (``None`` before any is done)."""
        if self.status != "running" or self.progress <= 0.01:
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
            "work_done": self.work_done,
            "work_planned": self.work_planned,
        }
        if self.error is not None:
            out["error"] = {"status": self.error[0], "message": self.error[1]}
        return out


class Progress:
    """What a running job's function uses to report its stages.

    A job declares its stages (:meth:`plan` with the images each stage's forward passes
    are expected to process, or :meth:`stages` with a count of equal stages), then
    starts each stage; the forward hook counts the rows the passes actually produced.
    With a plan, progress is the share of the planned images done, so a stage of 500
    passes weighs 500 times one of a single pass. Progress within a stage is capped
    below its end, so the estimate never claims a stage is finished before it is.
    """

    def __init__(self, job: Job) -> None:
        self._job = job

    def stages(self, count: int) -> None:
        """Declare the number of stages of the job (at least 1), all of equal weight."""
        self._job._stages = max(1, int(count))
        self._job._weights = None

    def plan(self, expected_images: list[int]) -> None:
        """Declare the stages by the images each is expected to process."""
        weights = [max(1, int(n)) for n in expected_images] or [1]
        self._job._stages = len(weights)
        self._job._weights = weights
        self._job.work_planned = sum(weights)

    def stage(self, index: int, name: str, expected_images: int) -> None:
        """Start stage ``index`` (0-based) named ``name``, expecting that many images."""
        job = self._job
        job._stage_index = index
        job._expected = max(1, int(expected_images))
        job._seen = 0
        job.stage = name
        job.progress = min(self._fraction(index, 0.0), 0.999)
        self.check()

    def publish(self, partial: Any) -> None:
        """Make ``partial`` (JSON-ready) visible to clients polling the job."""
        self._job.partial = partial

    def _fraction(self, index: int, within: float) -> float:
        job = self._job
        if job._weights is None:
            return (index + within) / job._stages
        done = sum(job._weights[:index])
        current = job._weights[index] if index < len(job._weights) else 0
        return (done + within * current) / sum(job._weights)

    def check(self) -> None:
        """Raise :class:`JobCancelled` if the job was cancelled."""
        if self._job.cancel_event.is_set():
            raise JobCancelled(self._job.id)

    def count(self, images: int) -> None:
        """Record ``images`` processed by one forward pass (called by the hook)."""
        job = self._job
        job._seen += images
        job.work_done += images
        within = min(job._seen / job._expected, 0.99)
        job.progress = min(self._fraction(job._stage_index, within), 0.999)


JobFn = Callable[[Progress], Any]


def _rows(output: Any, args: tuple[Any, ...]) -> int:
    """Rows a forward pass processed.

    Its logits' leading size (:func:`to_logits`'s rules for tuple, dict and ``.logits``
    outputs), else its input's, else 1.
    """
    try:
        return int(to_logits(output).shape[0])
    except (TargetError, IndexError):
        first = args[0] if args else None
        return int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() else 1


class ModelWorker:
    """The single thread that runs all model work, and the jobs it knows.

    Args:
        model: the model the jobs run; only this worker's thread calls it.
        max_jobs: finished jobs kept for polling (the oldest finished are forgotten).
        max_queue: jobs that may wait behind the running one (``None``: no bound);
            :meth:`submit` raises :class:`QueueFull` beyond it.
    """

    def __init__(
        self, model: nn.Module, *, max_jobs: int = 64, max_queue: int | None = None
    ) -> None:
        self.model = model
        self.max_jobs = max_jobs
        self.max_queue = max_queue
        self.seconds_per_image: float | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sacam-model")
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._closed = False

    # ------------------------------------------------------------------ submitting
    def submit(self, kind: str, fn: JobFn, *, owner: str = "") -> Job:
        """Queue ``fn(progress)`` to run on the model thread; returns its :class:`Job`.

        Raises:
            QueueFull: ``max_queue`` jobs are already waiting.
        """
        job = Job(id=uuid.uuid4().hex, kind=kind, owner=owner, _fn=fn)
        with self._lock:
            if self._closed:
                raise RuntimeError("the model worker is closed")
            self.check_room_locked()
            self._jobs[job.id] = job
            self._forget_old()
            job.future = self._executor.submit(self._run, job)
        return job

    def check_room(self) -> None:
        """Raise :class:`QueueFull` when a new job would be refused."""
        with self._lock:
            self.check_room_locked()

    def check_room_locked(self) -> None:
        """:meth:`check_room`, for a caller that holds the lock."""
        if self.max_queue is None:
            return
        waiting = [j for j in self._jobs.values() if j.status == "queued"]
        if len(waiting) >= self.max_queue:
            running = [j.eta() for j in self._jobs.values() if j.status == "running"]
            guess = next((e for e in running if e is not None), 5.0)
            raise QueueFull(len(waiting), int(min(60, max(1, math.ceil(guess)))))

    def queue_position(self, job: Job) -> int:
        """How many jobs run or wait before ``job`` (0 once it runs)."""
        if job.status != "queued":
            return 0
        with self._lock:
            ahead = 0
            for other in self._jobs.values():
                if other is job:
                    break
                ahead += other.status in ("queued", "running")
            return ahead

    def describe(self, job: Job) -> dict[str, Any]:
        """:meth:`Job.snapshot` with the queue position, and the partial or whole result."""
        out = job.snapshot()
        out["queue_position"] = self.queue_position(job)
        if job.status == "done":
            out["result"] = job.result
        elif job.status == "running" and job.partial is not None:
            out["partial"] = job.partial
        return out

    def get(self, job_id: str) -> Job:
        """The job with this id; raises ``KeyError`` when unknown (or forgotten)."""
        with self._lock:
            return self._jobs[job_id]

    def cancel(self, job_id: str) -> Job:
        """Cancel a job: a queued job never runs, a running one stops at its next pass."""
        job = self.get(job_id)
        job.cancel_event.set()
        if job.future is not None and job.future.cancel():
            job.status = "cancelled"
            job._fn = None  # what it would have worked on is freed now
        return job

    def forget(self, job_id: str) -> None:
        """Drop a finished job (its answer went to the client that waited for it)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None and job.status not in ("queued", "running"):
                del self._jobs[job_id]

    def jobs(self) -> list[Job]:
        """The jobs the worker knows, oldest first (queued, running and recently finished)."""
        with self._lock:
            return list(self._jobs.values())

    def pending(self) -> int:
        """Number of jobs queued or running."""
        with self._lock:
            return sum(j.status in ("queued", "running") for j in self._jobs.values())

    def close(self) -> None:
        """Cancel every job and stop the thread (waits for the running job to stop)."""
        with self._lock:
            self._closed = True
            jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel_event.set()
            if job.future is not None and job.future.cancel():
                job.status = "cancelled"
                job._fn = None
        self._executor.shutdown(wait=True)

    # ------------------------------------------------------------------ running
    def _forget_old(self) -> None:
        finished = [k for k, j in self._jobs.items() if j.status in ("done", "error", "cancelled")]
        for key in finished[: max(0, len(self._jobs) - self.max_jobs)]:
            del self._jobs[key]

    def _run(self, job: Job) -> Any:
        fn, job._fn = job._fn, None
        if job.cancel_event.is_set() or fn is None:
            job.status = "cancelled"
            raise JobCancelled(job.id)
        job.started = time.monotonic()
        job.status = "running"
        try:
            return self._call(job, fn)
        finally:
            job.finished = time.monotonic()
            job.partial = None
            if job.work_done and job.status == "done":
                rate = job.elapsed() / job.work_done
                old = self.seconds_per_image
                self.seconds_per_image = rate if old is None else 0.5 * (old + rate)

    def _call(self, job: Job, fn: JobFn) -> Any:
        progress = Progress(job)

        def check(_module: nn.Module, _args: tuple[Any, ...]) -> None:
            progress.check()

        def count(_module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            progress.count(_rows(output, args))

        handles = [
            self.model.register_forward_pre_hook(check),
            self.model.register_forward_hook(count),
        ]
        try:
            result = fn(progress)
        except JobCancelled:
            job.status = "cancelled"
            raise
        except JobError as exc:
            job.error = (exc.status, exc.message)
            job.status = "error"
            raise
        except SacamError as exc:  # bad input found while running (a layer, a target...)
            job.error = (400, str(exc))
            job.status = "error"
            raise
        except Exception as exc:
            job.error = (500, f"{type(exc).__name__}: {exc}")
            job.status = "error"
            raise
        finally:
            for handle in handles:
                handle.remove()
        job.result = result
        job.progress = 1.0
        job.status = "done"
        return result
