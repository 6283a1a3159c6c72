"""Routes that describe the served model: health, methods, layers, sample photos."""

from __future__ import annotations

import io
from functools import cache
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from .. import __version__
from ..images import SAMPLE_IMAGES, sample_image
from ..registry import list_methods, method_info
from .deps import StateDep
from .schemas import NOT_FOUND, ClassesOut, HealthOut, LayersOut, MethodsOut, SamplesOut

router = APIRouter(prefix="/api")


@router.get("/health", response_model=HealthOut)
async def health(state: StateDep) -> dict[str, Any]:
    """Liveness: answers at once, also while the model is busy."""
    return {
        "status": "ok",
        "version": __version__,
        "model": state.loaded.name,
        "device": str(state.facts.device),
        "jobs_pending": state.worker.pending(),
        "max_queue": state.worker.max_queue or 0,
        "max_upload_mb": state.max_upload_mb,
        "task": state.task,
    }


@router.get("/methods", response_model=MethodsOut)
async def methods(state: StateDep) -> dict[str, Any]:
    """The registered CAM methods (registry order); ``default`` is preselected by the page.

    ``passes`` is the method's forward passes (images through the model) for one map at
    the automatic layer, ``expected_s`` those passes times the seconds per pass the model
    thread has measured on earlier jobs (``None`` before the first).
    """
    rate = state.worker.seconds_per_pass
    rows = []
    for name in list_methods():
        info = method_info(name)
        passes = state.passes.get(name, 1)
        rows.append(
            {
                "name": name,
                "family": info.family,
                "paper": info.paper,
                "url": info.url,
                "description": info.description,
                "slow": info.family == "perturbation" or info.cls.many_passes,
                "passes": passes,
                # two significant digits: a fast method shows 0.0034 s, never 0
                "expected_s": None if rate is None else float(f"{passes * rate:.2g}"),
                "available": name not in state.unavailable,
                "note": state.unavailable.get(name, ""),
            }
        )
    return {"default": state.default_method, "methods": rows}


@router.get("/layers", response_model=LayersOut)
async def layers(state: StateDep) -> dict[str, Any]:
    """The model's layers with spatial outputs (forward order) and the automatic one."""
    rows = [
        {"name": label, "channels": shape[1], "grid": list(shape[2:])}
        for label, shape in state.facts.layers
    ]
    return {"default": state.facts.default_layer, "layers": rows}


@router.get("/classes", response_model=ClassesOut)
async def classes(state: StateDep) -> dict[str, Any]:
    """The model's class names in index order (empty when it has none)."""
    return {"classes": list(state.loaded.class_names)}


@router.get("/samples", response_model=SamplesOut)
async def samples() -> dict[str, Any]:
    """Names of the bundled sample photos (scikit-image's)."""
    return {"samples": list(SAMPLE_IMAGES)}


@router.get(
    "/samples/{name}",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **NOT_FOUND},
)
async def sample(name: Annotated[str, Path(max_length=64)]) -> Response:
    """A sample photo as PNG (by name; see ``GET /api/samples``)."""
    if name not in SAMPLE_IMAGES:
        raise HTTPException(
            404, f"unknown sample {name[:40]!r}; samples: {', '.join(SAMPLE_IMAGES)}"
        )
    return Response(await run_in_threadpool(_sample_png, name), media_type="image/png")


@cache
def _sample_png(name: str) -> bytes:
    buf = io.BytesIO()
    sample_image(name).save(buf, format="PNG")
    return buf.getvalue()
