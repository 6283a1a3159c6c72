"""The web app for semantic segmenters (``sacam serve --task segmentation``).

``POST /api/segment`` (multipart ``image``) runs the segmenter once and lists the classes
of its predicted label map, the largest region first (at most
:data:`MAX_LISTED_CLASSES`; the others are counted), each with its share of the pixels
and its colour; the label map drawn in those colours over the image; and a grey PNG of
each pixel's position in that list, from which the page reads the class under a click.
The result is kept. ``POST /api/jobs/explain-segment`` explains one predicted class with
each chosen method, as a job whose result has the form of an explanation: a class's map
explains the sum of its scores over the pixels predicted as that class
(:class:`sacam.SemanticSegmentationTarget`), as ``sacam explain --task segmentation``
does, and ``explained_class.probability`` is the class's share of the pixels.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from functools import cache, partial
from typing import Any

import matplotlib
import numpy as np
import torch
from fastapi import APIRouter, Request
from PIL import Image
from pydantic import BaseModel, Field

from ..api import explain_full
from ..errors import ModelError, TargetError
from ..models import LoadedModel
from ..scores import output_logits, predict
from ..targets import SemanticSegmentationTarget
from .deps import ClientDep, StateDep
from .inputs import check_layer, check_methods
from .progress import JobError, Progress
from .results import ResultStore, StoredResult
from .schemas import (
    ERRORS,
    JOB_ON_KEPT_RESULT,
    MAX_LAYER,
    MAX_METHODS,
    ImageField,
    MethodName,
)
from .service import ModelFacts, image_data_url, png_data_url, probe_model
from .tasks import explain_each, explanation_answer, kept_result, one_pass_input, upload_job
from .worker import JobFn

router = APIRouter(prefix="/api")

MAX_LISTED_CLASSES = 20
"""Classes an answer of ``POST /api/segment`` lists, the largest regions first."""
UNLISTED = 255
"""The value of the list-position PNG at the pixels of a class that is not listed."""
UNLISTED_COLOUR = (128, 128, 128)
"""The colour of the classes that are not listed."""
OVERLAY_ALPHA = 0.5
"""Opacity of the class colours over the image."""


@cache
def palette() -> tuple[tuple[int, int, int], ...]:
    """:data:`MAX_LISTED_CLASSES` distinct RGB colours: matplotlib's tab20, strong hues first."""
    tab20 = matplotlib.colormaps["tab20"]
    order = [*range(0, 20, 2), *range(1, 20, 2)]
    rgb = [tuple(round(255 * v) for v in tab20(i)[:3]) for i in order]
    return tuple((r, g, b) for r, g, b in rgb)[:MAX_LISTED_CLASSES]


def _score_map(output: Any) -> torch.Tensor:
    """The ``(B, classes, H, W)`` score map of a segmenter's output, or a clear error."""
    try:
        scores: Any = output_logits(output)
    except TargetError:
        scores = None
    if isinstance(scores, torch.Tensor) and scores.ndim == 4 and scores.shape[1] >= 2:
        return scores
    shape = f" {tuple(scores.shape)}" if isinstance(scores, torch.Tensor) else ""
    raise ModelError(
        "sacam serve --task segmentation needs a segmenter whose output is a (B, classes, "
        f"H, W) score map with a channel per class (at least 2), but the model returned "
        f"{type(output).__name__}{shape}"
    )


def segmentation_facts(loaded: LoadedModel, method: str) -> ModelFacts:
    """Probe a segmenter: its layers, its classes and the layer sacam explains by default.

    The default layer is sacam's automatic choice for a class region (``method``'s, on a
    blank image), which skips the score map itself.
    """
    device, layers, out = probe_model(loaded)
    scores = _score_map(out)
    size = loaded.preprocess.size
    blank = torch.zeros(1, 3, size, size, device=device)
    whole = SemanticSegmentationTarget(0, torch.ones(scores.shape[-2:]))
    auto = explain_full(loaded.model, blank, method, targets=whole).layers[0]
    default = auto if auto in dict(layers) else layers[-1][0]
    return ModelFacts(layers, default, size, int(scores.shape[1]), device)


