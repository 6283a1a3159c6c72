"""One thread that owns the model: a queue of jobs with progress and cancellation.

Every piece of model work of the web app runs here, one job at a time, in the order it
was submitted (a ``ThreadPoolExecutor`` with one worker), so the event loop never
blocks on the model and requests never run the model concurrently.

Progress and cancellation work with any method: while a job runs, a forward pre-hook
on the root model raises :class:`~sacam.serve.progress.JobCancelled` once the job is
cancelled, and a forward hook counts the forward passes of each call (one per row of its
output; see :mod:`sacam.serve.progress`). The hooks exist only while the job runs and
are removed in ``finally``; sacam's engine restores the model's flags and removes its
own hooks when the exception passes through it, so a cancelled job leaves the model as
it was. Each finished job updates the measured seconds per pass, which gives a method's
expected time before it runs and a job's estimate before its first pass.

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
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from torch import nn

from ..errors import SacamError
from .progress import Job, JobCancelled, JobError, Progress, passes_in


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


JobFn = Callable[[Progress], Any]


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
        self.seconds_per_pass: float | None = None
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
        job.seconds_per_pass = self.seconds_per_pass
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
            if job.passes_done and job.status == "done":
                rate = job.elapsed() / job.passes_done
                old = self.seconds_per_pass
                self.seconds_per_pass = rate if old is None else 0.5 * (old + rate)

    def _call(self, job: Job, fn: JobFn) -> Any:
        progress = Progress(job)

        def check(_module: nn.Module, _args: tuple[Any, ...]) -> None:
            progress.check()

        def count(_module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            progress.count(passes_in(output, args))

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
        progress.finish()
        job.result = result
        job.status = "done"
        return result
