"""What the routes of the three tasks share: the task check, the upload, the map loop.

A server explains one kind of model, named by its task (``"classification"``,
``"detection"`` or ``"segmentation"``); :func:`require_task` refuses a route of another
task with the option to start the server with. :func:`upload_pixels` turns an upload into
the model's pixels once the queue has room; :func:`explain_each` runs each chosen method
on a kept image, publishing each map as soon as its method ends, into the answer
:func:`explanation_answer` starts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
from fastapi import HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool

from ..explanation import Explanation
from ..models import LoadedModel
from .deps import ServeState
from .inputs import prepare_pixels
from .progress import Job, JobCancelled, JobError, Progress
from .results import StoredResult
from .service import image_data_url, map_entry
from .worker import JobFn

MODEL_OF_TASK = {
    "classification": "classifier",
    "detection": "detector",
    "segmentation": "segmenter",
}
"""The tasks a server can have, and the kind of model each one explains."""
ROUTE_OF_TASK = {"detection": "/api/detect", "segmentation": "/api/segment"}
"""Where the image of a detection or segmentation explanation is sent first."""

DISCONNECT_POLL_S = 0.2
"""How often a request that waits for its answer checks whether its client is still there."""

R = TypeVar("R", bound=StoredResult)


def require_task(state: ServeState, task: str) -> None:
    """Refuse (400) a route of ``task`` on a server started for another task."""
    if state.task != task:
        raise JobError(
            400,
            f"this server explains a {MODEL_OF_TASK.get(state.task, state.task)}; this request "
            f"needs a {MODEL_OF_TASK[task]}: start sacam serve with --task {task}",
        )


def kept_result(state: ServeState, client: str, result_id: str, task: str, kind: type[R]) -> R:
    """The kept result of ``task`` a request explains: the task checked, then the result.

    Raises:
        JobError: 400 for a route of another task or a result of another kind (it says
            where to send the image first), 404 for an unknown or expired result.
    """
    require_task(state, task)
    stored = state.store.get(client, result_id)
    if not isinstance(stored, kind):
        raise JobError(
            400, f"this result holds no {task} output: send the image to {ROUTE_OF_TASK[task]}"
        )
    return stored


async def upload_pixels(state: ServeState, image: UploadFile) -> torch.Tensor:
    """The model's ``(3, size, size)`` pixels of an upload (:func:`~.inputs.prepare_pixels`).

    A full queue is refused (429) before the upload is read; the upload is decoded in a
    thread, :data:`~sacam.serve.deps.DECODE_SLOTS` uploads at a time.
    """
    state.worker.check_room()
    data = await image.read()
    await image.close()
    async with state.decode_slots:
        return await run_in_threadpool(prepare_pixels, data, state.max_pixels, state.loaded)


async def result_or_cancel(state: ServeState, job: Job, request: Request) -> Any:
    """The job's result; the job is cancelled as soon as the client goes away."""
    assert job.future is not None
    future = asyncio.wrap_future(job.future)
    try:
        while True:
            done, _ = await asyncio.wait({future}, timeout=DISCONNECT_POLL_S)
            if done:
                return future.result()
            if await request.is_disconnected():
                state.worker.cancel(job.id)
                future.add_done_callback(_retrieved)  # nobody waits for it any more
                raise JobCancelled(job.id)
    except JobCancelled:
        raise HTTPException(409, "the request was cancelled") from None
    finally:
        state.worker.forget(job.id)


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


async def upload_job(
    request: Request,
    state: ServeState,
    client: str,
    image: UploadFile,
    task: str,
    kind: str,
    work: Callable[[torch.Tensor], JobFn],
) -> Any:
    """Run ``work(pixels)`` on an upload as a job named ``kind``; its answer when done.

    The task is checked first, then the queue's room and the upload
    (:func:`upload_pixels`); the job is cancelled when the client goes away.
    """
    require_task(state, task)
    pixels = await upload_pixels(state, image)
    job = state.worker.submit(kind, work(pixels), owner=client)
    return await result_or_cancel(state, job, request)


def one_pass_input(
    loaded: LoadedModel, device: torch.device, pixels: torch.Tensor, progress: Progress, stage: str
) -> torch.Tensor:
    """The model's input ``(1, 3, H, W)`` of a job that runs the model once, as ``stage``."""
    progress.plan([1])
    progress.stage(0, stage, 1)
    return loaded.preprocess.normalize(pixels)[None].to(device)


def explain_each(
    methods: list[str],
    passes: Mapping[str, int],
    progress: Progress,
    answer: dict[str, Any],
    result: StoredResult,
    explain: Callable[[str], Explanation],
) -> None:
    """Explain ``result``'s image with each method, one stage each; maps go to ``answer``.

    Args:
        methods: the method names, checked.
        passes: method -> forward passes of one map (the plan of the job's progress; 1
            for a method it does not name).
        progress: the job's progress reporter; ``answer`` is published after each map.
        answer: an explanation answer whose ``maps`` list receives each method's entry.
        result: the result the maps are kept in (``result.maps``); its pixels are drawn.
        explain: the method name -> its :class:`~sacam.explanation.Explanation`.
    """
    planned = [passes.get(name, 1) for name in methods]
    progress.plan(planned)
    for k, name in enumerate(methods):
        progress.stage(k, name, planned[k])
        start = time.perf_counter()
        ex = explain(name)
        entry, result.maps[name] = map_entry(name, result.pixels, ex, time.perf_counter() - start)
        answer["maps"].append(entry)
        progress.publish({**answer, "maps": list(answer["maps"])})


def explanation_answer(
    loaded: LoadedModel, result: StoredResult, explained: dict[str, Any]
) -> dict[str, Any]:
    """The answer of an explanation of ``result``, without maps yet.

    ``explained`` is its one prediction: a detection's label and score, or a class
    region's label and share of the pixels.
    """
    return {
        "result_id": result.id,
        "model": loaded.name,
        "image": image_data_url(result.pixels),
        "predictions": [explained],
        "explained_class": explained,
        "layer": result.layer,
        "maps": [],
    }
