"""The web app for object detectors (``sacam serve --task detection``).

``POST /api/detect`` (multipart ``image``, optional ``score_threshold``) runs the detector
once and lists its detections, best first, with boxes in pixels of the image the answer
carries (the model's view of the upload); the result is kept. ``POST
/api/jobs/explain-detection`` explains one of them with each chosen method, as a job whose
result has the form of an explanation (``explained_class`` is the detection's label and
score): the detection is named by its position in the list, or by its label and box
(:class:`sacam.detection.DetectionTarget`). The page draws the boxes and asks for a map
when one is clicked or picked from the list.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated, Any

import torch
from fastapi import APIRouter, Form
from fastapi.concurrency import run_in_threadpool
from PIL import Image
from pydantic import BaseModel, Field

from .. import detection
from ..errors import ModelError
from ..models import LoadedModel
from ..viz import overlay
from .deps import ClientDep, ServeState, StateDep
from .inputs import check_layer, check_methods, prepare_pixels
from .progress import JobError, Progress
from .results import ResultStore, StoredResult
from .schemas import ERRORS, NOT_FOUND, ImageField, JobOut, MethodName
from .service import ModelFacts, map_image, png_data_url, probe_model

router = APIRouter(prefix="/api")


def detection_facts(loaded: LoadedModel, dense: detection.DenseFormat | None) -> ModelFacts:
    """Probe a detector once: its layers and that its output is a detection output."""
    device, layers, out = probe_model(loaded)
    size = loaded.preprocess.size
    try:
        detection.detections_of(out, dense)
    except Exception as error:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else ""
        raise ModelError(
            f"sacam serve --task detection needs a detector, but the model returned "
            f"{type(out).__name__} {shape}: expected a list of dicts with boxes, labels and "
            f"scores (torchvision) or a (B, N, D) / (B, D, N) tensor (YOLO-style) ({error})"
        ) from None
    return ModelFacts(layers, layers[-1][0], size, len(loaded.class_names), device)


@dataclass
class DetectionResult(StoredResult):
    """A kept image with its detections (and, once one is explained, its maps)."""

    detections: list[detection.Detection] = field(default_factory=list)


class DetectionOut(BaseModel):
    """One detection: its position in the list, label, name, score and ``xyxy`` box."""

    index: int
    label: int
    name: str
    score: float
    box: list[float]


class DetectOut(BaseModel):
    """``POST /api/detect``: the image as the model sees it and its detections."""

    result_id: str
    model: str
    image: str = Field(description="the model's view of the image (resized, cropped) as PNG")
    width: int
    height: int
    detections: list[DetectionOut]


class ExplainDetectionIn(BaseModel):
    """``POST /api/jobs/explain-detection``: which detection of a kept result, how.

    ``index`` is the detection's position in ``/api/detect``'s list; without it, ``label``
    and ``box`` (``xyxy`` pixels of the image) name the detection to follow.
    """

    result_id: str = Field(min_length=1, max_length=64)
    index: int | None = Field(default=None, ge=0, le=10_000)
    label: int | None = Field(default=None, ge=0, le=1_000_000)
    box: list[float] | None = Field(default=None, min_length=4, max_length=4)
    methods: list[MethodName] | None = Field(default=None, max_length=64)
    layer: str | None = Field(default=None, max_length=200)


def _name(loaded: LoadedModel, label: int) -> str:
    names = loaded.class_names
    return names[label] if 0 <= label < len(names) else f"class {label}"


def run_detect(
    loaded: LoadedModel,
    facts: ModelFacts,
    store: ResultStore,
    pixels: torch.Tensor,
    score_threshold: float,
    dense: detection.DenseFormat | None,
    progress: Progress,
    *,
    client: str = "",
) -> dict[str, Any]:
    """Detect the objects of one image and keep it; the answer of ``POST /api/detect``."""
    progress.plan([1])
    progress.stage(0, "detecting", 1)
    x = loaded.preprocess.normalize(pixels)[None].to(facts.device)
    found = detection.detect(loaded.model, x, score_threshold=score_threshold, dense=dense)
    result = DetectionResult(
        uuid.uuid4().hex, x, pixels, -1, facts.default_layer, {}, {}, detections=found
    )
    store.put(client, result)
    arr = (pixels.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return {
        "result_id": result.id,
        "model": loaded.name,
        "image": png_data_url(Image.fromarray(arr)),
        "width": int(pixels.shape[2]),
        "height": int(pixels.shape[1]),
        "detections": [
            {"index": k, "label": d.label, "name": _name(loaded, d.label), "score": d.score,
             "box": list(d.box)}
            for k, d in enumerate(found)
        ],
    }  # fmt: skip


def _chosen(stored: DetectionResult, body: ExplainDetectionIn) -> detection.Detection:
    """The detection a request names: by position, or by label and box."""
    if body.index is not None:
        if body.index >= len(stored.detections):
            raise JobError(
                400,
                f"detection {body.index} is not in the list: the image has "
                f"{len(stored.detections)} detection(s) (0..{len(stored.detections) - 1})",
            )
        return stored.detections[body.index]
    if body.label is None or body.box is None:
        raise JobError(400, "name the detection by its index, or by its label and box")
    box = detection.DetectionTarget(body.label, box=tuple(body.box)).box  # type: ignore[arg-type]
    assert box is not None
    return detection.Detection(box, body.label, 0.0)


def run_explain_detection(
    loaded: LoadedModel,
    facts: ModelFacts,
    store: ResultStore,
    stored: DetectionResult,
    found: detection.Detection,
    methods: list[str],
    layer: str,
    dense: detection.DenseFormat | None,
    progress: Progress,
    *,
    passes: dict[str, int] | None = None,
    client: str = "",
) -> dict[str, Any]:
    """Explain one detection with each method; the maps are kept as a new result.

    ``passes`` (method -> forward passes of one map) plans the job's progress.
    """
    planned = [(passes or {}).get(name, 1) for name in methods]
    progress.plan(planned)
    result = DetectionResult(
        uuid.uuid4().hex, stored.x, stored.pixels, found.label, layer, {}, {},
        detections=stored.detections,
    )  # fmt: skip
    explained = {"class_index": found.label, "name": _name(loaded, found.label),
                 "probability": found.score}  # fmt: skip
    answer: dict[str, Any] = {
        "result_id": result.id,
        "model": loaded.name,
        "image": png_data_url(
            Image.fromarray(
                (stored.pixels.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
            )
        ),
        "predictions": [explained],
        "explained_class": explained,
        "layer": layer,
        "maps": [],
        "box": list(found.box),
    }
    for k, name in enumerate(methods):
        progress.stage(k, name, planned[k])
        start = time.perf_counter()
        ex = detection.explain(loaded.model, stored.x, found.target(), name, layer, dense=dense)
        elapsed = time.perf_counter() - start
        cam = ex.maps[0].detach().float().cpu()
        result.maps[name] = cam
        answer["maps"].append(
            {
                "method": name,
                "overlay": png_data_url(overlay(stored.pixels, cam)),
                "heatmap": png_data_url(overlay(stored.pixels, cam, alpha=1.0)),
                "map": png_data_url(map_image(cam)),
                "time_s": round(elapsed, 4),
                "constant": bool(ex.constant[0]),
            }
        )
        progress.publish({**answer, "maps": list(answer["maps"])})
    store.put(client, result)
    return answer


def _detector_only(state: ServeState) -> None:
    if state.task != "detection":
        raise JobError(400, "this server explains a classifier: start it with --task detection")


@router.post("/detect", response_model=DetectOut, responses=ERRORS)
async def detect(
    state: StateDep,
    client: ClientDep,
    image: ImageField,
    score_threshold: Annotated[float, Form(ge=0.0, le=1.0)] = 0.5,
) -> Any:
    """Run the detector on the image and list its detections, best first."""
    _detector_only(state)
    state.worker.check_room()
    data = await image.read()
    await image.close()
    async with state.decode_slots:
        pixels = await run_in_threadpool(prepare_pixels, data, state.max_pixels, state.loaded)
    del data
    fn = partial(
        run_detect, state.loaded, state.facts, state.store, pixels, score_threshold,
        state.dense, client=client,
    )  # fmt: skip
    job = state.worker.submit("detect", fn, owner=client)
    assert job.future is not None
    try:
        return await asyncio.wrap_future(job.future)
    finally:
        state.worker.forget(job.id)


@router.post(
    "/jobs/explain-detection",
    response_model=JobOut,
    status_code=202,
    responses={**ERRORS, **NOT_FOUND},
)
async def explain_detection_job(
    body: ExplainDetectionIn, state: StateDep, client: ClientDep
) -> Any:
    """Explain one detection of a kept result with each method, as a job."""
    _detector_only(state)
    stored = state.store.get(client, body.result_id)
    if not isinstance(stored, DetectionResult):
        raise JobError(400, "this result holds no detections: send the image to /api/detect")
    found = _chosen(stored, body)
    methods = check_methods(body.methods or [state.default_method])
    layer = check_layer(body.layer, state.facts)
    fn = partial(
        run_explain_detection, state.loaded, state.facts, state.store, stored, found,
        methods, layer, state.dense, passes=state.passes, client=client,
    )  # fmt: skip
    return state.worker.describe(state.worker.submit("explain", fn, owner=client))
