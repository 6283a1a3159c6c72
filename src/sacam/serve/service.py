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
import threading
import time
import uuid
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .. import list_layers
from .._outputs import to_logits
from ..api import build_method
from ..errors import InputError, LayerError, MethodError, ModelError, TargetError
from ..evaluation.faithfulness import deletion, insertion
from ..methods.attention import SALayerInspection
from ..models import LoadedModel, load_image
from ..registry import list_methods, method_info
from ..targets import parse_class
from ..viz import overlay
from .worker import JobError, Progress

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


def model_facts(loaded: LoadedModel) -> ModelFacts:
    """Probe the model once: its layers, its automatic layer, its number of classes."""
    device = model_device(loaded)
    size = loaded.preprocess.size
    x = torch.zeros(1, 3, size, size, device=device)
    layers = tuple(spatial_layers(loaded.model, x))
    if not layers:
        raise ModelError("the model has no layer with a 4-D output of spatial size above 1")
    with torch.inference_mode():
        out = loaded.model(x)
        with contextlib.suppress(TargetError):  # a tuple, dict, .logits: its logits
            out = to_logits(out)
    if not (isinstance(out, torch.Tensor) and out.ndim == 2):
        raise ModelError(
            "sacam serve needs a classifier whose output is (batch, classes) logits; "
            f"this model returns {type(out).__name__} {tuple(getattr(out, 'shape', ()))}"
        )
    return ModelFacts(layers, layers[-1][0], size, int(out.shape[1]), device)


# ---------------------------------------------------------------------- inputs
def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode uploaded bytes as an RGB image, as the CLI reads files, with an HTTP status.

    :func:`sacam.models.load_image` decides (the format comes from the content, never
    from a file name; an image over ``max_pixels`` is refused before it is decoded, a
    large JPEG decoded at a reduced scale). When it refuses, the header tells which
    status fits: 415 when it is no image Pillow knows, 413 when it is too large, 400 when
    it is broken.
    """
    if not data:
        raise JobError(400, "the uploaded file is empty: choose an image file")
    try:
        return load_image(data, max_pixels=max_pixels)
    except InputError as exc:
        reason = str(exc)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as header:
                width, height = header.size
    except Image.DecompressionBombError:
        raise JobError(413, f"the image has too many pixels: {reason}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise JobError(
            415, "the uploaded file is not an image sacam can read (PNG, JPEG, WebP, ...)"
        ) from None
    if width * height > max_pixels:
        raise JobError(
            413,
            f"the image is {width}×{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,}: shrink it first",
        )
    raise JobError(400, f"the image could not be decoded: {reason}")


def check_methods(methods: list[str]) -> list[str]:
    """The requested methods, each once, in order; :class:`MethodError` for unknown ones."""
    chosen = list(dict.fromkeys(m.strip() for m in methods if m.strip()))
    if not chosen:
        raise MethodError(f"choose at least one method: {', '.join(list_methods())}")
    for name in chosen:
        method_info(name)  # raises, listing the valid names
    return chosen


def check_layer(layer: str | None, facts: ModelFacts) -> str:
    """A listed layer label (the automatic layer for ``None`` or ``""``)."""
    if layer is None or layer.strip() in ("", "auto"):
        return facts.default_layer
    labels = [label for label, _ in facts.layers]
    if layer not in labels:
        shown = ", ".join(labels[-8:])
        raise LayerError(
            f"unknown layer {layer!r}: use one of the layers GET /api/layers lists "
            f"(the last ones: {shown})"
        )
    return layer


def parse_target(text: str | None, loaded: LoadedModel, n_classes: int) -> int | None:
    """The form's target: :func:`sacam.targets.parse_class` (``None`` or blank: the top-1 class)."""
    if text is None or not text.strip():
        return None
    return parse_class(text, loaded.class_names, n_classes)


# ---------------------------------------------------------------------- results
@dataclass
class StoredResult:
    """An explanation kept for follow-up requests (attention rows, curves).

    Attributes:
        id: random hex id the client refers to.
        x: the normalised model input ``(1, 3, H, W)`` on the model's device.
        pixels: ``(3, H, W)`` [0, 1] pixels on the CPU.
        class_index: the explained class.
        layer: the layer label the maps were made at.
        maps: method -> ``(H, W)`` map in [0, 1] on the CPU.
        inspections: method -> SA-CAM inspection data (tensors on the CPU).
    """

    id: str
    x: torch.Tensor
    pixels: torch.Tensor
    class_index: int
    layer: str
    maps: dict[str, torch.Tensor]
    inspections: dict[str, SALayerInspection]


