"""The scripts that make docs/results.md's paired tables and trade-off chart.

``benchmarks/paired.py``, ``sweep_table.py`` and ``tradeoff.py`` decide the ▲/▼ marks and
the "better on both" verdicts that docs/sa-cam.md states; these tests pin their intervals
against Student's t from a printed table and their directions against the registry.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

from paired import paired_cell, t_interval  # noqa: E402

pytestmark = pytest.mark.script


def test_t_interval_uses_students_t_not_the_normal_quantile() -> None:
    mean, half, n = t_interval([1.0, 2.0, 3.0, 4.0, 5.0, float("nan")])
    # t(0.975, 4) = 2.776 (printed tables); sd = sqrt(2.5); the normal 1.96 would give 1.386
    assert (mean, n) == (3.0, 5)
    assert half == pytest.approx(2.776 * math.sqrt(2.5) / math.sqrt(5), rel=1e-3)
    assert t_interval([2.0])[1] == math.inf
    assert t_interval([])[2] == 0


def _plus(a: list[float], b: list[float], k: float = 1.0) -> list[float]:
    return [x + k * y for x, y in zip(a, b, strict=True)]


def _images(values: list[float]) -> dict[str, float]:
    return {f"im{i}.jpg": v for i, v in enumerate(values)}


def test_paired_cell_marks_follow_each_metrics_direction() -> None:
    ref = _images([0.50, 0.40, 0.60, 0.55, 0.45, 0.52])
    up = _images(_plus(list(ref.values()), [0.05, 0.06, 0.04, 0.05, 0.07, 0.05]))
    # higher insertion is better: a consistent gain is decided in favour (▲)
    assert paired_cell(up, ref, "insertion").endswith("(6/6)▲")
    # lower deletion is better: the same gain is decided against (▼), 0 of 6 better
    assert paired_cell(up, ref, "deletion").endswith("(0/6)▼")
    mixed = _images(_plus(list(ref.values()), [0.05, -0.06, 0.04, -0.05, 0.01, -0.02]))
    cell = paired_cell(mixed, ref, "insertion")
    assert not cell.endswith(("▲", "▼"))  # undecided
    assert paired_cell({}, ref, "insertion") == "–"


def _run_folder(root: Path, name: str, layer: str | None, per: dict[str, list[float]]) -> Path:
    """A benchmark-like folder: per maps 'method|value' to per-image values."""
    folder = root / name
    folder.mkdir()
    table: dict[str, dict[str, dict[str, float]]] = {}
    with (folder / "results.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "method", "metric", "value"])
        for key, values in per.items():
            method, value = key.split("|")
            for image, v in _images(values).items():
                w.writerow([image, method, value, v])
            table.setdefault(method, {})[value] = {"mean": sum(values) / len(values)}
    settings = {"model": "efficientnet-lite0", "layer": [layer] if layer else None}
    summary = {"settings": settings, "table": table}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_tradeoff_decides_better_on_both_only_when_both_intervals_do(tmp_path: Path) -> None:
    base_f = [0.60, 0.62, 0.58, 0.65, 0.61, 0.59, 0.63, 0.60]
    base_s = [0.10, 0.12, 0.08, 0.11, 0.09, 0.13, 0.10, 0.12]
    gain = [0.010, 0.012, 0.009, 0.011, 0.010, 0.013, 0.008, 0.012]
    clear = _run_folder(
        tmp_path,
        "clear",
        "_blocks.15",
        {
            "grad-cam|insertion": base_f,
            "grad-cam|xattack_topk_topk@2": base_s,
            "sa-cam|insertion": _plus(base_f, gain),
            "sa-cam|xattack_topk_topk@2": _plus(base_s, gain, 5),
        },
    )
    noisy_gain = [0.03, -0.02, 0.025, -0.015, 0.02, -0.01, 0.015, -0.02]
    noisy = _run_folder(
        tmp_path,
        "noisy",
        None,
        {
            "grad-cam|insertion": base_f,
            "grad-cam|xattack_topk_topk@2": base_s,
            "sa-cam|insertion": _plus(base_f, noisy_gain),
            "sa-cam|xattack_topk_topk@2": _plus(base_s, gain, 5),
        },
    )
    png = tmp_path / "chart.png"
    out = subprocess.run(
        [sys.executable, str(BENCH / "tradeoff.py"), str(clear), str(noisy), "--out", str(png)]
        + ["--against", str(clear)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    table, _, against = out.partition("| variant − SA-CAM of clear")
    rows = {
        line.split("|")[1].strip(): line
        for line in table.splitlines()
        if line.startswith("| SA-CAM")
    }
    # each variant minus the default's SA-CAM: noisy − clear = 0.003125 − 0.010625 in insertion
    noisy_vs = next(line for line in against.splitlines() if "lite0 auto" in line)
    assert "| -0.0075 ± " in noisy_vs and "▼" not in noisy_vs and "▲" not in noisy_vs
    clear_row = rows["SA-CAM defaults @ efficientnet-lite0 _blocks.15"]
    noisy_row = rows["SA-CAM defaults @ efficientnet-lite0 auto"]
    assert clear_row.rstrip(" |").endswith("yes | yes")
    # better by its means (+0.003 insertion), not by its insertion interval
    assert noisy_row.rstrip(" |").endswith("yes | no")
    assert "+0.0106" in clear_row  # the mean paired gain in insertion
    assert "(95% intervals): SA-CAM defaults @ efficientnet-lite0 _blocks.15\n" in out
    assert png.stat().st_size > 10_000


def test_cuda_parity_script_compares_two_devices_and_fails_past_its_tolerance(tmp_path) -> None:
    # on a machine without a GPU the script still runs, comparing the CPU with itself: every
    # difference is 0 and the methods pass; a negative tolerance makes every method fail
    import cuda_parity

    out = tmp_path / "parity.md"
    args = ["--device", "cpu", "--methods", "grad-cam", "random", "--batch", "2"]
    assert cuda_parity.main([*args, "--out", str(out)]) == 0
    rows = [r for r in out.read_text().splitlines() if r.startswith("| grad-cam |")]
    assert len(rows) == 1 and rows[0].count("0.00e+00") == 2 and rows[0].endswith("| ok |")
    assert "Failed: none." in out.read_text()
    assert cuda_parity.main([*args, "--tol", "-1"]) == 1


def test_blur_benchmark_prints_the_three_forms_agreeing() -> None:
    res = subprocess.run(
        [sys.executable, str(BENCH / "blur.py"), "--batch", "2", "--size", "16", "--repeat", "1"],
        capture_output=True,
        text=True,
        check=True,
        cwd=BENCH,
    )
    rows = [r for r in res.stdout.splitlines() if r.startswith(("| 11,", "| 51,"))]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[4].endswith("×") and float(cells[5]) < 1e-6  # same blur, another order
