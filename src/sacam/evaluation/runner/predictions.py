"""Each image's top-1 class and probabilities, computed once per run folder."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import torch
from tqdm import tqdm

from ..._outputs import to_logits
from ...models import LoadedModel
from ..config import BenchmarkConfig
from .data import Item, batches

FIELDS = ["file", "label", "top1", "prob", "label_prob"]


def predict_all(
    out: Path, items: list[Item], lm: LoadedModel, config: BenchmarkConfig, progress: bool | None
) -> dict[str, dict[str, str]]:
    """Predictions of ``items`` (cached in ``out/predictions.csv``); unreadable images lack one."""
    path = out / "predictions.csv"
    known: dict[str, dict[str, str]] = {}
    if path.exists():
        with path.open(encoding="utf-8", newline="") as f:
            known = {r["file"]: r for r in csv.DictReader(f) if r.get("prob")}
    missing = [it for it in items if it.name not in known]
    bar = tqdm(
        total=len(missing),
        unit="img",
        desc="predicting",
        disable=None if progress is None else not progress,
    )
    try:
        for loaded in batches(missing, lm.preprocess, config.batch_size, config.workers):
            if loaded.items:
                x = lm.preprocess.normalize(loaded.pixels.to(config.device))
                with torch.inference_mode():
                    p = torch.softmax(to_logits(lm.model(x)).float(), 1).cpu()
                for item, row in zip(loaded.items, p, strict=True):
                    known[item.name] = {
                        "file": item.name,
                        "label": str(item.label),
                        "top1": str(int(row.argmax())),
                        "prob": f"{float(row.max()):.6f}",
                        "label_prob": f"{float(row[item.label]):.6f}",
                    }
            bar.update(len(loaded.items) + len(loaded.failed))
    finally:
        bar.close()
        tmp = path.with_suffix(".csv.tmp")
        with tmp.open("w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS)
            w.writeheader()
            w.writerows(known.values())
        os.replace(tmp, path)
    return known
