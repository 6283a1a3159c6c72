"""Pictures: a map over its image, grids of images × methods saved as PNG, detections."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from .errors import MethodError  # noqa: E402

ImageLike = Image.Image | np.ndarray | torch.Tensor


@contextlib.contextmanager
def saved_figure(path: str | Path, *, dpi: int = 100, **subplots: Any) -> Iterator[tuple[Any, Any]]:
    """A ``plt.subplots(**subplots)`` figure, saved as PNG at ``path`` if the block succeeds.

    The figure is laid out and saved (parent folders created) when the block ends without
    an exception, and closed whatever happens.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a" / "f.png"
        >>> with saved_figure(p, figsize=(1, 1)) as (fig, ax):
        ...     _ = ax.plot([0, 1])
        >>> p.exists()
        True
    """
    fig, axes = plt.subplots(**subplots)
    try:
        yield fig, axes
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)


def to_rgb_array(image: ImageLike) -> np.ndarray:
    """An image as an ``(H, W, 3)`` float array in [0, 1].

    Accepts a PIL image, a ``(3, H, W)`` tensor of [0, 1] pixels, or an ``(H, W, 3)``
    array (uint8 or float in [0, 1]).
    """
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    if isinstance(image, torch.Tensor):
        t = image.detach().float().cpu()
        if t.ndim == 3 and t.shape[0] in (1, 3):
            t = t.permute(1, 2, 0)
        arr = t.numpy()
    else:
        arr = np.asarray(image)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


def overlay(
    image: ImageLike, cam: torch.Tensor | np.ndarray, *, cmap: str = "jet", alpha: float = 0.5
) -> Image.Image:
    """Blend a [0, 1] map onto its image with a matplotlib colour map.

    Args:
        image: the picture (PIL, ``(3, H, W)`` tensor in [0, 1], or ``(H, W, 3)`` array).
        cam: ``(h, w)`` map in [0, 1]; resized to the image if sizes differ.
        cmap: any matplotlib colour map name.
        alpha: weight of the colour map (0 = image only, 1 = map only).

    Example:
        >>> import torch
        >>> from PIL import Image
        >>> overlay(Image.new("RGB", (8, 8)), torch.rand(4, 4)).size
        (8, 8)
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = to_rgb_array(image)
    m = cam.detach().float().cpu().numpy() if isinstance(cam, torch.Tensor) else np.asarray(cam)
    m = np.nan_to_num(np.clip(m.astype(np.float32), 0.0, 1.0))
    if m.shape != rgb.shape[:2]:
        resized = Image.fromarray(m).resize((rgb.shape[1], rgb.shape[0]), Image.Resampling.BILINEAR)
        m = np.asarray(resized, dtype=np.float32)
    colours = matplotlib.colormaps[cmap](m)[..., :3]
    blended = (1.0 - alpha) * rgb + alpha * colours
    return Image.fromarray((np.clip(blended, 0, 1) * 255).round().astype(np.uint8))


def save_grid(
    images: Sequence[ImageLike],
    maps: Mapping[str, torch.Tensor],
    path: str | Path,
    *,
    titles: Sequence[str] | None = None,
    cmap: str = "jet",
    alpha: float = 0.5,
    cell: float = 2.6,
) -> Path:
    """Save a grid: one row per image (the image, then one overlay per method).

    Args:
        images: the B pictures.
        maps: method name -> ``(B, H, W)`` maps in [0, 1].
        path: PNG file to write.
        titles: one caption per image (e.g. "Egyptian cat 0.77").
        cmap: matplotlib colour map, as in :func:`overlay`.
        alpha: overlay opacity, as in :func:`overlay`.
        cell: size of one cell in inches.

    Returns:
        the path written.
    """
    n_rows, n_cols = len(images), len(maps) + 1
    for name, m in maps.items():
        if m.shape[0] != n_rows:
            raise ValueError(f"maps[{name!r}] holds {m.shape[0]} maps for {n_rows} images")
    size = (cell * n_cols, cell * n_rows + 0.3)
    with saved_figure(path, nrows=n_rows, ncols=n_cols, figsize=size, squeeze=False) as (_, axes):
        for r, image in enumerate(images):
            axes[r, 0].imshow(to_rgb_array(image))
            axes[r, 0].set_title(titles[r] if titles else "image", fontsize=9)
            for c, (name, m) in enumerate(maps.items(), start=1):
                axes[r, c].imshow(overlay(image, m[r], cmap=cmap, alpha=alpha))
                axes[r, c].set_title(name, fontsize=9)
            for ax in axes[r]:
                ax.axis("off")
    return Path(path)


