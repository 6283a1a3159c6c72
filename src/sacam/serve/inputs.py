"""Checking what a client sent: the image, the methods, the layer, the class.

Each check raises an error with an HTTP status (:class:`~sacam.serve.progress.JobError`)
or one of sacam's own errors (answered 400), and quotes at most a short prefix of what
was sent.
"""

from __future__ import annotations

import ctypes
import io
import warnings
from collections.abc import Callable
from functools import cache

import torch
from PIL import Image, UnidentifiedImageError

from ..errors import InputError, LayerError, MethodError
from ..images import load_image
from ..models import LoadedModel
from ..registry import list_methods, method_info
from ..targets import parse_class
from .progress import JobError
from .service import ModelFacts

SHOWN_CHARS = 40
"""The most characters of a client's text an error message repeats."""


def short(text: str) -> str:
    """``text`` cut to :data:`SHOWN_CHARS` characters (with "…" when cut)."""
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "…"


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode uploaded bytes as an RGB image, as the CLI reads files, with an HTTP status.

    :func:`sacam.images.load_image` decides (the format comes from the content, never
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
        raise JobError(
            413, "the image has far too many pixels to open safely: shrink it first"
        ) from None
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
            f"unknown layer {short(layer)!r}: use one of the layers GET /api/layers lists "
            f"(the last ones: {shown})"
        )
    return layer


def parse_target(text: str | None, loaded: LoadedModel, n_classes: int) -> int | None:
    """The form's target: :func:`sacam.targets.parse_class` (``None`` or blank: the top-1 class)."""
    if text is None or not text.strip():
        return None
    return parse_class(text, loaded.class_names, n_classes)


def prepare_pixels(data: bytes, max_pixels: int, loaded: LoadedModel) -> torch.Tensor:
    """Decode an upload (:func:`decode_image`) and preprocess it at once.

    Returns the ``(3, size, size)`` [0, 1] pixels the model sees: a queued job holds this
    tensor (600 kB at 224 px), never the decoded upload, which may be 100 times larger.
    """
    picture = decode_image(data, max_pixels)
    try:
        return loaded.preprocess.pixels(picture)
    finally:
        picture.close()
        del picture
        return_freed_memory()


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not glibc
        return None


def return_freed_memory() -> None:
    """Give the pages of freed memory back to the system (glibc; elsewhere nothing).

    A decoded upload takes up to 120 MB in blocks that glibc keeps for reuse once freed;
    trimming after each one keeps a flood of uploads from leaving the server that large.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
