"""``tools/gpu/gpu_queue.py``: the queue a GPU session runs must work the first time.

A session is lent a GPU for minutes, so a queued command that fails to parse, a budget
that is not kept or an archive that misses a run folder costs the whole loan. These
tests run the queue's machinery on the CPU with the real runner and check every queued
command against the current command-line interfaces.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sacam.cli import _parser
from sacam.cli._benchmark import _benchmark_config
from sacam.evaluation.config import BenchmarkConfig
from sacam.evaluation.runner.store import check_settings
from sacam.registry import list_methods

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "results"
sys.path.insert(0, str(ROOT / "tools" / "gpu"))

import gpu_queue  # noqa: E402
from gpu_queue import JOBS, Job, run_queue  # noqa: E402

pytestmark = pytest.mark.script


def _methods(argv: tuple[str, ...]) -> list[str]:
    if "--methods" not in argv:
        return []
    rest = argv[argv.index("--methods") + 1 :]
    return list(rest[: next((i for i, a in enumerate(rest) if a.startswith("--")), len(rest))])


@pytest.mark.parametrize("job", [j for j in JOBS if not j.script], ids=lambda j: j.name)
def test_every_queued_run_parses_with_the_benchmark_command(job: Job, tmp_path: Path) -> None:
    cmd = gpu_queue.command(job, tmp_path, tmp_path / "runs", "cpu")
    assert cmd[1:4] == ["-m", "sacam.cli", "benchmark"]
    args = _parser().parse_args(cmd[3:])
    assert args.out == tmp_path / "runs" / job.name and args.device == "cpu"
    assert set(args.methods) <= set(list_methods())


@pytest.mark.parametrize("job", [j for j in JOBS if j.script], ids=lambda j: j.name)
def test_every_queued_script_accepts_its_arguments(job: Job) -> None:
    # argparse converts and checks each option as it reads it, before --help exits
    done = subprocess.run(
        [sys.executable, *job.argv, "--device", "cpu", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert set(_methods(job.argv)) <= set(list_methods())


@pytest.mark.parametrize(
    "job",
    [j for j in JOBS if not j.script and (RESULTS / j.setting / j.name / "run.json").exists()],
    ids=lambda j: j.name,
)
def test_every_queued_run_resumes_its_committed_folder(job: Job, tmp_path: Path) -> None:
    """The settings match the folder's run.json, so the queue extends it, not refuses it."""
    (tmp_path / "run").mkdir()
    shutil.copy(RESULTS / job.setting / job.name / "run.json", tmp_path / "run" / "run.json")
    args = _parser().parse_args(gpu_queue.command(job, tmp_path, tmp_path, "cpu")[3:])
    config = _benchmark_config(args)
    check_settings(tmp_path / "run", config.settings(), BenchmarkConfig(tmp_path).settings())


def test_every_run_job_names_a_setting_folder_of_the_docs() -> None:
    """Each run unpacks into docs/results/SETTING, a folder the results page describes."""
    for job in (j for j in JOBS if not j.script):
        assert (RESULTS / job.setting).is_dir(), (job.name, job.setting)


def test_a_queued_run_still_owed_keeps_its_per_image_rows_to_resume() -> None:
    """The committed folders the queue resumes keep results.csv (else it starts over)."""
    resumed = [j for j in JOBS if not j.script and (RESULTS / j.setting / j.name).is_dir()]
    assert {j.name for j in resumed} >= {"gpu-lite0-blocks15-sscam", "lite0-blocks10-sscam"}
    for job in resumed:
        rows = (RESULTS / job.setting / job.name / "results.csv").read_text().splitlines()
        assert rows[0] == "image,method,metric,value" and len(rows) > 1, job.name


def test_job_names_are_unique_and_archive_safe() -> None:
    names = [j.name for j in JOBS]
    assert len(set(names)) == len(names)
    assert all(n.replace("-", "").isalnum() for n in names)


def _images(folder: Path, n: int) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        name = f"im{i}.png"
        Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(folder / name)
        rows.append(f"{name},{i}")
    (folder / "labels.csv").write_text("file,class_index\n" + "\n".join(rows) + "\n")
    return folder


def test_queue_runs_resumes_and_packs_a_real_run(tmp_path: Path) -> None:
    data = _images(tmp_path / "data", 2)
    jobs = (
        Job("tiny-run", ("--methods", "grad-cam", "--metrics", "confidence"), setting="lite0-head"),
        Job("echo", ("-c", "import sys; print('argv', sys.argv[1:])"), script=True, estimate_s=1),
        Job("late", ("-c", "pass"), script=True, estimate_s=10_000),
    )
    runs, out = tmp_path / "runs", tmp_path / "out"
    lines = run_queue(jobs, data, runs, out, "cpu", budget_s=600, reserve_s=0)
    assert [line.split(":")[0] for line in lines] == ["tiny-run", "echo", "late"]
    assert all(" rc=0 after " in line for line in lines[:2]), lines
    assert lines[2].startswith("late: skipped")
    assert (out / "queue.log").read_text().splitlines() == lines  # skipped jobs too
    assert sorted(p.name for p in out.iterdir()) == ["queue.log", "results.tar.gz"]
    with tarfile.open(out / "results.tar.gz") as tar:
        names = set(tar.getnames())
        table = tar.extractfile("logs/echo.log").read().decode()  # type: ignore[union-attr]
    assert {
        "lite0-head/tiny-run/results.csv",
        "lite0-head/tiny-run/run.json",
        "logs/tiny-run.log",
        "logs/echo.log",
    } <= names
    assert "argv ['--device', 'cpu']" in table
    rows = list(csv.DictReader((runs / "tiny-run" / "results.csv").open()))
    assert {r["image"] for r in rows} == {"im0.png", "im1.png"}
    # a second session resumes the folder: nothing is run twice, nothing is lost
    run_queue(jobs[:1], data, runs, out, "cpu", budget_s=600, reserve_s=0)
    again = list(csv.DictReader((runs / "tiny-run" / "results.csv").open()))
    assert sorted(map(str, again)) == sorted(map(str, rows))


def test_a_failing_run_leaves_its_error_in_the_archive(tmp_path: Path) -> None:
    jobs = (Job("bad-run", ("--methods", "grad-cam", "--layer", "_no_such_layer")),)
    out = tmp_path / "out"
    lines = run_queue(
        jobs,
        _images(tmp_path / "data", 1),
        tmp_path / "runs",
        out,
        "cpu",
        budget_s=600,
        reserve_s=0,
    )
    assert lines[0].startswith("bad-run: rc=2 after ")
    with tarfile.open(out / "results.tar.gz") as tar:
        log = tar.extractfile("logs/bad-run.log").read().decode()  # type: ignore[union-attr]
    assert "_no_such_layer" in log


def test_queue_cuts_a_job_at_its_budget_even_one_that_ignores_sigint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gpu_queue, "GRACE_S", 1.0)
    stubborn = "import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(120)"
    jobs = (Job("sleeper", ("-c", stubborn), script=True, estimate_s=1),)
    began = time.monotonic()
    lines = run_queue(
        jobs, tmp_path, tmp_path / "runs", tmp_path / "out", "cpu", budget_s=3, reserve_s=0
    )
    assert lines[0].startswith("sleeper: cut after ")
    assert time.monotonic() - began < 30
