"""Routes that run the model: explanations, curves, attention rows, and their jobs.

Model work is queued on the model thread (:mod:`sacam.serve.worker`); the event loop
only parses requests. An upload is decoded and preprocessed in a thread pool (two at a
time) before it is queued, so a waiting job holds the model's input, not the picture.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, UploadFile
from fastapi.responses import Response

from . import service
from .deps import ClientDep, ServeState, StateDep
from .inputs import check_layer, check_methods, parse_target
from .progress import Job, JobError
from .schemas import (
    ERRORS,
    JOB_ON_KEPT_RESULT,
    NOT_FOUND,
    AttentionOut,
    CurvesIn,
    ExplainOut,
    ImageField,
    JobOut,
    LayerField,
    MethodsField,
    ReexplainIn,
    TargetField,
)
from .service import ExplainInput
from .tasks import require_task, result_or_cancel, upload_pixels

router = APIRouter(prefix="/api")

JobId = Annotated[str, Path(max_length=64)]


def _refuse_unavailable(state: ServeState, methods: list[str]) -> None:
    for name in methods:
        if name in state.unavailable:
            raise JobError(400, f"{name} cannot explain this model: {state.unavailable[name]}")


@dataclass(frozen=True)
class _ExplainForm:
    """The fields of an explanation request (``POST /api/explain``, ``/api/jobs/explain``)."""

    image: UploadFile
    methods: list[str] | None
    target: str | None
    layer: str | None


def _explain_form(
    image: ImageField,
    methods: MethodsField = None,
    target: TargetField = None,
    layer: LayerField = None,
) -> _ExplainForm:
    return _ExplainForm(image, methods, target, layer)


ExplainForm = Annotated[_ExplainForm, Depends(_explain_form)]


def _submit_explain(
    state: ServeState,
    client: str,
    source: ExplainInput,
    methods: list[str],
    index: int | None,
    layer: str,
) -> Job:
    """Queue the explanation of ``source`` by ``methods`` for ``client``."""
    fn = partial(
        service.run_explain,
        state.loaded,
        state.facts,
        state.store,
        source,
        methods,
        index,
        layer,
        client=client,
    )
    return state.worker.submit("explain", fn, owner=client)


async def _explain_job(state: ServeState, client: str, form: _ExplainForm) -> Job:
    require_task(state, "classification")
    chosen = check_methods(form.methods or [state.default_method])
    _refuse_unavailable(state, chosen)
    chosen_layer = check_layer(form.layer, state.facts)
    index = parse_target(form.target, state.loaded, state.facts.n_classes)
    pixels = await upload_pixels(state, form.image)  # a full queue: refused before decoding
    return _submit_explain(state, client, ExplainInput(pixels=pixels), chosen, index, chosen_layer)


def _job(state: ServeState, job_id: str) -> Job:
    try:
        return state.worker.get(job_id)
    except KeyError:
        raise HTTPException(
            404, "this job is unknown or has expired (finished jobs are kept a while)"
        ) from None


@router.post("/explain", response_model=ExplainOut, responses=ERRORS)
async def explain(request: Request, state: StateDep, client: ClientDep, form: ExplainForm) -> Any:
    """Classify the image and explain one class with each method; answer when done.

    The work stops when the client gives up waiting (closes the connection).
    """
    job = await _explain_job(state, client, form)
    return await result_or_cancel(state, job, request)


@router.post("/jobs/explain", response_model=JobOut, status_code=202, responses=ERRORS)
async def explain_job(state: StateDep, client: ClientDep, form: ExplainForm) -> Any:
    """Like ``POST /api/explain``, as a job: poll ``GET /api/jobs/{id}``."""
    job = await _explain_job(state, client, form)
    return state.worker.describe(job)


@router.post("/jobs/reexplain", **JOB_ON_KEPT_RESULT)
async def reexplain_job(body: ReexplainIn, state: StateDep, client: ClientDep) -> Any:
    """Explain a kept result's image again (another class, layer or methods), as a job."""
    require_task(state, "classification")
    stored = state.store.get(client, body.result_id)
    chosen = check_methods(body.methods or list(stored.maps) or [state.default_method])
    _refuse_unavailable(state, chosen)
    layer = check_layer(body.layer if body.layer is not None else stored.layer, state.facts)
    index = parse_target(body.target, state.loaded, state.facts.n_classes)
    job = _submit_explain(state, client, ExplainInput(stored=stored), chosen, index, layer)
    return state.worker.describe(job)


@router.post("/jobs/curves", **JOB_ON_KEPT_RESULT)
async def curves_job(body: CurvesIn, state: StateDep, client: ClientDep) -> Any:
    """Deletion and insertion curves of an explanation's maps, as a job."""
    require_task(state, "classification")  # the curves score a class probability
    stored = state.store.get(client, body.result_id)
    missing = [m for m in body.methods or [] if m not in stored.maps]
    if missing:
        raise JobError(
            400,
            f"the result has no map for {', '.join(missing)}; it has {', '.join(stored.maps)}",
        )
    fn = partial(service.run_curves, state.loaded, stored, body.methods, body.steps)
    return state.worker.describe(state.worker.submit("curves", fn, owner=client))


@router.get("/jobs/{job_id}", response_model=JobOut, responses=NOT_FOUND)
async def job_status(job_id: JobId, state: StateDep) -> Any:
    """A job's status, queue position and progress; the maps so far; its result once done."""
    return state.worker.describe(_job(state, job_id))


@router.delete("/jobs/{job_id}", response_model=JobOut, responses=NOT_FOUND)
async def cancel_job(job_id: JobId, state: StateDep) -> Any:
    """Cancel a job: a queued job never runs; a running one stops at its next pass."""
    _job(state, job_id)
    return state.worker.describe(state.worker.cancel(job_id))


@router.get(
    "/results/{result_id}/maps/{method}.npy",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}}, **NOT_FOUND},
)
def map_npy(
    result_id: JobId,
    method: Annotated[str, Path(max_length=64)],
    state: StateDep,
    client: ClientDep,
) -> Response:
    """One map of a kept result as a NumPy ``.npy`` file: ``(H, W)`` float32 in [0, 1]."""
    stored = state.store.get(client, result_id)
    if method not in stored.maps:
        raise HTTPException(404, f"the result has no map for {method[:40]!r}")
    buf = io.BytesIO()
    np.save(buf, stored.maps[method].numpy().astype(np.float32))
    return Response(buf.getvalue(), media_type="application/octet-stream")


@router.get(
    "/results/{result_id}/attention",
    response_model=AttentionOut,
    responses={**ERRORS, **NOT_FOUND},
)
def attention(
    result_id: JobId,
    row: Annotated[int, Query(ge=0, le=100_000)],
    col: Annotated[int, Query(ge=0, le=100_000)],
    state: StateDep,
    client: ClientDep,
    method: Annotated[str, Query(max_length=64)] = "sa-cam",
) -> Any:
    """SA-CAM's attention of one layer position over the grid, drawn over the image."""
    return service.attention_row(state.store.get(client, result_id), method, row, col)