@dataclass
class SegmentationResult(StoredResult):
    """A kept image with its predicted label map (and, once a class is explained, its maps).

    Attributes:
        labels: the predicted class of each pixel of the score map, ``(h, w)`` on the CPU.
        shares: class -> its share of the label map's pixels, for each class present.
    """

    labels: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    shares: dict[int, float] = field(default_factory=dict)

    def nbytes(self) -> int:
        """Bytes of the tensors the result holds, the label map included."""
        return super().nbytes() + self.labels.numel() * self.labels.element_size()


class SegmentClassOut(BaseModel):
    """One predicted class: its index, name, share of the pixels and legend colour."""

    class_index: int
    name: str
    share: float = Field(description="fraction of the label map's pixels predicted as it")
    colour: str = Field(description="its colour in the overlay, #rrggbb")


class SegmentOut(BaseModel):
    """``POST /api/segment``: the image as the model sees it and its predicted classes."""

    result_id: str
    model: str
    image: str = Field(description="the model's view of the image (resized, cropped) as PNG")
    overlay: str = Field(description="the predicted classes in their colours over the image")
    positions: str = Field(
        description="grey PNG of the label map: each pixel's position in `classes` "
        f"({UNLISTED}: a class not listed)"
    )
    width: int
    height: int
    classes: list[SegmentClassOut]
    unlisted: int = Field(description="classes present but not listed (the smallest)")
    unlisted_share: float = Field(description="fraction of the pixels of those classes")


class ExplainSegmentIn(BaseModel):
    """``POST /api/jobs/explain-segment``: which predicted class of a kept result, how."""

    result_id: str = Field(min_length=1, max_length=64)
    class_index: int = Field(ge=0, le=1_000_000)
    methods: list[MethodName] | None = Field(default=None, max_length=MAX_METHODS)
    layer: str | None = Field(default=None, max_length=MAX_LAYER)


def _overlay(pixels: torch.Tensor, labels: torch.Tensor, colours: torch.Tensor) -> Image.Image:
    """The label map in ``colours`` (class -> RGB) over the image, at the image's size."""
    height, width = pixels.shape[1:]
    painted = Image.fromarray(colours[labels].numpy())
    painted = painted.resize((width, height), Image.Resampling.NEAREST)
    image = pixels.permute(1, 2, 0).clamp(0, 1).numpy() * 255.0
    mixed = (1 - OVERLAY_ALPHA) * image + OVERLAY_ALPHA * np.asarray(painted, dtype=np.float64)
    return Image.fromarray(mixed.round().astype(np.uint8))


def run_segment(
    loaded: LoadedModel,
    facts: ModelFacts,
    store: ResultStore,
    pixels: torch.Tensor,
    progress: Progress,
    *,
    client: str = "",
) -> dict[str, Any]:
    """Segment one image and keep it; the answer of ``POST /api/segment``."""
    x = one_pass_input(loaded, facts.device, pixels, progress, "segmenting")
    labels = predict(loaded.model, x)[0].cpu()
    counts = torch.bincount(labels.flatten(), minlength=facts.n_classes)
    present = [c for c in counts.argsort(descending=True, stable=True).tolist() if counts[c]]
    shares = {c: int(counts[c]) / labels.numel() for c in present}
    listed = present[:MAX_LISTED_CLASSES]
    positions = torch.full((len(counts),), UNLISTED, dtype=torch.uint8)
    positions[listed] = torch.arange(len(listed), dtype=torch.uint8)
    colours = torch.tensor([UNLISTED_COLOUR] * len(counts), dtype=torch.uint8)
    colours[listed] = torch.tensor(palette()[: len(listed)], dtype=torch.uint8)
    result = SegmentationResult(
        uuid.uuid4().hex, x, pixels, -1, facts.default_layer, {}, {}, labels=labels,
        shares=shares,
    )  # fmt: skip
    store.put(client, result)
    return {
        "result_id": result.id,
        "model": loaded.name,
        "image": image_data_url(pixels),
        "overlay": png_data_url(_overlay(pixels, labels, colours)),
        "positions": png_data_url(Image.fromarray(positions[labels].numpy())),  # grey, 8 bits
        "width": int(pixels.shape[2]),
        "height": int(pixels.shape[1]),
        "classes": [
            {"class_index": c, "name": loaded.class_name(c), "share": shares[c],
             "colour": "#{:02x}{:02x}{:02x}".format(*colours[c].tolist())}
            for c in listed
        ],
        "unlisted": len(present) - len(listed),
        "unlisted_share": sum(shares[c] for c in present[len(listed) :]),
    }  # fmt: skip


