"""``report.html`` of a detection or segmentation run: the table, the settings, examples.

One self-contained page, like the classifier report (:mod:`.report`): the summary table
(per method each value's mean ± 95% interval, seconds per map, the objects explained and
missed, the random-map baselines), the images that failed, the settings, and
``examples.png`` (written next to the page and embedded in it): the first explained
objects (at most :data:`EXAMPLES`), each in one row, the image with the object's true box
or mask outline, then each method's map of it over the image. The example maps are
computed again for the figure (a few maps per method).
"""

from __future__ import annotations

import base64
import csv
import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from ...models import LoadedModel
from ...viz import draw_detections, overlay, saved_figure, to_rgb_array
from ..config import BenchmarkConfig
from ..registry import arrow
from ..stats import format_mean_ci
from .report import STYLE
from .task_data import TaskImage
from .task_scoring import Match, explain_matches, match_image
from .task_store import SKIPPED

EXAMPLES = 4
"""The most objects shown in ``examples.png``."""
CELL = 2.5
"""The size of one panel of ``examples.png`` in inches (at 90 dpi)."""
SHOWN = 192
"""The least side in pixels of a picture in ``examples.png`` (smaller inputs are enlarged)."""
OUTLINE = (255, 255, 255)


@dataclass
class _Shown:
    """An object as :func:`sacam.viz.draw_detections` draws it: its true box, its map."""

    box: tuple[float, float, float, float]
    label: int
    score: float
    map: torch.Tensor


def render_task_table(summary: dict[str, Any]) -> str:
    """The summary table of a detection or segmentation run as HTML."""
    values = summary["values"]
    head = "".join(f"<th>{html.escape(v)} {arrow(v)}</th>" for v in values)
    parts = [
        f"<table><tr><th>method</th>{head}<th>seconds per map</th><th>explained</th>"
        "<th>missed</th><th>pointing baseline</th><th>energy baseline</th></tr>"
    ]
    for method, entry in summary["table"].items():
        cells = [format_mean_ci(entry[v]) for v in values] + [format_mean_ci(entry["time_s"])]
        cells += [str(entry["explained"]), str(entry["missed"])]
        cells += [f"{entry[b]:.3f}" for b in ("pointing_baseline", "energy_baseline")]
        row = "".join(f"<td>{html.escape(c)}</td>" for c in cells)
        parts.append(f"<tr><th>{html.escape(method)}</th>{row}</tr>")
    parts.append("</table>")
    return "".join(parts)


def _failures(out: Path, images: list[TaskImage], shown: int = 20) -> str:
    """The failed images of this run and their errors, as an HTML list (the first ``shown``)."""
    names = {image.name for image in images}
    with (out / "failures.csv").open(encoding="utf-8", newline="") as f:
        failed = [r for r in csv.DictReader(f) if r["image"] in names]
    if not failed:
        return "<p>No image failed.</p>"
    items = "".join(
        f"<li>{html.escape(r['image'])}: {html.escape(r['error'])}</li>" for r in failed[:shown]
    )
    more = (
        f"<p>… and {len(failed) - shown} more in failures.csv.</p>" if len(failed) > shown else ""
    )
    return f"<p>{len(failed)} image(s) could not be scored:</p><ul>{items}</ul>{more}"


def _chosen(
    rows: list[dict[str, Any]], images: list[TaskImage], method: str
) -> list[tuple[TaskImage, list[int]]]:
    """The first :data:`EXAMPLES` explained objects, grouped by image."""
    by_name = {image.name: image for image in images}
    picked: dict[str, list[int]] = {}
    explained = [r for r in rows if r["method"] == method and r["status"] == "explained"]
    for r in explained[:EXAMPLES]:
        picked.setdefault(r["image"], []).append(int(r["object"]))
    return [(by_name[name], objects) for name, objects in picked.items()]


