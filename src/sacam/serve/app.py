"""The FastAPI application of ``sacam serve``: a JSON API and the page that uses it.

Routes (the OpenAPI document is at ``/openapi.json``):

- ``GET /`` the page; ``/static/...`` its script and style sheet (shipped in the package);
- ``GET /api/health``, ``GET /api/methods``, ``GET /api/layers``, ``GET /api/samples``,
  ``GET /api/samples/{name}`` (a sample photo as PNG);
- ``POST /api/explain``: multipart ``image`` + repeated ``methods`` (+ ``target``,
  ``layer``), answered when done;
- ``POST /api/jobs/explain`` (the same form) and ``POST /api/jobs/curves`` start a job;
  ``GET /api/jobs/{id}`` polls its progress and result, ``DELETE /api/jobs/{id}`` cancels;
- ``GET /api/results/{id}/attention``: SA-CAM's attention row of one layer position.

All model work runs on one worker thread (:mod:`sacam.serve.worker`), so the event loop
stays free: ``/api/health`` answers while a Score-CAM job runs. Uploads are limited while
they stream in (over the limit, the rest is discarded unread, not kept, and the answer is
413), images are recognised by decoding their content, and no client input ever names a
server path.
"""

from __future__ import annotations

import asyncio
import io
import math
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from functools import cache, partial
from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import FastAPI, File, Form, HTTPException, Path, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from .. import __version__
from ..errors import SacamError
from ..images import DEFAULT_MAX_PIXELS
from ..models import SAMPLE_IMAGES, LoadedModel, sample_image
from ..registry import list_methods, method_info
from . import service
from .worker import Job, JobCancelled, JobError, ModelWorker

# the form fields of both explain routes (one declaration, the same OpenAPI schema)
ImageField = Annotated[UploadFile, File(description="the image file (PNG, JPEG, WebP, ...)")]
MethodsField = Annotated[
    list[str] | None, Form(description="method name; repeat the field for several")
]
TargetField = Annotated[
    str | None, Form(description="class index or class name, in any case; default: top-1")
]
LayerField = Annotated[
    str | None, Form(description="layer name from /api/layers; default: automatic")
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

STATIC = resources.files("sacam.serve").joinpath("static")
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)


# ---------------------------------------------------------------------- schemas
class ErrorOut(BaseModel):
    """Every error: a message saying what was wrong and what to do."""

    detail: str


class HealthOut(BaseModel):
    """``GET /api/health``."""

    status: Literal["ok"]
    version: str
    model: str
    device: str
    jobs_pending: int
    max_upload_mb: float


class MethodOut(BaseModel):
    """One registered method."""

    name: str
    family: str
    paper: str
    url: str
    description: str
    slow: bool = Field(description="many forward passes (perturbation family, SESS): run as a job")


class MethodsOut(BaseModel):
    """``GET /api/methods``."""

    default: str
    methods: list[MethodOut]


class LayerOut(BaseModel):
    """One layer a map can be made at."""

    name: str
    channels: int
    grid: list[int]


class LayersOut(BaseModel):
    """``GET /api/layers``: layers in forward order; ``default`` is the automatic one."""

    default: str
    layers: list[LayerOut]


class SamplesOut(BaseModel):
    """``GET /api/samples``."""

    samples: list[str]


class Prediction(BaseModel):
    """A class and its softmax probability."""

    class_index: int
    name: str
    probability: float


class AttentionInfo(BaseModel):
    """Where a method's attention can be inspected."""

    layer: str
    grid: list[int]


class MapOut(BaseModel):
    """One method's map."""

    method: str
    overlay: str = Field(description="data:image/png;base64 URL: the map over the image")
    heatmap: str = Field(description="data:image/png;base64 URL: the colour-mapped map alone")
    map: str = Field(description="data:image/png;base64 URL: the map as 8-bit grey (v·255)")
    time_s: float
    constant: bool
    attention: AttentionInfo | None = None


class ExplainOut(BaseModel):
    """``POST /api/explain``."""

    result_id: str
    model: str
    image: str = Field(description="the model's view of the image (resized, cropped) as PNG")
    predictions: list[Prediction]
    explained_class: Prediction
    layer: str
    maps: list[MapOut]