def save_attention(
    image: ImageLike,
    cam: torch.Tensor,
    attention_row: torch.Tensor,
    position: tuple[int, int],
    path: str | Path,
    *,
    title: str = "",
    cmap: str = "jet",
    alpha: float = 0.5,
) -> Path:
    """Save SA-CAM's view of one position: the image, its map, and the position's attention.

    Args:
        image: the picture.
        cam: its ``(H, W)`` map in [0, 1].
        attention_row: ``(h, w)`` attention of the chosen position over the layer grid
            (``SALayerInspection.attention_row``).
        position: ``(row, col)`` of that position on the layer grid (marked with a cross).
        path: PNG file to write.
        title: caption of the figure.
        cmap: matplotlib colour map.
        alpha: overlay opacity.

    Returns:
        the path written.
    """
    rgb = to_rgb_array(image)
    h, w = attention_row.shape
    row = attention_row.detach().float().cpu()
    shown = (row - row.min()) / (row.max() - row.min()).clamp_min(1e-12)
    with saved_figure(path, nrows=1, ncols=3, figsize=(9, 3.3)) as (_, axes):
        axes[0].imshow(rgb)
        axes[0].set_title(title or "image", fontsize=9)
        axes[1].imshow(overlay(rgb, cam, cmap=cmap, alpha=alpha))
        axes[1].set_title("map", fontsize=9)
        axes[2].imshow(overlay(rgb, shown, cmap=cmap, alpha=alpha))
        y = (position[0] + 0.5) * rgb.shape[0] / h
        x = (position[1] + 0.5) * rgb.shape[1] / w
        axes[2].plot([x], [y], marker="x", color="white", markersize=12, mew=3)
        axes[2].set_title(
            f"attention of position {position} (max {float(row.max()):.3f})", fontsize=9
        )
        for ax in axes:
            ax.axis("off")
    return Path(path)


class DetectionLike(Protocol):
    """What :func:`draw_detections` reads of a detection (``sacam.detection.DetectionRecord``)."""

    box: tuple[float, float, float, float]
    label: int
    score: float
    map: torch.Tensor


#: box colours by label (matplotlib's tab10), as 0-255 RGB
BOX_COLOURS = [
    tuple(round(255 * c) for c in matplotlib.colormaps["tab10"](i)[:3]) for i in range(10)
]


def draw_detections(
    image: ImageLike,
    records: Sequence[DetectionLike],
    *,
    combined: bool = True,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    colours: Mapping[int, tuple[int, int, int]] | None = None,
    width: int = 2,
    cmap: str = "jet",
    alpha: float = 0.5,
) -> Image.Image:
    """Detections drawn over their maps: each box with its label and score.

    Args:
        image: the picture, at the maps' size (PIL, ``(3, H, W)`` tensor in [0, 1], or
            ``(H, W, 3)`` array).
        records: the detections with their maps, e.g. from
            :func:`sacam.detection.explain_detections` (``box`` in ``xyxy`` pixels).
        combined: one picture with the element-wise maximum of the maps and every box;
            ``False``: one panel per detection (its own map and box), side by side.
        class_names: names of the labels (a list indexed by label, or a dict).
        colours: RGB colour of each label's boxes (default: matplotlib's tab10 by label).
        width: the outline's width in pixels.
        cmap: colour map of the maps, as in :func:`overlay`.
        alpha: opacity of the maps, as in :func:`overlay`.

    Returns:
        The picture (``combined``), or the panels in one row; the image alone when there
        are no records.

    Example:
        >>> import torch
        >>> from types import SimpleNamespace as R
        >>> rec = R(box=(2.0, 2.0, 9.0, 9.0), label=1, score=0.9, map=torch.rand(16, 16))
        >>> draw_detections(torch.rand(3, 16, 16), [rec, rec], combined=False).size
        (32, 16)
    """
    rgb = to_rgb_array(image)
    if not records:
        return Image.fromarray((rgb * 255).round().astype(np.uint8))
    if combined:
        joint = torch.stack([r.map.detach().float().cpu() for r in records]).amax(0)
        picture = overlay(rgb, joint, cmap=cmap, alpha=alpha)
        for r in records:
            _draw_box(picture, r, class_names, colours, width)
        return picture
    panels = []
    for r in records:
        panel = overlay(rgb, r.map, cmap=cmap, alpha=alpha)
        _draw_box(panel, r, class_names, colours, width)
        panels.append(np.asarray(panel))
    return Image.fromarray(np.concatenate(panels, axis=1))