def _picture(
    pixels: torch.Tensor, match: Match, cam: torch.Tensor | None, lm: LoadedModel
) -> Image.Image:
    """The image with the object's box or mask outline, under ``cam`` if one is given.

    A small input is enlarged (by a whole factor, to at least :data:`SHOWN` pixels) so that
    the outline and the caption stay thin beside it.
    """
    size = pixels.shape[-1]
    scale = max(1, SHOWN // size)
    rgb = (to_rgb_array(pixels) * 255).round().astype(np.uint8)
    image = Image.fromarray(rgb).resize(
        (size * scale, pixels.shape[-2] * scale), Image.Resampling.NEAREST
    )
    shown = torch.zeros(pixels.shape[-2:]) if cam is None else cam.cpu()
    alpha = 0.0 if cam is None else 0.5
    box = match.obj.box
    if box is not None:
        names = lm.class_names or None
        x0, y0, x1, y1 = (v * scale for v in box)
        record = _Shown((x0, y0, x1, y1), match.obj.label, match.score, shown)
        return draw_detections(image, [record], class_names=names, alpha=alpha)
    data = np.asarray(overlay(image, shown, alpha=alpha)).copy()
    mask = match.obj.mask.cpu().numpy().repeat(scale, 0).repeat(scale, 1)
    data[mask & ~ndimage.binary_erosion(mask, iterations=2)] = OUTLINE
    return Image.fromarray(data)


def write_examples(
    config: BenchmarkConfig, lm: LoadedModel, images: list[TaskImage], rows: list[dict[str, Any]]
) -> Path | None:
    """``examples.png``: the first explained objects, then each method's map of each.

    Returns the path, or None where no object was explained.
    """
    cells: list[list[tuple[str, Any]]] = []
    for image, objects in _chosen(rows, images, config.methods[0]):
        pixels, x, matches = match_image(lm, image, config)
        found = [k for k in objects if k < len(matches) and matches[k].target is not None]
        picked = [(k, matches[k]) for k in found]
        if not picked:
            continue
        chosen = [match for _, match in picked]
        maps = {m: explain_matches(lm.model, x, chosen, m, config) for m in config.methods}
        for i, (k, match) in enumerate(picked):
            title = f"{image.name} #{k}: {lm.class_name(match.obj.label)} {match.score:.2f}"
            row = [(title, _picture(pixels, match, None, lm))]
            row += [(m, _picture(pixels, match, maps[m][i], lm)) for m in config.methods]
            cells.append(row)
    if not cells:
        return None
    path = config.out / "examples.png"
    n_rows, n_cols = len(cells), len(cells[0])
    size = (CELL * n_cols, CELL * n_rows)
    grid = {"nrows": n_rows, "ncols": n_cols, "figsize": size, "squeeze": False}
    with saved_figure(path, dpi=90, **grid) as (_, axes):
        for r, row in enumerate(cells):
            for c, (title, picture) in enumerate(row):
                axes[r, c].imshow(picture)
                axes[r, c].set_title(title, fontsize=8)
                axes[r, c].axis("off")
    return path


def write_task_report(
    config: BenchmarkConfig,
    lm: LoadedModel,
    images: list[TaskImage],
    rows: list[dict[str, Any]],
    summary: dict[str, Any],
) -> list[str]:
    """Write ``examples.png`` and ``report.html``; returns the names of the files written."""
    written: list[str] = []
    try:
        examples = write_examples(config, lm, images, rows)
    except SKIPPED as exc:
        examples, note = None, f"The examples could not be drawn: {type(exc).__name__}: {exc}"
    else:
        note = "No object was explained, so there are no examples."
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>sacam benchmark: {html.escape(summary['task'])}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>sacam benchmark: {html.escape(summary['task'])}</h1>",
        f"<p>{summary['objects']} object(s) in {summary['images']} image(s); "
        f"{summary['missed']} missed (not found by the model, not scored).</p>",
        "<h2>Summary</h2><div class='panel'>",
        render_task_table(summary),
        "</div><p>Mean ± 95% interval (Student's t) over the explained objects; the "
        "baselines are what a uniformly random map scores on the same objects.</p>",
        "<h2>Failed images</h2>",
        _failures(config.out, images),
        "<h2>Examples</h2>",
    ]
    if examples is not None:
        written.append(examples.name)
        data = base64.b64encode(examples.read_bytes()).decode()
        parts.append(
            "<p>Each row: an explained object (its true box or mask outlined, the matched "
            "prediction's score), then each method's map of it.</p><div class='panel'>"
            f"<img alt='example maps' src='data:image/png;base64,{data}'></div>"
        )
    else:
        parts.append(f"<p>{html.escape(note)}</p>")
    settings = json.dumps(summary["settings"], indent=1, default=str)
    parts.append(f"<h2>Settings</h2><pre>{html.escape(settings)}</pre></body></html>")
    (config.out / "report.html").write_text("\n".join(parts), encoding="utf-8")
    written.append("report.html")
    return written
