"""Each image's top-1 class and probabilities, computed once per run folder.

``predictions.csv`` is appended a batch at a time (whole lines, as the results store
does), so a killed run keeps the predictions it made. The local engine predicts the
images of each decoded batch that lack one before their maps (one decode per image for
the prediction and every method); :func:`predict_missing` is the separate pass for other
engines (Ray's driver), which need every prediction up front, and for finished images
whose prediction was lost.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch
from tqdm import tqdm

from ...models import LoadedModel
from ...scores import class_probabilities
from .data import Item, Loaded, batches
from .state import Run
from .store import append_lines, drop_cut_line

FIELDS = ["file", "label", "top1", "prob", "label_prob", "label_name", "top1_name"]
Predictions = dict[str, dict[str, str]]


def load_predictions(out: Path) -> Predictions:
    """The predictions already in ``out/predictions.csv`` (a line cut by a kill is dropped)."""
    path = out / "predictions.csv"
    if not path.exists():
        return {}
    drop_cut_line(path)
    with path.open(encoding="utf-8", newline="") as f:
        return {r["file"]: r for r in csv.DictReader(f) if r.get("prob")}


def predict_batch(
    out: Path, loaded: Loaded, lm: LoadedModel, device: str, known: Predictions
) -> None:
    """Predict the images of a decoded batch missing from ``known``; add and append them.

    ``loaded.pixels`` may already be on ``device``. Each image is predicted in the batch
    it came in, so the rows match a separate pass over the same batches.
    """
    new = loaded.part({it.name for it in loaded.items if it.name not in known})
    if not new.items:
        return
    x = lm.preprocess.normalize(new.pixels.to(device))
    with torch.inference_mode():
        p = class_probabilities(lm.model, x).cpu()
    buf = io.StringIO()
    path = out / "predictions.csv"
    fresh = not path.exists() or path.stat().st_size == 0
    fields = FIELDS if fresh else _header(path)
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    if fresh:
        w.writeheader()
    for item, row in zip(new.items, p, strict=True):
        top1 = int(row.argmax())
        known[item.name] = rec = {
            "file": item.name,
            "label": str(item.label),
            "top1": str(top1),
            "prob": f"{float(row.max()):.6f}",
            "label_prob": f"{float(row[item.label]):.6f}",
            "label_name": lm.class_name(item.label),
            "top1_name": lm.class_name(top1),
        }
        w.writerow(rec)
    append_lines(path, buf.getvalue())


def _header(path: Path) -> list[str]:
    """The columns of an existing ``predictions.csv`` (a file of an older run has fewer)."""
    with path.open(encoding="utf-8", newline="") as f:
        return next(csv.reader(f), FIELDS)


def predict_missing(run: Run, skip: list[Item] | None = None) -> None:
    """Predict, in a pass of their own, the images of the run (but ``skip``) that lack one.

    Unreadable images stay without a prediction.
    """
    cfg = run.config
    names = {it.name for it in skip or []}
    missing = [
        it for it in run.dataset.items if it.name not in names and it.name not in run.predictions
    ]
    if not missing:
        return
    bar = tqdm(
        total=len(missing),
        unit="img",
        desc="predicting",
        disable=None if run.progress is None else not run.progress,
    )
    try:
        for loaded in batches(missing, run.lm.preprocess, cfg.images_per_step, cfg.workers):
            predict_batch(cfg.out, loaded, run.lm, cfg.device, run.predictions)
            bar.update(len(loaded.items) + len(loaded.failed))
    finally:
        bar.close()
