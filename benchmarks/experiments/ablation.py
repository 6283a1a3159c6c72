"""SA-CAM ablation: sweep SA-CAM's parameters against its baselines on a labelled folder.

Usage (the tables in docs/sa-cam.md were made with these):

    python benchmarks/experiments/ablation.py ../shared/data/imagenet-dev --preset sweep \
        --steps 16 --out docs/results/sa-cam-variants/ablation-sweep
    python benchmarks/experiments/ablation.py ../shared/data/imagenet-dev --preset score \
        --limit 12 --steps 16 --out docs/results/sa-cam-variants/ablation-score

DATA_DIR holds images and labels.csv (file,class_index,...). Each method explains the
model's top-1 class (the evaluation convention). Prints a Markdown table (mean ± 95%
interval over images) and writes <out>.md, <out>.json and <out>.csv (per image).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

import sacam
from sacam.evaluation.faithfulness import confidence_change, deletion, insertion
from sacam.evaluation.registry import value_directions
from sacam.evaluation.stats import MeanAccumulator
from sacam.images import load_image
from sacam.models import load_model

SA = "sa-cam"
PRESETS: dict[str, list[tuple[str, str, dict]]] = {
    "sweep": [
        ("Grad-CAM", "grad-cam", {}),
        ("Grad-CAM++", "grad-cam++", {}),
        ("SA cosine τ10 γ1", SA, dict(operator="cosine", temperature=10, gamma=1, hops=1)),
        ("SA cosine τ10 γ2", SA, dict(operator="cosine", temperature=10, gamma=2, hops=1)),
        ("SA cosine τ10 γ4", SA, dict(operator="cosine", temperature=10, gamma=4, hops=1)),
        ("SA cosine τ10 γ2 2 hops", SA, dict(operator="cosine", temperature=10, gamma=2, hops=2)),
        ("SA cosine τ5 γ2", SA, dict(operator="cosine", temperature=5, gamma=2, hops=1)),
        ("SA dot γ1", SA, dict(operator="dot", gamma=1, hops=1)),
        ("SA dot γ2", SA, dict(operator="dot", gamma=2, hops=1)),
        ("SA class τ10 γ1 2 hops", SA, dict(operator="class", temperature=10, gamma=1, hops=2)),
        ("SA class τ10 γ2 2 hops", SA, dict(operator="class", temperature=10, gamma=2, hops=2)),
        ("SA class τ10 γ4 2 hops", SA, dict(operator="class", temperature=10, gamma=4, hops=2)),
        ("SA class τ10 γ2", SA, dict(operator="class", temperature=10, gamma=2, hops=1)),
        ("SA class τ5 γ2 2 hops", SA, dict(operator="class", temperature=5, gamma=2, hops=2)),
        (
            "SA class τ10 γ2 2 hops, gradpp",
            SA,
            dict(operator="class", temperature=10, gamma=2, hops=2, base="gradpp"),
        ),
    ],
    "score": [
        ("Grad-CAM", "grad-cam", {}),
        ("Grad-CAM++", "grad-cam++", {}),
        ("Score-CAM", "score-cam", {}),
        ("SA default (grad)", SA, {}),
        (
            "SA cosine τ10 γ1, score",
            SA,
            dict(operator="cosine", temperature=10, gamma=1, hops=1, base="score"),
        ),
    ],
}
COLUMNS = ["average_drop", "increase_in_confidence", "average_gain", "deletion", "insertion"]
SHORT = {
    "average_drop": "AD %",
    "increase_in_confidence": "IC %",
    "average_gain": "AG %",
    "deletion": "Deletion",
    "insertion": "Insertion",
}


def main() -> int:
    """Run the ablation and print its table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--preset", choices=list(PRESETS), default="sweep")
    ap.add_argument("--limit", type=int, default=None, help="first N images of labels.csv")
    ap.add_argument("--steps", type=int, default=16, help="deletion/insertion steps (n)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None, help="file stem for .md/.json/.csv")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    labels = args.data_dir / "labels.csv"
    if not labels.is_file():
        print(f"error: {labels} not found (DATA_DIR needs labels.csv)", file=sys.stderr)
        return 2
    rows = list(csv.DictReader(labels.open()))[: args.limit]
    lm = load_model()
    x_all = lm.preprocess.batch([load_image(args.data_dir / r["file"]) for r in rows])
    table, per_image = _score(lm, x_all, rows, PRESETS[args.preset], args.steps)
    settings = _settings(lm, len(rows), args)
    md = render(table, settings)
    print(md)
    if args.out:
        _write(args.out, md, settings, table, per_image)
    return 0


def _score(
    lm: Any, x_all: torch.Tensor, rows: list[dict[str, str]], variants: Any, steps: int
) -> tuple[dict[str, dict], list[dict]]:
    """Each variant's mean ± interval per column and the per-image rows."""
    per_image: list[dict] = []
    table: dict[str, dict] = {}
    for label, method, options in variants:
        accs = {m: MeanAccumulator(m) for m in COLUMNS}
        seconds = 0.0
        for i, row in enumerate(rows):
            x = x_all[i : i + 1]
            t0 = time.perf_counter()
            maps = sacam.explain(lm.model, x, method=method, **options)
            seconds += time.perf_counter() - t0
            vals = confidence_change(lm.model, x, maps, preprocess=lm.preprocess)
            vals["deletion"] = deletion(lm.model, x, maps, steps=steps).auc
            vals["insertion"] = insertion(lm.model, x, maps, steps=steps).auc
            for m in COLUMNS:
                accs[m].update(vals[m])
                per_image.append(
                    {"image": row["file"], "method": label, "metric": m, "value": float(vals[m][0])}
                )
        table[label] = {m: accs[m].compute() for m in COLUMNS}
        table[label]["seconds_per_image"] = seconds / len(rows)
        print(f"done {label}", file=sys.stderr, flush=True)
    return table, per_image


def _settings(lm: Any, images: int, args: argparse.Namespace) -> dict[str, Any]:
    """What the table was made with (printed under it and saved in the JSON)."""
    return {
        "model": lm.name,
        "layer": "auto (_swish@1, 1280x7x7)",
        "images": images,
        "deletion_insertion_steps": args.steps,
        "scores": "softmax",
        "masking": "AD/IC/AG in pixel space; deletion substrate = dataset mean (0 normalised)",
        "torch": torch.__version__,
        "sacam": sacam.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "preset": args.preset,
        "sa_cam_defaults": {
            k: v
            for k, v in vars(sacam.get_method(SA)(lm.model)).items()
            if k in ("operator", "temperature", "gamma", "hops", "base_name")
        },
    }


def _write(out: Path, md: str, settings: dict, table: dict, per_image: list[dict]) -> None:
    """``out``.md, .json (settings and table) and .csv (per image)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(md + "\n")
    out.with_suffix(".json").write_text(
        json.dumps({"settings": settings, "table": table}, indent=1)
    )
    with out.with_suffix(".csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["image", "method", "metric", "value"])
        w.writeheader()
        w.writerows(per_image)


def render(table: dict[str, dict], settings: dict) -> str:
    """Markdown table: mean ± 95% interval, arrows for each metric's direction."""
    arrows = {m: "↑" if value_directions()[m].higher_is_better else "↓" for m in COLUMNS}
    head = "| method | " + " | ".join(f"{SHORT[m]} {arrows[m]}" for m in COLUMNS) + " | s / image |"
    lines = [head, "|---" * (len(COLUMNS) + 2) + "|"]
    for label, res in table.items():
        cells = []
        for m in COLUMNS:
            r = res[m]
            digits = 1 if m in ("average_drop", "increase_in_confidence", "average_gain") else 3
            cells.append(f"{r['mean']:.{digits}f} ± {r['ci95']:.{digits}f}")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {res['seconds_per_image']:.3f} |")
    info = ", ".join(f"{k}={v}" for k, v in settings.items())
    return "\n".join(lines) + f"\n\nSettings: {info}"


if __name__ == "__main__":
    raise SystemExit(main())
