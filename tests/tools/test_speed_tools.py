"""Smoke tests of the speed and memory tools of ``benchmarks/``, each on its smallest setting.

They measure the default model, so each takes seconds to a minute; what is checked is that
the tool runs and that its table holds the rows and the finite numbers it promises.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from tests.support.tools import run_tool

pytestmark = pytest.mark.script


def _row(out: str, start: str) -> list[str]:
    """The cells of the first table row that starts with ``start``."""
    line = next(line for line in out.splitlines() if line.startswith(start))
    return [c.strip() for c in line.strip("|").split("|")]


def test_speed_times_a_method_against_its_floor(tmp_path: Path) -> None:
    out = run_tool(
        "speed.py", "--methods", "grad-cam", "--batches", "1", "--repeat", "1",
        "--floor-batches", "--skip-torchcam", "--skip-tradeoffs", "--threads", "1",
        "--out", str(tmp_path / "speed"),
    )  # fmt: skip
    assert "Best forward:" in out and "gradient floor" in out
    cells = _row(out, "| grad-cam | 1 |")
    ms, ratio = float(cells[2]), float(cells[5])
    assert ms > 0 and math.isfinite(ratio) and ratio > 0


def test_throughput_reports_phases_and_the_runner_against_a_bare_loop() -> None:
    out = run_tool(
        "throughput.py", "--synthetic", "2", "--limit", "2", "--methods", "grad-cam",
        "--steps", "2", "--images-per-step", "2", "--repeat", "1", "--threads", "1", "--no-cold",
    )  # fmt: skip
    assert float(_row(out, "| methods: maps and metrics |")[1]) > 0
    cells = _row(out, "| 1 |")
    assert all(float(c) > 0 for c in cells[1:5]), cells


def test_memory_reports_the_peak_against_the_budget() -> None:
    out = run_tool("memory.py", "--budgets", "256", "--channels", "8", "--threads", "1")
    cells = _row(out, "| 256 |")
    peak, share = float(cells[1]), float(cells[2])
    assert peak > 0 and share == pytest.approx(peak / 256, abs=0.01)


def test_allocator_compares_the_two_settings_with_equal_maps() -> None:
    out = run_tool("allocator.py", "--repeat", "1", "--keep-mb", "64", "--channels", "4")
    assert len(re.findall(r"^\| ss-cam \|", out, re.M)) == 2
    assert "(its maps: max |Δ| = 0)" in out


def test_tail_strategies_time_expand_and_repeat() -> None:
    out = run_tool(
        "tail_strategies.py", "--layer", "_blocks.15", "--batches", "1", "--repeat", "1",
        "--methods", "recipro-cam",
    )  # fmt: skip
    assert "| expand s / image |" in out and "| repeat s / image |" in out
    cells = _row(out, "| recipro-cam | 1 |")
    expand, repeat = float(cells[2]), float(cells[4])
    assert expand > 0 and repeat > 0, cells
    assert float(cells[-1]) < 1e-4, "the two strategies give the same maps"


def test_first_call_times_two_calls_on_an_unseen_model() -> None:
    out = run_tool(
        "first_call.py", "--models", "resnet18", "--methods", "recipro-cam", "--size", "64",
    )  # fmt: skip
    cells = _row(out, "| resnet18 | recipro-cam |")
    first, second = (float(c.split()[0]) for c in cells[2:4])
    assert first > 0 and second > 0 and math.isfinite(float(cells[4]))
    assert cells[5] == "yes"  # both calls gave the same bits


def test_sacam_cost_times_sacam_against_its_base_in_pairs() -> None:
    out = run_tool("sacam_cost.py", "--batch", "2", "--calls", "3", "--size", "64")
    times = {r[0]: float(r[1]) for r in (_row(out, f"| {m}") for m in ("grad-cam", "sa-cam"))}
    assert all(t > 0 for t in times.values())
    ratios = re.search(r"median of the pairs' ratios ([\d.]+), ratio of the medians ([\d.]+)", out)
    assert ratios is not None, out
    # SA-CAM runs Grad-CAM's pass and more: never a fraction of it, never many times it
    assert all(0.5 < float(r) < 5 for r in ratios.groups())
