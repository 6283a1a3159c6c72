"""Smoke tests of the maintained tools of ``benchmarks/``: each runs on tiny inputs.

``paired.py`` and ``sweep_table.py`` read a per-image results CSV; ``stability_cost.py``
times the stability protocol's steps on a folder of images; ``load.py`` drives
``sacam serve`` on localhost. Their numeric helpers are pinned in test_paper_scripts.py.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.tools import run_tool

pytestmark = pytest.mark.script


def _results(path: Path, rows: dict[tuple[str, str], list[float]]) -> Path:
    """A results.csv of ``(method, metric) -> per-image values`` (images im0, im1, ...)."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "method", "metric", "value"])
        for (method, metric), values in rows.items():
            for i, v in enumerate(values):
                w.writerow([f"im{i}.png", method, metric, v])
    return path


def test_paired_prints_one_row_per_method_with_its_decided_mark(tmp_path: Path) -> None:
    ref = [0.50, 0.40, 0.60, 0.55, 0.45, 0.52]
    data = {
        ("grad-cam", "insertion"): ref,
        ("sa-cam", "insertion"): [v + d for v, d in zip(ref, [0.04, 0.05, 0.06] * 2, strict=True)],
        ("sa-cam", "deletion"): [0.2] * 6,  # no reference values: no cell to pair
    }
    out = run_tool("paired.py", str(_results(tmp_path / "r.csv", data)), "--reference", "grad-cam")
    row = next(line for line in out.splitlines() if line.startswith("| sa-cam"))
    # the differences 0.04, 0.05, 0.06 twice: mean 0.05, every image better; no deletion
    # values of the reference, so that cell is empty
    assert row.split("|")[2].strip().startswith("+0.050 ± ") and "(6/6)▲" in row
    assert row.split("|")[3].strip() == "–"


def test_sweep_table_has_a_row_per_method_and_the_paired_row(tmp_path: Path) -> None:
    base = [0.30, 0.32, 0.28, 0.35, 0.31]
    data: dict[tuple[str, str], list[float]] = {}
    for eps in ("0.5", "2"):
        data[("grad-cam", f"xattack_topk_topk@{eps}")] = base
        data[("sa-cam", f"xattack_topk_topk@{eps}")] = [v - 0.1 for v in base]
    csv_path = _results(tmp_path / "r.csv", data)
    out = run_tool("sweep_table.py", str(csv_path), "xattack_topk_topk")
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("| method"))
    assert header == "| method | ε = 0.5/255 | ε = 2/255 |"
    assert sum(line.startswith(("| grad-cam", "| sa-cam |")) for line in lines) == 2
    paired = lines[-1]
    # sa-cam − grad-cam is −0.1 on every image: decided worse (top-k ∩ is higher-better)
    assert paired.startswith("| sa-cam − grad-cam |") and paired.count("-0.100 ± 0.000 (0/5)▼") == 2


def test_stability_cost_prints_every_step_for_each_method(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(data / "a.png")
    (data / "labels.csv").write_text("file,class_index\na.png,3\n")
    out = run_tool(
        "stability_cost.py",
        str(data),
        "--limit",
        "1",
        "--steps",
        "1",
        "--methods",
        "eigen-cam",
        "--image-size",
        "64",
    )
    assert out.startswith("1 images, efficientnet-lite0, layer _blocks.15")
    rows = [line for line in out.splitlines() if line.startswith("| ")][1:]  # past the header
    names = [r.split("|")[1].strip() for r in rows]
    assert names == [
        "forward (random-noise step)",
        "classifier gradient (FGSM/PGD step)",
        "eigen-cam: map",
        "eigen-cam: white-box step",
        "eigen-cam: full defaults, at most",
    ]
    assert all(float(r.split("|")[2]) > 0 for r in rows)


def test_load_answers_every_request_and_reports_latency() -> None:
    out = run_tool(
        "load.py", "--requests", "2", "--concurrency", "1", "--floor", "1", "--method", "grad-cam"
    )
    assert "| errors | 0 of 2 |" in out
    assert "| p50 latency under load |" in out and "| p95 latency under load |" in out