def _draw_box(
    picture: Image.Image,
    record: DetectionLike,
    names: Sequence[str] | Mapping[int, str] | None,
    colours: Mapping[int, tuple[int, int, int]] | None,
    width: int,
) -> None:
    """One detection's outline, and its caption on a patch of the box colour above it."""
    label = int(record.label)
    colour = colours[label] if colours and label in colours else BOX_COLOURS[label % 10]
    x1, y1, x2, y2 = (round(float(v)) for v in record.box)
    draw = ImageDraw.Draw(picture)
    draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)
    if isinstance(names, Mapping):
        name = names.get(label, str(label))
    else:
        name = names[label] if names is not None and 0 <= label < len(names) else str(label)
    caption = f"{name} {float(record.score):.2f}"
    left, top, right, bottom = draw.textbbox((x1, y1), caption)
    shift = bottom - top + 2
    ty = y1 - shift if y1 - shift >= 0 else y1
    draw.rectangle((x1, ty, x1 + right - left + 2, ty + shift), fill=colour)
    draw.text((x1 + 1, ty), caption, fill=(255, 255, 255))


class ConceptsLike(Protocol):
    """What :func:`plot_concepts` reads of :class:`sacam.Concepts`."""

    maps: torch.Tensor
    top_classes: torch.Tensor | None
    top_scores: torch.Tensor | None


def plot_concepts(
    path: str | Path,
    image: torch.Tensor | np.ndarray,
    found: ConceptsLike,
    index: int = 0,
    *,
    class_names: Sequence[str] | None = None,
    image_weight: float = 0.3,
) -> Path:
    """Save a PNG of one image's concepts: each pixel in its strongest concept's colour.

    The colour of concept ``j`` (matplotlib's ``gist_rainbow``, as pytorch-grad-cam's
    ``show_factorization_on_image``) is scaled by that concept's map value, blended with
    the image (``image_weight``), beside the image itself; the legend lists each
    concept's top classes and scores (names from ``class_names`` when given).

    Args:
        path: where to write the PNG (folders are created).
        image: the image, ``(3, H, W)`` tensor or ``(H, W, 3)`` array of [0, 1] pixels,
            at the size of ``found.maps``.
        found: the result of :func:`sacam.concepts`.
        index: which image of the batch.
        class_names: names of the classes, indexed by class.
        image_weight: weight of the image in the blend.
    """
    from matplotlib import colormaps
    from matplotlib.patches import Patch

    rgb = to_rgb_array(image)
    maps = found.maps[index].detach().float().cpu().numpy()  # (n, H, W)
    if maps.shape[-2:] != rgb.shape[:2]:
        raise MethodError(
            f"the image is {rgb.shape[:2]} but the concept maps are {maps.shape[-2:]}: pass "
            "the image at the size the concepts were computed for (upsample=True)"
        )
    n = maps.shape[0]
    colours = np.array([colormaps["gist_rainbow"](j / n)[:3] for j in range(n)])
    strongest = maps.argmax(axis=0)
    shade = colours[strongest] * maps.max(axis=0)[..., None]
    blend = image_weight * rgb + (1 - image_weight) * shade
    handles = [Patch(color=colours[j], label=_legend(found, j, class_names)) for j in range(n)]
    with saved_figure(path, figsize=(8, 4.5), ncols=2) as (fig, axes):
        axes[0].imshow(rgb)
        axes[1].imshow(np.clip(blend, 0, 1))
        for ax in axes:
            ax.axis("off")
        fig.legend(handles=handles, loc="lower center", ncol=min(n, 4), fontsize=8)
        fig.subplots_adjust(bottom=0.1 + 0.06 * math.ceil(n / 4))
    return Path(path)


def _legend(found: ConceptsLike, j: int, names: Sequence[str] | None) -> str:
    if found.top_classes is None or found.top_scores is None:
        return f"concept {j}"
    parts = []
    for c, s in zip(found.top_classes[j].tolist(), found.top_scores[j].tolist(), strict=True):
        parts.append(f"{names[c] if names is not None else c}: {s:.2f}")
    return f"{j}: " + ", ".join(parts)