def _checked_class(stored: SegmentationResult, cls: int, n_classes: int) -> int:
    """``cls`` when the label map holds it; a 400 saying which classes it holds otherwise."""
    if cls >= n_classes:
        raise JobError(
            400, f"class {cls} does not exist: the model's classes are 0 to {n_classes - 1}"
        )
    if cls not in stored.shares:
        held = list(stored.shares)
        shown = ", ".join(map(str, held[:MAX_LISTED_CLASSES])) + (
            ", …" if len(held) > MAX_LISTED_CLASSES else ""
        )
        raise JobError(
            400,
            f"class {cls} is not in the image's predicted label map: choose one of the "
            f"classes it holds ({shown})",
        )
    return cls


def run_explain_segment(
    loaded: LoadedModel,
    facts: ModelFacts,
    store: ResultStore,
    stored: SegmentationResult,
    cls: int,
    methods: list[str],
    layer: str,
    progress: Progress,
    *,
    passes: dict[str, int] | None = None,
    client: str = "",
) -> dict[str, Any]:
    """Explain one predicted class's region with each method; the maps are kept as a new result.

    A map explains the sum of the class's scores over the pixels predicted as the class.
    ``passes`` (method -> forward passes of one map) plans the job's progress.
    """
    result = SegmentationResult(
        uuid.uuid4().hex, stored.x, stored.pixels, cls, layer, {}, {}, labels=stored.labels,
        shares=stored.shares,
    )  # fmt: skip
    explained = {"class_index": cls, "name": loaded.class_name(cls),
                 "probability": stored.shares[cls]}  # fmt: skip
    answer = explanation_answer(loaded, result, explained)
    target = SemanticSegmentationTarget(cls, (stored.labels == cls).float())
    explain = partial(explain_full, loaded.model, stored.x, layer=layer, targets=target)
    explain_each(methods, passes or {}, progress, answer, result, explain)
    store.put(client, result)
    return answer


@router.post("/segment", response_model=SegmentOut, responses=ERRORS)
async def segment(request: Request, state: StateDep, client: ClientDep, image: ImageField) -> Any:
    """Run the segmenter on the image and list its predicted classes, the largest first.

    The work stops when the client gives up waiting (closes the connection).
    """

    def work(pixels: torch.Tensor) -> JobFn:
        return partial(run_segment, state.loaded, state.facts, state.store, pixels, client=client)

    return await upload_job(request, state, client, image, "segmentation", "segment", work)


@router.post("/jobs/explain-segment", **JOB_ON_KEPT_RESULT)
async def explain_segment_job(body: ExplainSegmentIn, state: StateDep, client: ClientDep) -> Any:
    """Explain one predicted class of a kept result with each method, as a job."""
    stored = kept_result(state, client, body.result_id, "segmentation", SegmentationResult)
    cls = _checked_class(stored, body.class_index, state.facts.n_classes)
    methods = check_methods(body.methods or [state.default_method])
    layer = check_layer(body.layer, state.facts)
    fn = partial(
        run_explain_segment, state.loaded, state.facts, state.store, stored, cls, methods,
        layer, passes=state.passes, client=client,
    )  # fmt: skip
    return state.worker.describe(state.worker.submit("explain", fn, owner=client))
