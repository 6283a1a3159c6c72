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

import uuid
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated, Any

import torch
from fastapi import APIRouter, Form, Request
from pydantic import BaseModel, Field

from .. import detection
from ..errors import ModelError
from ..models import LoadedModel
from .deps import ClientDep, StateDep
from .inputs import check_layer, check_methods
from .progress import JobError, Progress
from .results import ResultStore, StoredResult
from .schemas import ERRORS, JOB_ON_KEPT_RESULT, ImageField, MethodName
from .service import ModelFacts, image_data_url, probe_model
from .tasks import explain_each, explanation_answer, kept_result, one_pass_input, upload_job
from .worker import JobFn

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
    x = one_pass_input(loaded, facts.device, pixels, progress, "detecting")
    found = detection.detect(loaded.model, x, score_threshold=score_threshold, dense=dense)
    result = DetectionResult(
        uuid.uuid4().hex, x, pixels, -1, facts.default_layer, {}, {}, detections=found
    )
    store.put(client, result)
    return {
        "result_id": result.id,
        "model": loaded.name,
        "image": image_data_url(pixels),
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
    result = DetectionResult(
        uuid.uuid4().hex, stored.x, stored.pixels, found.label, layer, {}, {},
        detections=stored.detections,
    )  # fmt: skip
    explained = {"class_index": found.label, "name": _name(loaded, found.label),
                 "probability": found.score}  # fmt: skip
    answer = {**explanation_answer(loaded, result, explained), "box": list(found.box)}
    target = found.target()
    explain = partial(detection.explain, loaded.model, stored.x, target, layer=layer, dense=dense)
    explain_each(methods, passes or {}, progress, answer, result, explain)
    store.put(client, result)
    return answer


@router.post("/detect", response_model=DetectOut, responses=ERRORS)
async def detect(
    request: Request,
    state: StateDep,
    client: ClientDep,
    image: ImageField,
    score_threshold: Annotated[float, Form(ge=0.0, le=1.0)] = 0.5,
) -> Any:
    """Run the detector on the image and list its detections, best first.

    The work stops when the client gives up waiting (closes the connection).
    """

    def work(pixels: torch.Tensor) -> JobFn:
        return partial(
            run_detect, state.loaded, state.facts, state.store, pixels, score_threshold,
            state.dense, client=client,
        )  # fmt: skip

    return await upload_job(request, state, client, image, "detection", "detect", work)


@router.post("/jobs/explain-detection", **JOB_ON_KEPT_RESULT)
async def explain_detection_job(
    body: ExplainDetectionIn, state: StateDep, client: ClientDep
) -> Any:
    """Explain one detection of a kept result with each method, as a job."""
    stored = kept_result(state, client, body.result_id, "detection", DetectionResult)
    found = _chosen(stored, body)
    methods = check_methods(body.methods or [state.default_method])
    layer = check_layer(body.layer, state.facts)
    fn = partial(
        run_explain_detection, state.loaded, state.facts, state.store, stored, found,
        methods, layer, state.dense, passes=state.passes, client=client,
    )  # fmt: skip
    return state.worker.describe(state.worker.submit("explain", fn, owner=client))
