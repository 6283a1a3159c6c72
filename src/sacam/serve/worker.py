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
"""

from __future__ import annotations

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

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


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
    """

    id: str
    kind: str
    status: JobStatus = "queued"
    stage: str = ""
    progress: float = 0.0
    result: Any = None
    error: tuple[int, str] | None = None
    created: float = field(default_factory=time.monotonic)
    cancel_event: threading.Event = field(default_factory=threading.Event)
    future: Future[Any] | None = None
    _stages: int = 1
    _stage_index: int = 0
    _expected: int = 1
    _seen: int = 0

    def snapshot(self) -> dict[str, Any]:
        """The job as JSON-ready data (without its result)."""
        out: dict[str, Any] = {
            "job_id": self.id,
            "kind": self.kind,
            "status": self.status,
            "stage": self.stage,
            "progress": round(self.progress, 4),
        }
        if self.error is not None:
            out["error"] = {"status": self.error[0], "message": self.error[1]}
        return out


class Progress:
    """What a running job's function uses to report its stages.

    A job declares how many stages it has, then for each stage its name and the number
    of images its forward passes are expected to process; the forward hook counts the
    rows the passes actually produced. Progress within a stage is capped below its end,
    so the estimate never claims a stage is finished before it is.
    """

    def __init__(self, job: Job) -> None:
        self._job = job

    def stages(self, count: int) -> None:
        """Declare the number of stages of the job (at least 1)."""
        self._job._stages = max(1, int(count))

    def stage(self, index: int, name: str, expected_images: int) -> None:
        """Start stage ``index`` (0-based) named ``name``, expecting that many images."""
        job = self._job
        job._stage_index = index
        job._expected = max(1, int(expected_images))
        job._seen = 0
        job.stage = name
        job.progress = min(index / job._stages, 0.999)
        self.check()

    def check(self) -> None:
        """Raise :class:`JobCancelled` if the job was cancelled."""
        if self._job.cancel_event.is_set():
            raise JobCancelled(self._job.id)

    def count(self, images: int) -> None:
        """Record ``images`` processed by one forward pass (called by the hook)."""
        job = self._job
        job._seen += images
        within = min(job._seen / job._expected, 0.99)
        job.progress = min((job._stage_index + within) / job._stages, 0.999)


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
    """

    def __init__(self, model: nn.Module, *, max_jobs: int = 64) -> None:
        self.model = model
        self.max_jobs = max_jobs
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sacam-model")
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._closed = False

    # ------------------------------------------------------------------ submitting
    def submit(self, kind: str, fn: JobFn) -> Job:
        """Queue ``fn(progress)`` to run on the model thread; returns its :class:`Job`."""
        job = Job(id=uuid.uuid4().hex, kind=kind)
        with self._lock:
            if self._closed:
                raise RuntimeError("the model worker is closed")
            self._jobs[job.id] = job
            self._forget_old()
            job.future = self._executor.submit(self._run, job, fn)
        return job

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
        return job

    def forget(self, job_id: str) -> None:
        """Drop a finished job (its answer went to the client that waited for it)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None and job.status not in ("queued", "running"):
                del self._jobs[job_id]

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
        self._executor.shutdown(wait=True)

    # ------------------------------------------------------------------ running
    def _forget_old(self) -> None:
        finished = [k for k, j in self._jobs.items() if j.status in ("done", "error", "cancelled")]
        for key in finished[: max(0, len(self._jobs) - self.max_jobs)]:
            del self._jobs[key]

    def _run(self, job: Job, fn: JobFn) -> Any:
        if job.cancel_event.is_set():
            job.status = "cancelled"
            raise JobCancelled(job.id)
        job.status = "running"
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