class CurvesIn(BaseModel):
    """``POST /api/jobs/curves``: which result's maps, and the curve resolution."""

    result_id: str = Field(min_length=1, max_length=64)
    methods: list[str] | None = Field(default=None, max_length=64)
    steps: int = Field(default=50, ge=2, le=512)


class CurveOut(BaseModel):
    """One curve and its area."""

    auc: float
    curve: list[float]


class MethodCurvesOut(BaseModel):
    """The deletion and insertion curves of one map."""

    method: str
    deletion: CurveOut
    insertion: CurveOut


class CurvesOut(BaseModel):
    """The result of a curves job."""

    result_id: str
    class_index: int
    steps: int
    fractions: list[float]
    methods: list[MethodCurvesOut]


class AttentionOut(BaseModel):
    """``GET /api/results/{id}/attention``: one position's attention row."""

    method: str
    layer: str
    grid: list[int]
    position: list[int]
    values: list[list[float]]
    max: float
    overlay: str


class JobOut(BaseModel):
    """A job's state; ``result`` once done (an explain or curves answer)."""

    job_id: str
    kind: str
    status: Literal["queued", "running", "done", "error", "cancelled"]
    stage: str
    progress: float
    error: dict[str, Any] | None = None
    result: ExplainOut | CurvesOut | None = None


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "bad input (method, layer, target, image)"},
    413: {"model": ErrorOut, "description": "upload or image too large"},
    415: {"model": ErrorOut, "description": "not an image"},
    422: {"model": ErrorOut, "description": "malformed request"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "unknown name or id"},
    422: {"model": ErrorOut, "description": "malformed request"},
}


# ---------------------------------------------------------------------- middleware
# a refused body is read and discarded up to this size before the 413 goes out (see Guard)
DRAIN_MAX_BYTES = 64 * 2**20


