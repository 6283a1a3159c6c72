"""What the routes depend on: the app's shared state and the calling client.

Routes take them as FastAPI dependencies (``state: StateDep``, ``client: ClientDep``),
so a route states what it uses and tests can build the app around any loaded model.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from torch import nn

from ..api import build_method
from ..detection import DenseFormat
from ..models import LoadedModel
from ..registry import list_methods
from .results import ResultStore
from .service import ModelFacts
from .worker import ModelWorker

DECODE_SLOTS = 2
"""Uploads decoded at the same time; more wait their turn (each may take 120 MB)."""


@dataclass
class ServeState:
    """Everything the routes share.

    Attributes:
        loaded: the served model.
        facts: what was measured about it at start-up.
        worker: the model thread and its job queue.
        store: the kept results, per client.
        max_upload_mb: the request body limit, in MiB.
        max_pixels: the decoded image limit, in pixels.
        default_method: the method the page preselects.
        unavailable: method -> why it cannot explain this model.
        passes: method -> forward passes (images through the model) for one map at the
            automatic layer.
        task: ``"classification"``, ``"detection"`` (:mod:`sacam.serve.detect`) or
            ``"segmentation"`` (:mod:`sacam.serve.segment`).
        dense: how to read a detector's YOLO-style dense output.
    """

    loaded: LoadedModel
    facts: ModelFacts
    worker: ModelWorker
    store: ResultStore
    max_upload_mb: float
    max_pixels: int
    default_method: str
    unavailable: dict[str, str] = field(default_factory=dict)
    passes: dict[str, int] = field(default_factory=dict)
    decode_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(DECODE_SLOTS))
    task: str = "classification"
    dense: DenseFormat | None = None


def unavailable_methods(model: nn.Module) -> dict[str, str]:
    """Methods that cannot explain ``model``, with the reason in a user's words."""
    has_attention = any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    if has_attention or "legrad" not in list_methods():
        return {}
    return {"legrad": "needs a transformer (a model with attention blocks); this model has none"}


def passes_per_method(loaded: LoadedModel, facts: ModelFacts) -> dict[str, int]:
    """Forward passes of one map by each method at the automatic layer (images through the model).

    Each method's :meth:`~sacam.core.BaseCAM.expected_rows`: the plan a job's progress counts
    against (:mod:`sacam.serve.progress`) and, times the measured rate, the expected time.
    """
    shape = facts.layer_shape(facts.default_layer)
    size = (loaded.preprocess.size, loaded.preprocess.size)
    out = {}
    for name in list_methods():
        try:
            cam = build_method(loaded.model, name, facts.default_layer)
            out[name] = max(1, int(cam.expected_rows(shape, size)))
        except Exception:  # a method that cannot be built for this model: counted as one
            out[name] = 1
    return out


def get_state(request: Request) -> ServeState:
    """The app's :class:`ServeState`."""
    return request.app.state.serve  # type: ignore[no-any-return]


def get_client(request: Request) -> str:
    """The calling browser's id (set by :class:`~sacam.serve.guard.Guard` from its cookie)."""
    return str(getattr(request.state, "client", ""))


StateDep = Annotated[ServeState, Depends(get_state)]
ClientDep = Annotated[str, Depends(get_client)]
