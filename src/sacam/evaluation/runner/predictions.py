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

from ..._outputs import to_logits
from ...models import LoadedModel
from ..config import BenchmarkConfig
from .data import Item, Loaded, batches
from .state import Run
from .store import append_lines, drop_cut_line

FIELDS = ["file", "label", "top1", "prob", "label_prob"]
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
    keep = [i for i, it in enumerate(loaded.items) if it.name not in known]
    if not keep:
        return
    pixels = loaded.pixels if len(keep) == len(loaded.items) else loaded.pixels[keep]
    x = lm.preprocess.normalize(pixels.to(device))
    with torch.inference_mode():
        p = torch.softmax(to_logits(lm.model(x)).float(), 1).cpu()
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    path = out / "predictions.csv"
    if not path.exists() or path.stat().st_size == 0:
        w.writeheader()
    for i, row in zip(keep, p, strict=True):
        item = loaded.items[i]
        known[item.name] = rec = {
            "file": item.name,
            "label": str(item.label),
            "top1": str(int(row.argmax())),
            "prob": f"{float(row.max()):.6f}",
            "label_prob": f"{float(row[item.label]):.6f}",
        }
        w.writerow(rec)
    append_lines(path, buf.getvalue())


def predict_all(
    out: Path,
    items: list[Item],
    lm: LoadedModel,
    config: BenchmarkConfig,
    progress: bool | None,
    known: Predictions,
) -> None:
    """Predict every image of ``items`` missing from ``known`` (unreadable ones stay missing)."""
    missing = [it for it in items if it.name not in known]
    if not missing:
        return
    bar = tqdm(
        total=len(missing),
        unit="img",
        desc="predicting",
        disable=None if progress is None else not progress,
    )
    try:
        for loaded in batches(missing, lm.preprocess, config.batch_size, config.workers):
            predict_batch(out, loaded, lm, config.device, known)
            bar.update(len(loaded.items) + len(loaded.failed))
    finally:
        bar.close()


def predict_missing(run: Run, skip: list[Item] | None = None) -> None:
    """Predict, in a pass of their own, the images of the run (but ``skip``) that lack one."""
    cfg = run.config
    names = {it.name for it in skip or []}
    items = [it for it in run.dataset.items if it.name not in names]
    predict_all(cfg.out, items, run.lm, cfg, run.progress, run.predictions)