class ResultStore:
    """The last ``capacity`` explanations, by id (least recently used forgotten first)."""

    def __init__(self, capacity: int = 16) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, StoredResult] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, result: StoredResult) -> None:
        """Keep ``result``, forgetting the oldest beyond the capacity."""
        with self._lock:
            self._items[result.id] = result
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def get(self, result_id: str) -> StoredResult:
        """The stored result; :class:`JobError` 404 when unknown or forgotten."""
        with self._lock:
            try:
                self._items.move_to_end(result_id)
                return self._items[result_id]
            except KeyError:
                raise JobError(
                    404, "unknown or expired result id: explain the image again"
                ) from None


def png_data_url(image: Image.Image) -> str:
    """A PIL image as a ``data:image/png;base64,...`` URL."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def map_image(cam: torch.Tensor) -> Image.Image:
    """A [0, 1] map as an 8-bit grey image (value ``v`` stored as ``round(255 v)``)."""
    arr = (cam.detach().float().cpu().clamp(0, 1).numpy() * 255.0).round().astype(np.uint8)
    return Image.fromarray(arr, mode="L")


def _prediction(loaded: LoadedModel, index: int, prob: float) -> dict[str, Any]:
    return {"class_index": index, "name": loaded.class_name(index), "probability": prob}


def run_explain(
    loaded: LoadedModel,
    facts: ModelFacts,
    store: ResultStore,
    image: Image.Image,
    methods: list[str],
    target: int | None,
    layer: str,
    progress: Progress,
) -> dict[str, Any]:
    """Classify an image and explain it with each method; keep the result for follow-ups.

    Args:
        loaded: the model with its preprocessing and class names.
        facts: :func:`model_facts` of the model.
        store: where the result is kept for attention rows and curves.
        image: the RGB picture.
        methods: registered method names (checked).
        target: the class to explain, ``None`` for the top-1 class.
        layer: a listed layer label (checked).
        progress: the job's progress reporter.

    Returns:
        the answer of ``POST /api/explain`` (see :mod:`sacam.serve.app`).
    """
    shape = facts.layer_shape(layer)
    n_positions = math.prod(shape[2:])
    if "sa-cam" in methods and n_positions > MAX_ATTENTION_POSITIONS:
        raise JobError(
            400,
            f"SA-CAM's attention over layer {layer!r} would be {n_positions}×{n_positions}; "
            f"choose a layer with at most {MAX_ATTENTION_POSITIONS} positions",
        )
    progress.stages(len(methods) + 1)
    progress.stage(0, "classifying", 1)
    pre = loaded.preprocess
    pixels = pre.pixels(image)
    x = pre.normalize(pixels)[None].to(facts.device)
    with torch.inference_mode():
        logits = to_logits(loaded.model(x))
    probs = torch.softmax(logits.float(), dim=1)[0].cpu()
    top = probs.topk(min(5, probs.shape[0]))
    predictions = [
        _prediction(loaded, int(i), float(p))
        for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
    ]
    cls = int(top.indices[0]) if target is None else target
    result = StoredResult(uuid.uuid4().hex, x, pixels, cls, layer, {}, {})
    entries = []
    for k, name in enumerate(methods, start=1):
        cam = build_method(loaded.model, name, layer)
        progress.stage(k, name, cam.expected_rows(shape, (x.shape[-2], x.shape[-1])))
        start = time.perf_counter()
        ex = cam.explain(x, cls)
        elapsed = time.perf_counter() - start
        cam_map = ex.maps[0].detach().float().cpu()
        result.maps[name] = cam_map
        entry: dict[str, Any] = {
            "method": name,
            "overlay": png_data_url(overlay(pixels, cam_map)),
            "heatmap": png_data_url(overlay(pixels, cam_map, alpha=1.0)),
            "map": png_data_url(map_image(cam_map)),
            "time_s": round(elapsed, 4),
            "constant": bool(ex.constant[0]),
        }
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
        entries.append(entry)
    store.put(result)
    return {
        "result_id": result.id,
        "model": loaded.name,
        "image": png_data_url(Image.fromarray(_to_uint8(pixels))),
        "predictions": predictions,
        "explained_class": _prediction(loaded, cls, float(probs[cls])),
        "layer": layer,
        "maps": entries,
    }


def _to_uint8(pixels: torch.Tensor) -> np.ndarray:
    arr = pixels.permute(1, 2, 0).clamp(0, 1).numpy() * 255.0
    return arr.round().astype(np.uint8)


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
    progress.stages(2 * len(chosen))
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
