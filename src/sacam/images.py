"""Reading images: bounded in size, converted to RGB by their true range.

:func:`load_image` reads the header first and refuses an image whose decoded size would
exceed ``max_pixels`` before decoding it; JPEGs are decoded at a reduced scale (1/2, 1/4
or 1/8, libjpeg's DCT scaling) when that brings them under the bound or toward a wanted
``draft_size``. Pixels are converted by their mode's real range (16-bit greys by 65535,
not clipped at 255), and transparent images are composited on a background, as image
viewers show them.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InputError

DEFAULT_MAX_PIXELS = 40_000_000
"""Default bound on decoded pixels (e.g. 8000×5000): about 120 MB as RGB."""

SAMPLE_IMAGES = ("chelsea", "coffee", "astronaut", "rocket")
_JPEG_SCALES = (2, 4, 8)


def load_image(
    source: str | Path | bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: tuple[int, int, int] = (255, 255, 255),
    draft_size: tuple[int, int] | None = None,
) -> Image.Image:
    """Open an image file (or bytes) as an RGB PIL image, with a clear error when it cannot.

    ``"sample:NAME"`` opens one of scikit-image's sample photos (chelsea, coffee,
    astronaut, rocket).

    Args:
        source: a path, ``"sample:NAME"``, or the encoded bytes of an image.
        max_pixels: the most pixels (width × height) decoded; a larger image raises
            :class:`InputError` before it is decoded (a JPEG is first decoded at 1/2,
            1/4 or 1/8 scale if that fits).
        background: RGB colour that transparent pixels are composited on.
        draft_size: ``(width, height)`` the caller needs at least; a JPEG is decoded
            at the smallest DCT scale that still covers it (``None``: full size).

    Returns:
        the image in mode ``"RGB"``. 16-bit and 32-bit integer greys are scaled from
        0..65535, float greys from [0, 1] (or [0, 255] when values exceed 1), CMYK,
        YCbCr and palettes by PIL's conversions; alpha is composited on ``background``.

    Raises:
        InputError: the file is missing, not an image, larger than ``max_pixels``, or
            has pixel values outside its mode's range (float NaN, negative integers).
    """
    if isinstance(source, str) and source.startswith("sample:"):
        return sample_image(source.split(":", 1)[1])
    if max_pixels < 1:
        raise InputError(f"max_pixels must be at least 1, not {max_pixels}")
    if len(background) != 3 or not all(0 <= int(c) <= 255 for c in background):
        raise InputError(f"background must be three values in 0..255, not {background!r}")
    what = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        with warnings.catch_warnings():
            # sacam enforces its own bound below; PIL's warning would only repeat it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except FileNotFoundError:
        raise InputError(f"image not found: {source!s}") from None
    except Image.DecompressionBombError as exc:
        raise InputError(f"image {what} is too large to decode safely: {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"cannot read image {what}: {exc}") from None
    try:
        _reduce_or_refuse(img, what, max_pixels, draft_size)
        img.load()
        return to_rgb(img, background=background, what=what)
    except InputError:
        img.close()
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        img.close()
        raise InputError(f"cannot read image {what}: {exc}") from None


def _reduce_or_refuse(
    img: Image.Image, what: str, max_pixels: int, draft_size: tuple[int, int] | None
) -> None:
    w, h = img.size
    if img.format == "JPEG":
        want_w, want_h = draft_size if draft_size is not None else (w, h)
        if w * h > max_pixels:
            # the smallest DCT scale under the bound (libjpeg rounds sizes up)
            s = next((s for s in _JPEG_SCALES if -(-w // s) * -(-h // s) <= max_pixels), 8)
            want_w, want_h = min(want_w, w // s), min(want_h, h // s)
        if (want_w, want_h) != (w, h):
            img.draft(None, (max(1, want_w), max(1, want_h)))
    dw, dh = img.size
    if dw * dh > max_pixels:
        raise InputError(
            f"image {what} is {w}×{h} pixels, more than the limit of {max_pixels:,} "
            "(max_pixels); shrink it first"
        )


def to_rgb(
    img: Image.Image, *, background: tuple[int, int, int] = (255, 255, 255), what: str = "image"
) -> Image.Image:
    """Convert a decoded PIL image of any mode to RGB by its mode's true range.

    Args:
        img: a loaded PIL image.
        background: RGB colour transparent pixels are composited on.
        what: how the image is named in errors.
    """
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(_grey_to_8bit(np.asarray(img), mode, what)).convert("RGB")
    if mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*(int(c) for c in background), 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return img.convert("RGB")


def _grey_to_8bit(arr: np.ndarray, mode: str, what: str) -> np.ndarray:
    if mode == "F":
        arr = arr.astype(np.float64)
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 255:
            raise InputError(
                f"image {what} has float pixels outside [0, 255] (or NaN); "
                "scale it to [0, 1] or [0, 255] first"
            )
        scale = 255.0 if arr.max() <= 1.0 else 1.0
        return np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
    wide = arr.astype(np.int64)
    if wide.size and (wide.min() < 0 or wide.max() > 65535):
        raise InputError(
            f"image {what} has integer pixels outside 0..65535; convert it to 8 or 16 bit first"
        )
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def sample_image(name: str) -> Image.Image:
    """One of scikit-image's bundled sample photos as a PIL image."""
    if name not in SAMPLE_IMAGES:
        raise InputError(f"unknown sample image {name!r}; samples: {', '.join(SAMPLE_IMAGES)}")
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
