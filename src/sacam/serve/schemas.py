"""The web app's request and response models (its OpenAPI contract) and form fields.

Every text a client sends has a maximum length that FastAPI checks before any code of
sacam sees it (422 beyond it).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import File, Form, UploadFile
from pydantic import BaseModel, Field, StringConstraints

MAX_NAME = 64
"""Longest method name accepted (the longest registered one has 20 characters)."""
MAX_METHODS = 64
"""Most methods in one request."""
MAX_TARGET = 100
"""Longest class text accepted (an index or a class name)."""
MAX_LAYER = 200
"""Longest layer name accepted."""

# the form fields of both explain routes (one declaration, the same OpenAPI schema)
ImageField = Annotated[UploadFile, File(description="the image file (PNG, JPEG, WebP, ...)")]
MethodName = Annotated[str, StringConstraints(max_length=MAX_NAME)]
MethodsField = Annotated[
    list[MethodName] | None,
    Form(description="method name; repeat the field for several", max_length=MAX_METHODS),
]
TargetField = Annotated[
    str | None,
    Form(
        description="class index or class name, in any case; default: top-1",
        max_length=MAX_TARGET,
    ),
]
LayerField = Annotated[
    str | None,
    Form(description="layer name from /api/layers; default: automatic", max_length=MAX_LAYER),
]


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
    max_queue: int
    max_upload_mb: float
    task: str = Field(
        default="classification", description="classification, detection or segmentation"
    )


class MethodOut(BaseModel):
    """One registered method."""

    name: str
    family: str
    paper: str
    url: str
    description: str
    slow: bool = Field(description="many forward passes (perturbation family, SESS): run as a job")
    passes: int = Field(description="forward passes of one map at the automatic layer")
    expected_s: float | None = Field(
        description="expected seconds at the default layer, from the measured rate (once known)"
    )
    available: bool = Field(description="whether the method can explain this model")
    note: str = Field(default="", description="why a method is not available")


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


class ClassesOut(BaseModel):
    """``GET /api/classes``: class names in index order."""

    classes: list[str]


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
    methods: list[MethodName] | None = Field(default=None, max_length=MAX_METHODS)
    steps: int = Field(default=50, ge=2, le=512)


class ReexplainIn(BaseModel):
    """``POST /api/jobs/reexplain``: explain a kept result's image again, without uploading it.

    Another class, layer or set of methods; the image is not classified again.
    """

    result_id: str = Field(min_length=1, max_length=64)
    target: str | None = Field(default=None, max_length=MAX_TARGET)
    methods: list[MethodName] | None = Field(default=None, max_length=MAX_METHODS)
    layer: str | None = Field(default=None, max_length=MAX_LAYER)


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
    """A job's state; ``result`` once done (an explain or curves answer).

    ``progress`` is ``passes_done`` of ``passes_planned``: forward passes, one per image
    through the model (a batch of 16 masked copies is 16), so a method of 500 passes
    weighs 500 times one of a single pass. The plan comes from each method's expected
    passes and is corrected as each stage ends; when the job is done the two are equal.
    """

    job_id: str
    kind: str
    status: Literal["queued", "running", "done", "error", "cancelled"]
    stage: str
    progress: float
    queue_position: int = Field(default=0, description="jobs to run before this one")
    elapsed_s: float = Field(default=0.0, description="seconds the job has run")
    eta_s: float | None = Field(
        default=None, description="seconds left: passes left at the rate so far (estimated)"
    )
    passes_done: int = Field(default=0, description="forward passes made so far")
    passes_planned: int = Field(
        default=0, description="forward passes planned in all (0: the job planned none)"
    )
    error: dict[str, Any] | None = None
    partial: ExplainOut | None = Field(
        default=None, description="while an explain job runs: the maps finished so far"
    )
    result: ExplainOut | CurvesOut | None = None


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "bad input (method, layer, target, image)"},
    403: {"model": ErrorOut, "description": "sent by a page of another site"},
    413: {"model": ErrorOut, "description": "upload or image too large"},
    415: {"model": ErrorOut, "description": "not an image"},
    422: {"model": ErrorOut, "description": "malformed request"},
    429: {"model": ErrorOut, "description": "the queue is full: retry after Retry-After s"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "unknown name or id"},
    422: {"model": ErrorOut, "description": "malformed request"},
}

JOB_ON_KEPT_RESULT: dict[str, Any] = {
    "response_model": JobOut,
    "status_code": 202,
    "responses": {**ERRORS, **NOT_FOUND},
}
"""The route settings of a job on a kept result: answers 202 with the job, or 404."""
