"""What the web app computes, without the web: explanations, curves, attention rows.

These functions take a :class:`~sacam.models.LoadedModel` and plain values and return
JSON-ready dictionaries; :mod:`sacam.serve.app` only parses requests and queues these
functions on the model thread (:mod:`sacam.serve.worker`). Nothing here imports a web
framework, so it is tested like the rest of sacam.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import math
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from .. import list_layers
from ..api import build_method
from ..errors import ModelError, TargetError
from ..evaluation.faithfulness import deletion, insertion
from ..explanation import Explanation
from ..methods.attention import SALayerInspection
from ..models import LoadedModel
from ..scores import class_probabilities, output_logits
from ..viz import overlay
from .progress import JobError, Progress
from .results import ResultStore, StoredResult

MAX_ATTENTION_POSITIONS = 64 * 64
"""SA-CAM's attention is N×N over the layer's N positions: larger grids are refused."""
CURVE_INPUTS_PER_PASS = 16
"""Images per forward pass of the curves: fixed, since tuning the fastest size
(``inputs_per_pass="auto"``) costs more than a short curve itself."""


@dataclass(frozen=True)
class ModelFacts:
    """What the page needs to know about the model, measured once at start-up.

    Attributes:
        layers: ``(label, shape)`` of every layer call with a 4-D output of spatial size
            above 1, in forward order (the layers a map can be made at).
        default_layer: the automatic layer (the last of ``layers``).
        input_size: side of the model input, in pixels.
        n_classes: number of output classes.
        device: the model's device.
    """

    layers: tuple[tuple[str, tuple[int, ...]], ...]
    default_layer: str
    input_size: int
    n_classes: int
    device: torch.device

    def layer_shape(self, label: str) -> tuple[int, ...]:
        """Output shape of a listed layer."""
        return dict(self.layers)[label]


def model_device(loaded: LoadedModel) -> torch.device:
    """The device of the model's first parameter (CPU for a model without any)."""
    param = next(iter(loaded.model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def spatial_layers(model: torch.nn.Module, x: torch.Tensor) -> list[tuple[str, tuple[int, ...]]]:
    """``(label, shape)`` of the layer calls with a 4-D output of spatial size above 1.

    In forward order, as :func:`sacam.list_layers` lists them; the last one is the layer
    sacam picks automatically.
    """
    return [
        (label, shape)
        for label, shape in list_layers(model, x)
        if shape is not None and len(shape) == 4 and shape[2] * shape[3] > 1
    ]


def probe_model(
    loaded: LoadedModel,
) -> tuple[torch.device, tuple[tuple[str, tuple[int, ...]], ...], Any]:
    """One forward pass of a blank input: the device, the spatial layers and the raw output."""
    device = model_device(loaded)
    size = loaded.preprocess.size
    x = torch.zeros(1, 3, size, size, device=device)
    layers = tuple(spatial_layers(loaded.model, x))
    if not layers:
        raise ModelError("the model has no layer with a 4-D output of spatial size above 1")
    with torch.inference_mode():
        return device, layers, loaded.model(x)


def model_facts(loaded: LoadedModel) -> ModelFacts:
    """Probe the model once: its layers, its automatic layer, its number of classes."""
    device, layers, out = probe_model(loaded)
    size = loaded.preprocess.size
    with torch.inference_mode():
        with contextlib.suppress(TargetError):  # a tuple, dict, .logits: its logits
            out = output_logits(out)
    if not (isinstance(out, torch.Tensor) and out.ndim == 2):
        raise ModelError(
            "sacam serve needs a classifier whose output is (batch, classes) logits; "
            f"this model returns {type(out).__name__} {tuple(getattr(out, 'shape', ()))}"
        )
    return ModelFacts(layers, layers[-1][0], size, int(out.shape[1]), device)


# ---------------------------------------------------------------------- results
def png_data_url(image: Image.Image) -> str:
    """A PIL image as a ``data:image/png;base64,...`` URL."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def map_image(cam: torch.Tensor) -> Image.Image:
    """A [0, 1] map as an 8-bit grey image (value ``v`` stored as ``round(255 v)``)."""
    arr = (cam.detach().float().cpu().clamp(0, 1).numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(arr, mode="L")


def image_data_url(pixels: torch.Tensor) -> str:
    """``(3, H, W)`` pixels in [0, 1] as a PNG data URL."""
    arr = pixels.permute(1, 2, 0).clamp(0, 1).numpy() * 255.0
    return png_data_url(Image.fromarray(arr.round().astype(np.uint8)))


def map_entry(
    name: str, pixels: torch.Tensor, ex: Explanation, elapsed: float
) -> tuple[dict[str, Any], torch.Tensor]:
    """One method's map of one image as an answer entry, and the map on the CPU.

    The entry carries the map over the image (``overlay``), alone in colour (``heatmap``)
    and in grey (``map``) as PNG data URLs, the seconds it took and its constant flag.
    """
    cam = ex.maps[0].detach().float().cpu()
    entry: dict[str, Any] = {
        "method": name,
        "overlay": png_data_url(overlay(pixels, cam)),
        "heatmap": png_data_url(overlay(pixels, cam, alpha=1.0)),
        "map": png_data_url(map_image(cam)),
        "time_s": round(elapsed, 4),
        "constant": bool(ex.constant[0]),
    }
    return entry, cam


def _prediction(loaded: LoadedModel, index: int, prob: float) -> dict[str, Any]:
    return {"class_index": index, "name": loaded.class_name(index), "probability": prob}


@dataclass(frozen=True)
class ExplainInput:
    """What an explain job works on: new pixels, or a stored result to explain again."""

    pixels: torch.Tensor | None = None
    stored: StoredResult | None = None


def run_explain(
    loaded: LoadedModel,
    facts: ModelFacts,
    store: ResultStore,
    source: ExplainInput,
    methods: list[str],
    target: int | None,
    layer: str,
    progress: Progress,
    *,
    client: str = "",
) -> dict[str, Any]:
    """Classify an image and explain it with each method; keep the result for follow-ups.

    Args:
        loaded: the model with its preprocessing and class names.
        facts: :func:`model_facts` of the model.
        store: where the result is kept for attention rows and curves.
        source: the preprocessed pixels, or a stored result (its image is explained
            again, for another class, layer or methods, without classifying it again).
        methods: registered method names (checked).
        target: the class to explain, ``None`` for the top-1 class.
        layer: a listed layer label (checked).
        progress: the job's progress reporter: one stage per method, planned at the
            method's expected forward passes; the answer so far is published after each
            method, so a client sees a fast method's map before a slow one ends.
        client: whose result it is (see :class:`~sacam.serve.results.ResultStore`).

    Returns:
        the answer of ``POST /api/explain`` (see :mod:`sacam.serve.app`).
    """
    shape = facts.layer_shape(layer)
    _check_attention_size(methods, layer, shape)
    cams = [build_method(loaded.model, name, layer) for name in methods]
    size = (loaded.preprocess.size, loaded.preprocess.size)
    passes = [cam.expected_rows(shape, size) for cam in cams]
    progress.plan(([1] if source.stored is None else []) + passes)
    x, pixels, probs = _classified(loaded, facts, source, progress)
    cls = int(probs.argmax()) if target is None else target
    result = StoredResult(uuid.uuid4().hex, x, pixels, cls, layer, {}, {}, probs)
    top = probs.topk(min(5, probs.shape[0]))
    answer: dict[str, Any] = {
        "result_id": result.id,
        "model": loaded.name,
        "image": image_data_url(pixels),
        "predictions": [
            _prediction(loaded, int(i), float(p))
            for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
        ],
        "explained_class": _prediction(loaded, cls, float(probs[cls])),
        "layer": layer,
        "maps": [],
    }
    first = 1 if source.stored is None else 0
    for k, (name, cam) in enumerate(zip(methods, cams, strict=True)):
        progress.stage(first + k, name, passes[k])
        answer["maps"].append(_explain_one(cam, name, result, shape))
        progress.publish({**answer, "maps": list(answer["maps"])})
    store.put(client, result)
    return answer


def _check_attention_size(methods: list[str], layer: str, shape: tuple[int, ...]) -> None:
    n_positions = math.prod(shape[2:])
    if "sa-cam" in methods and n_positions > MAX_ATTENTION_POSITIONS:
        raise JobError(
            400,
            f"SA-CAM's attention over layer {layer!r} would be "
            f"{n_positions}×{n_positions}; choose a layer with at most "
            f"{MAX_ATTENTION_POSITIONS} positions",
        )


def _classified(
    loaded: LoadedModel, facts: ModelFacts, source: ExplainInput, progress: Progress
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The model input, its [0, 1] pixels and the class probabilities."""
    if source.stored is not None:
        stored = source.stored
        return stored.x, stored.pixels, stored.probabilities
    assert source.pixels is not None
    progress.stage(0, "classifying", 1)
    x = loaded.preprocess.normalize(source.pixels)[None].to(facts.device)
    return x, source.pixels, class_probabilities(loaded.model, x)[0].cpu()


def _explain_one(
    cam: Any, name: str, result: StoredResult, shape: tuple[int, ...]
) -> dict[str, Any]:
    """One method's map of ``result``'s image (kept in ``result``) as an answer entry."""
    start = time.perf_counter()
    ex = cam.explain(result.x, result.class_index)
    entry, result.maps[name] = map_entry(name, result.pixels, ex, time.perf_counter() - start)
    for found in ex.extras.values():
        inspection = found.get(ex.layers[0]) if isinstance(found, dict) else None
        if isinstance(inspection, SALayerInspection):
            cpu = {
                f.name: getattr(inspection, f.name).detach().cpu()
                for f in dataclasses.fields(inspection)
                if isinstance(getattr(inspection, f.name), torch.Tensor)
            }
            result.inspections[name] = dataclasses.replace(inspection, **cpu)
            entry["attention"] = {"layer": ex.layers[0], "grid": list(shape[2:])}
    return entry


def attention_row(stored: StoredResult, method: str, row: int, col: int) -> dict[str, Any]:
    """One position's SA-CAM attention over the layer grid, as numbers and an overlay.

    Args:
        stored: the explanation.
        method: a method of that explanation with attention data (``"sa-cam"``).
        row: the position's row on the layer grid.
        col: the position's column on the layer grid.

    Returns:
        ``layer``, ``grid`` ``[h, w]``, ``position`` ``[row, col]``, ``values`` (``h``
        rows of ``w`` attention weights of ``S^t``, summing to 1), ``max`` and
        ``overlay``: the row min-max scaled, upsampled and drawn over the image.
    """
    inspection = stored.inspections.get(method)
    if inspection is None:
        with_attention = ", ".join(stored.inspections) or "none"
        raise JobError(
            400,
            f"method {method!r} has no attention data in this result (methods with "
            f"attention: {with_attention})",
        )
    h, w = inspection.activations.shape[-2:]
    if not (0 <= row < h and 0 <= col < w):
        raise JobError(400, f"position ({row}, {col}) is outside the {h}×{w} layer grid")
    values = inspection.attention_row(0, row, col).double()
    span = values.max() - values.min()
    shown = (values - values.min()) / span if span > 0 else torch.zeros_like(values)
    return {
        "method": method,
        "layer": stored.layer,
        "grid": [h, w],
        "position": [row, col],
        "values": [[round(float(v), 6) for v in r] for r in values.tolist()],
        "max": float(values.max()),
        "overlay": png_data_url(overlay(stored.pixels, shown.float())),
    }


def run_curves(
    loaded: LoadedModel,
    stored: StoredResult,
    methods: list[str] | None,
    steps: int,
    progress: Progress,
) -> dict[str, Any]:
    """Deletion and insertion curves of the stored maps (:mod:`sacam.evaluation.faithfulness`).

    Args:
        loaded: the model.
        stored: the explanation whose maps are scored.
        methods: which of its methods (``None``: all of them).
        steps: number of steps of each curve.
        progress: the job's progress reporter.

    Returns:
        ``fractions`` (the x axis: fraction of pixels deleted or inserted) and, per
        method, the ``deletion`` and ``insertion`` curves (class probability) and AUCs.
    """
    chosen = list(stored.maps) if not methods else list(dict.fromkeys(methods))
    missing = [m for m in chosen if m not in stored.maps]
    if missing:
        raise JobError(
            400, f"the result has no map for {', '.join(missing)}; it has {', '.join(stored.maps)}"
        )
    h, w = stored.x.shape[-2:]
    step = math.ceil(h * w / steps)
    n = math.ceil(h * w / step)
    fractions = [min(t * step, h * w) / (h * w) for t in range(n + 1)]
    progress.plan([n + 1] * (2 * len(chosen)))  # one pass per point of each curve
    out = []
    for k, name in enumerate(chosen):
        cam = stored.maps[name][None].to(stored.x.device)
        entry: dict[str, Any] = {"method": name}
        for j, (kind, fn) in enumerate((("deletion", deletion), ("insertion", insertion))):
            progress.stage(2 * k + j, f"{kind} curve of {name}", n + 1)
            res = fn(
                loaded.model,
                stored.x,
                cam,
                targets=stored.class_index,
                steps=steps,
                inputs_per_pass=CURVE_INPUTS_PER_PASS,
            )
            entry[kind] = {
                "auc": float(res.auc[0]),
                "curve": [round(float(v), 6) for v in res.curves[0].tolist()],
            }
        out.append(entry)
    return {
        "result_id": stored.id,
        "class_index": stored.class_index,
        "steps": steps,
        "fractions": fractions,
        "methods": out,
    }