class Guard:
    """Pure ASGI middleware: a streaming request-size limit and security headers.

    The body is read message by message; once it exceeds ``max_bytes`` (or when the
    declared ``Content-Length`` already does) nothing more of it is kept: the rest is
    read and discarded, then the request is answered 413 and the connection closed. A
    server that answers and closes while the client is still sending leaves unread data
    in its socket, and the kernel then resets the connection, so the client may see the
    reset instead of the answer (RFC 9112, section 9.6; it happened to about one upload
    in five on the loopback interface). Bodies over :data:`DRAIN_MAX_BYTES` are not
    read: their 413 goes out at once. Accepted bodies are passed on unchanged. Every
    response gets a Content-Security-Policy that allows nothing but this server.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, limit_text: str) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.limit_text = limit_text

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = partial(self._send_with_headers, send)
        if scope["method"] in ("POST", "PUT", "PATCH"):
            headers = dict(scope.get("headers") or [])
            declared = headers.get(b"content-length", b"").decode("latin-1")
            if declared.isdigit() and int(declared) > self.max_bytes:
                if int(declared) <= DRAIN_MAX_BYTES:
                    await _discard(receive, 0)
                await self._too_large(send)
                return
            chunks: list[bytes] = []
            size = 0
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return  # the client went away
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.max_bytes:
                    if message.get("more_body", False):
                        await _discard(receive, size)
                    await self._too_large(send)
                    return
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
            body = b"".join(chunks)
            replayed = False

            async def replay() -> Message:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send)
            return
        await self.app(scope, receive, send)

    @staticmethod
    async def _send_with_headers(send: Send, message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            headers.append((b"content-security-policy", CSP.encode()))
            headers.append((b"x-content-type-options", b"nosniff"))
            headers.append((b"referrer-policy", b"no-referrer"))
            message["headers"] = headers
        await send(message)

    async def _too_large(self, send: Send) -> None:
        response = JSONResponse(
            {"detail": f"the upload is over the limit of {self.limit_text}: send a smaller file"},
            status_code=413,
            headers={"connection": "close"},
        )
        await response({"type": "http"}, _no_receive, send)


async def _discard(receive: Receive, read: int) -> None:
    """Read and drop the rest of a request body, up to :data:`DRAIN_MAX_BYTES` in all."""
    while read <= DRAIN_MAX_BYTES:
        message = await receive()
        if message["type"] != "http.request":
            return  # the client went away
        read += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def _no_receive() -> Message:  # pragma: no cover - a response never reads
    return {"type": "http.disconnect"}


# ---------------------------------------------------------------------- app
def create_app(
    loaded: LoadedModel,
    *,
    max_upload_mb: float = 20.0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    keep_results: int = 16,
) -> FastAPI:
    """Build the web app around a loaded model.

    Args:
        loaded: the model to serve (:func:`sacam.models.load_model`). Only the app's one
            worker thread runs it from now on.
        max_upload_mb: largest accepted request body, in MiB (413 above it).
        max_pixels: largest accepted image, in pixels (413 above it).
        keep_results: explanations kept for attention rows and curves.

    Returns:
        the FastAPI application (an ASGI app: run it with uvicorn, or test it with
        ``fastapi.testclient.TestClient``).
    """
    if not (isinstance(max_upload_mb, int | float) and 0 < max_upload_mb < math.inf):
        raise SacamError(f"max_upload_mb must be a positive number, got {max_upload_mb!r}")
    if not (isinstance(max_pixels, int) and max_pixels > 0):
        raise SacamError(f"max_pixels must be a positive int, got {max_pixels!r}")
    worker = ModelWorker(loaded.model)
    try:
        facts_job = worker.submit("start-up", lambda _progress: service.model_facts(loaded))
        assert facts_job.future is not None
        facts: service.ModelFacts = facts_job.future.result()
    except BaseException:
        worker.close()
        raise
    store = service.ResultStore(keep_results)
    default_method = "sa-cam" if "sa-cam" in list_methods() else list_methods()[0]

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(worker.close)

    app = FastAPI(
        title="sacam serve",
        version=__version__,
        description="Explain an image classifier's decisions with class activation maps.",
        docs_url=None,  # the interactive docs load scripts from a CDN; the schema stays
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.worker = worker
    app.state.loaded = loaded
    app.state.facts = facts
    app.state.store = store
    limit_text = f"{max_upload_mb:g} MB"
    app.add_middleware(
        Guard,  # type: ignore[arg-type]
        max_bytes=int(max_upload_mb * 1024 * 1024),
        limit_text=limit_text,
    )

    # ------------------------------------------------------------------ errors
    @app.exception_handler(JobError)
    async def _job_error(_request: Request, exc: JobError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

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

    # ------------------------------------------------------------------ helpers
    async def _explain_job(
        image: UploadFile, methods: list[str] | None, target: str | None, layer: str | None
    ) -> Job:
        chosen = service.check_methods(methods or [default_method])
        chosen_layer = service.check_layer(layer, facts)
        index = service.parse_target(target, loaded, facts.n_classes)
        data = await image.read()
        picture = await run_in_threadpool(service.decode_image, data, max_pixels)
        return worker.submit(
            "explain",
            partial(
                service.run_explain, loaded, facts, store, picture, chosen, index, chosen_layer
            ),
        )

    def _job(job_id: str) -> Job:
        try:
            return worker.get(job_id)
        except KeyError:
            raise HTTPException(404, f"unknown job {job_id!r} (finished jobs expire)") from None

    def _job_out(job: Job) -> dict[str, Any]:
        out = job.snapshot()
        if job.status == "done":
            out["result"] = job.result
        return out

    # ------------------------------------------------------------------ routes
    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(str(STATIC.joinpath("index.html")), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/api/health", response_model=HealthOut)
    async def health() -> dict[str, Any]:
        """Liveness: answers at once, also while the model is busy."""
        return {
            "status": "ok",
            "version": __version__,
            "model": loaded.name,
            "device": str(facts.device),
            "jobs_pending": worker.pending(),
            "max_upload_mb": max_upload_mb,
        }

    @app.get("/api/methods", response_model=MethodsOut)
    async def methods_() -> dict[str, Any]:
        """The registered CAM methods; ``default`` is preselected by the page."""
        rows = []
        for name in list_methods():
            info = method_info(name)
            rows.append(
                {
                    "name": name,
                    "family": info.family,
                    "paper": info.paper,
                    "url": info.url,
                    "description": info.description,
                    "slow": info.family == "perturbation" or info.cls.many_passes,
                }
            )
        return {"default": default_method, "methods": rows}

    @app.get("/api/layers", response_model=LayersOut)
    async def layers() -> dict[str, Any]:
        """The model's layers with spatial outputs (forward order) and the automatic one."""
        rows = [
            {"name": label, "channels": shape[1], "grid": list(shape[2:])}
            for label, shape in facts.layers
        ]
        return {"default": facts.default_layer, "layers": rows}

    @app.get("/api/samples", response_model=SamplesOut)
    async def samples() -> dict[str, Any]:
        """Names of the bundled sample photos (scikit-image's)."""
        return {"samples": list(SAMPLE_IMAGES)}

    @app.get(
        "/api/samples/{name}",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}, **NOT_FOUND},
    )
    async def sample(name: Annotated[str, Path(max_length=64)]) -> Response:
        """A sample photo as PNG (by name; see ``GET /api/samples``)."""
        if name not in SAMPLE_IMAGES:
            raise HTTPException(
                404, f"unknown sample {name!r}; samples: {', '.join(SAMPLE_IMAGES)}"
            )
        return Response(await run_in_threadpool(_sample_png, name), media_type="image/png")

    @app.post("/api/explain", response_model=ExplainOut, responses=ERRORS)
    async def explain(
        image: ImageField,
        methods: MethodsField = None,
        target: TargetField = None,
        layer: LayerField = None,
    ) -> Any:
        """Classify the image and explain one class with each method; answer when done."""
        job = await _explain_job(image, methods, target, layer)
        assert job.future is not None
        try:
            return await asyncio.wrap_future(job.future)
        except JobCancelled:
            raise HTTPException(409, "the request was cancelled") from None
        finally:
            worker.forget(job.id)

    @app.post("/api/jobs/explain", response_model=JobOut, status_code=202, responses=ERRORS)
    async def explain_job(
        image: ImageField,
        methods: MethodsField = None,
        target: TargetField = None,
        layer: LayerField = None,
    ) -> Any:
        """Like ``POST /api/explain``, as a job: poll ``GET /api/jobs/{id}``."""
        job = await _explain_job(image, methods, target, layer)
        return job.snapshot()

    @app.post(
        "/api/jobs/curves",
        response_model=JobOut,
        status_code=202,
        responses={**ERRORS, **NOT_FOUND},
    )
    async def curves_job(body: CurvesIn) -> Any:
        """Deletion and insertion curves of an explanation's maps, as a job."""
        stored = store.get(body.result_id)
        methods = body.methods
        if methods:
            missing = [m for m in methods if m not in stored.maps]
            if missing:
                raise JobError(
                    400,
                    f"the result has no map for {', '.join(missing)}; "
                    f"it has {', '.join(stored.maps)}",
                )
        job = worker.submit(
            "curves", partial(service.run_curves, loaded, stored, methods, body.steps)
        )
        return job.snapshot()

    @app.get("/api/jobs/{job_id}", response_model=JobOut, responses=NOT_FOUND)
    async def job_status(job_id: Annotated[str, Path(max_length=64)]) -> Any:
        """A job's status and progress, with its result once done."""
        return _job_out(_job(job_id))

    @app.delete("/api/jobs/{job_id}", response_model=JobOut, responses=NOT_FOUND)
    async def cancel_job(job_id: Annotated[str, Path(max_length=64)]) -> Any:
        """Cancel a job: a queued job never runs; a running one stops at its next pass."""
        _job(job_id)
        return _job_out(worker.cancel(job_id))

    @app.get(
        "/api/results/{result_id}/attention",
        response_model=AttentionOut,
        responses={**ERRORS, **NOT_FOUND},
    )
    def attention(
        result_id: Annotated[str, Path(max_length=64)],
        row: Annotated[int, Query(ge=0, le=100_000)],
        col: Annotated[int, Query(ge=0, le=100_000)],
        method: Annotated[str, Query(max_length=64)] = "sa-cam",
    ) -> Any:
        """SA-CAM's attention of one layer position over the grid, drawn over the image."""
        return service.attention_row(store.get(result_id), method, row, col)

    return app


@cache
def _sample_png(name: str) -> bytes:
    buf = io.BytesIO()
    sample_image(name).save(buf, format="PNG")
    return buf.getvalue()
