"""The FastAPI application of ``sacam serve``: a JSON API and the page that uses it.

Routes (the OpenAPI document is at ``/openapi.json``):

- ``GET /`` the page; ``/static/...`` its script and style sheet (shipped in the package);
- ``GET /api/health``, ``GET /api/methods``, ``GET /api/layers``, ``GET /api/samples``,
  ``GET /api/samples/{name}`` (a sample photo as PNG) (:mod:`sacam.serve.info`);
- ``POST /api/explain``: multipart ``image`` + repeated ``methods`` (+ ``target``,
  ``layer``), answered when done, cancelled when the client goes away;
- ``POST /api/jobs/explain`` (the same form), ``POST /api/jobs/reexplain`` (a kept
  result's image again, e.g. for another class) and ``POST /api/jobs/curves`` start a
  job; ``GET /api/jobs/{id}`` polls its queue position, progress, the maps done so far
  and its result, ``DELETE /api/jobs/{id}`` cancels;
- ``GET /api/results/{id}/attention``: SA-CAM's attention row of one layer position
  (:mod:`sacam.serve.jobs`);
- for a detector (``task="detection"``): ``POST /api/detect`` lists an image's detections,
  ``POST /api/jobs/explain-detection`` explains one (:mod:`sacam.serve.detect`);
- for a segmenter (``task="segmentation"``): ``POST /api/segment`` lists the classes of an
  image's predicted label map, ``POST /api/jobs/explain-segment`` explains one
  (:mod:`sacam.serve.segment`).

All model work runs on one worker thread (:mod:`sacam.serve.worker`) with a bounded
queue (429 with ``Retry-After`` when full), so the event loop stays free: ``/api/health``
answers while a Score-CAM job runs. Requests pass :class:`~sacam.serve.guard.Guard`
first: the Host and Origin checks, the client cookie, the streaming upload limit. Images
are recognised by decoding their content, and no client input ever names a server path.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from importlib import resources

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..detection import DEFAULT_METHOD, DenseFormat
from ..errors import SacamError
from ..images import DEFAULT_MAX_PIXELS
from ..models import LoadedModel
from ..registry import list_methods
from . import detect, info, jobs, segment, service
from .deps import ServeState, passes_per_method, unavailable_methods
from .detect import detection_facts
from .guard import Guard
from .progress import JobError
from .results import ResultStore
from .segment import segmentation_facts
from .tasks import MODEL_OF_TASK
from .worker import ModelWorker

STATIC = resources.files("sacam.serve").joinpath("static")


def create_app(
    loaded: LoadedModel,
    *,
    max_upload_mb: float = 20.0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    keep_results: int = 8,
    results_mb: float = 512.0,
    max_queue: int = 8,
    allowed_hosts: Sequence[str] = (),
    task: str = "classification",
    dense: DenseFormat | None = None,
) -> FastAPI:
    """Build the web app around a loaded model.

    Args:
        loaded: the model to serve (:func:`sacam.models.load_model`). Only the app's one
            worker thread runs it from now on.
        max_upload_mb: largest accepted request body, in MiB (413 above it).
        max_pixels: largest accepted image, in pixels (413 above it).
        keep_results: explanations kept per browser for attention rows and curves.
        results_mb: memory for kept explanations of all browsers together, in MiB.
        max_queue: jobs that may wait for the model (429 with ``Retry-After`` beyond).
        allowed_hosts: host names the app answers to besides ``localhost``,
            ``127.0.0.1`` and ``::1`` (e.g. the machine's name when it listens on all
            interfaces); requests naming another host get 400.
        task: ``"classification"``, ``"detection"`` (:mod:`sacam.serve.detect`) or
            ``"segmentation"`` (:mod:`sacam.serve.segment`).
        dense: how to read a detector's YOLO-style dense output.

    Returns:
        the FastAPI application (an ASGI app: run it with uvicorn, or test it with
        ``fastapi.testclient.TestClient(app, base_url="http://127.0.0.1")``).
    """
    limits = _Limits(max_upload_mb, max_pixels, keep_results, results_mb, max_queue)
    state = _start(loaded, limits, task, dense)  # the limits checked first

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(state.worker.close)

    app = FastAPI(
        title="sacam serve",
        version=__version__,
        description="Explain an image classifier's decisions with class activation maps.",
        docs_url=None,  # the interactive docs load scripts from a CDN; the schema stays
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.serve = state
    app.add_middleware(
        Guard,  # type: ignore[arg-type]
        max_bytes=int(max_upload_mb * 1024 * 1024),
        limit_text=f"{max_upload_mb:g} MB",
        allowed_hosts=allowed_hosts,
    )
    _add_routes(app)
    return app


def _add_routes(app: FastAPI) -> None:
    """The error handlers, the page, its static files and the API routes."""
    _add_error_handlers(app)
    app.add_api_route("/", _index, include_in_schema=False, methods=["GET"])
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    for router in (info.router, jobs.router, detect.router, segment.router):
        app.include_router(router)


@dataclass(frozen=True)
class _Limits:
    """What one server may hold: uploads, pixels, kept results and waiting jobs."""

    max_upload_mb: float
    max_pixels: int
    keep_results: int
    results_mb: float
    max_queue: int

    def check(self, task: str) -> None:
        """Refuse a task that is not served, and limits that are not positive."""
        if task not in MODEL_OF_TASK:
            served = ", ".join(repr(t) for t in MODEL_OF_TASK)
            raise SacamError(f"task must be one of {served}, got {task!r}")
        for name in ("max_upload_mb", "results_mb"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and 0 < value < math.inf):
                raise SacamError(f"{name} must be a positive number, got {value!r}")
        for name in ("max_pixels", "keep_results", "max_queue"):
            count = getattr(self, name)
            if not (isinstance(count, int) and count > 0):
                raise SacamError(f"{name} must be a positive int, got {count!r}")


def _start(
    loaded: LoadedModel,
    limits: _Limits,
    task: str = "classification",
    dense: DenseFormat | None = None,
) -> ServeState:
    """Start the model thread and measure the model on it (its layers, classes, passes)."""
    limits.check(task)
    default = _default_method(task)
    worker = ModelWorker(loaded.model, max_queue=limits.max_queue)
    probes: dict[str, Callable[[LoadedModel], service.ModelFacts]] = {
        "classification": service.model_facts,
        "detection": partial(detection_facts, dense=dense),
        "segmentation": partial(segmentation_facts, method=default),
    }
    probe = probes[task]
    try:
        facts_job = worker.submit("start-up", lambda _progress: probe(loaded))
        assert facts_job.future is not None
        facts: service.ModelFacts = facts_job.future.result()
        passes_job = worker.submit("start-up", lambda _p: passes_per_method(loaded, facts))
        assert passes_job.future is not None
        passes: dict[str, int] = passes_job.future.result()
    except BaseException:
        worker.close()
        raise
    return ServeState(
        loaded=loaded,
        facts=facts,
        worker=worker,
        store=ResultStore(limits.keep_results, int(limits.results_mb * 2**20)),
        max_upload_mb=limits.max_upload_mb,
        max_pixels=limits.max_pixels,
        default_method=default,
        unavailable=unavailable_methods(loaded.model),
        passes=passes,
        task=task,
        dense=dense,
    )


def _default_method(task: str) -> str:
    """SA-CAM for a classifier; :data:`sacam.detection.DEFAULT_METHOD` for the other tasks."""
    wanted = "sa-cam" if task == "classification" else DEFAULT_METHOD
    return wanted if wanted in list_methods() else list_methods()[0]


def _add_error_handlers(app: FastAPI) -> None:
    """Every error is JSON ``{"detail": message}`` with a fitting status."""

    @app.exception_handler(JobError)
    async def _job_error(_request: Request, exc: JobError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(SacamError)
    async def _sacam_error(_request: Request, exc: SacamError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)

    @app.exception_handler(HTTPException)
    async def _http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code)


async def _index() -> FileResponse:
    return FileResponse(str(STATIC.joinpath("index.html")), media_type="text/html")
