"""Results that survive crashes and mistakes: cut lines, two runs, scope, labels, Ctrl-C."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sacam.cli import main
from sacam.evaluation import run_benchmark
from sacam.evaluation.runner.store import RunLock
from tests.support.nets import held_model_spec
from tests.support.runs import colour_folder, run_config
from tests.support.tools import wait_for

ROOT = Path(__file__).resolve().parents[2]


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "results.csv").open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _pairs(out: Path) -> list[tuple[str, str]]:
    return [(r["image"], r["method"]) for r in _rows(out) if r["metric"] == "time_s"]


def test_a_cut_last_line_is_dropped_and_recomputed(tmp_path) -> None:
    data = colour_folder(tmp_path, n=3)
    out = tmp_path / "out"
    run_benchmark(run_config(data, out), progress=False)
    before = {(r["image"], r["method"], r["metric"]): r["value"] for r in _rows(out)}
    raw = (out / "results.csv").read_bytes()
    (out / "results.csv").write_bytes(raw[:-7])  # killed in the middle of the last row
    run_benchmark(run_config(data, out), progress=False)
    after = {(r["image"], r["method"], r["metric"]): r["value"] for r in _rows(out)}
    assert after.keys() == before.keys()
    for key, value in before.items():  # the recomputed pair has the same numbers
        if key[2] != "time_s":
            assert float(after[key]) == pytest.approx(float(value), rel=1e-5, abs=1e-6)
    pairs = _pairs(out)
    assert len(pairs) == len(set(pairs)) == 6
    assert (out / "results.csv").read_bytes().endswith(b"\n")


def test_a_second_run_on_the_same_folder_exits_3(tmp_path, capsys) -> None:
    data = colour_folder(tmp_path, n=1)
    out = tmp_path / "out"
    out.mkdir()
    args = ["benchmark", str(data), "--model", "tests.support.nets:colour_net", "--out", str(out)]
    with RunLock(out):
        assert main([*args, "--steps", "2", "--methods", "random"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"pid {os.getpid()}" in err and "another sacam benchmark" in err
    # the holder is gone: its lock file is stale and the next run takes it over
    assert (out / ".sacam.lock").exists()
    assert main([*args, "--steps", "2", "--methods", "random", "--metrics", "deletion"]) == 0


@pytest.mark.script
def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path) -> None:
    data = colour_folder(tmp_path, n=1)
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    (out / ".sacam.lock").write_text(f"pid {dead.stdout.strip()} on somewhere\n")
    run_benchmark(run_config(data, out, metrics=["deletion"]), progress=False)
    assert len(_pairs(out)) == 2


def test_the_summary_covers_exactly_this_run(tmp_path) -> None:
    data = colour_folder(tmp_path, n=4)
    out = tmp_path / "out"
    run_benchmark(run_config(data, out), progress=False)
    cfg = run_config(data, out, limit=2)
    cfg.methods = ["grad-cam"]
    summary = run_benchmark(cfg, progress=False)
    assert list(summary["table"]) == ["grad-cam"]
    assert summary["table"]["grad-cam"]["deletion"]["n"] == 2
    assert summary["settings"]["images"] == 2
    per_pair = len(_rows(out)) // 8  # rows per (image, method) pair; 8 pairs in the file
    assert summary["other_rows"] == (8 - 2) * per_pair
    assert "not summarised" in (out / "summary.md").read_text()
    assert len(_pairs(out)) == 8  # the other rows stay in the file


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"file,class_index\nimg0.png,zero\n", r"line 2 \(img0.png,zero\): class_index 'zero'"),
        (b"file,class_index\nimg0.png,\n", r"line 2 .*class_index '' is not"),
        (b"file,class_index\nimg0.png,-1\n", r"line 2 .*class_index '-1' is not"),
        (
            b"file,class_index\nimg0.png,1\nimg1.png,5000\n",
            r"line 3 .*5000 is out of range.*5 classes",
        ),
        (
            b"file,class_index\nimg0.png,1\nimg0.png,1\n",
            r"line 3 .*listed twice \(first on line 2\)",
        ),
        (b"file,class_index\n../../x.png,1\n", r"line 2 .*outside DATA_DIR"),
        (b"file,class_index\n/etc/passwd,1\n", r"line 2 .*not a path relative to DATA_DIR"),
        (b"file,class_index\nimg0.png,1\ncaf\xe9.png,1\n", r"line 3 is not UTF-8 text"),
        (b"name,label\nimg0.png,1\n", r"needs the columns file,class_index"),
    ],
)
def test_labels_csv_rows_are_validated(tmp_path, capsys, content, message) -> None:
    data = colour_folder(tmp_path, n=2)
    (data / "labels.csv").write_bytes(content)
    code = main(
        [
            "benchmark",
            str(data),
            "--model",
            "tests.support.nets:colour_net",
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 3, err
    assert err.startswith("sacam: error: ") and err.count("\n") == 1, err
    import re

    assert re.search(message, err), err


def test_a_bom_is_accepted(tmp_path) -> None:
    data = colour_folder(tmp_path, n=2)
    text = (data / "labels.csv").read_text()
    (data / "labels.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    run_benchmark(run_config(data, tmp_path / "out", metrics=["complexity"]), progress=False)
    assert len(_pairs(tmp_path / "out")) == 4


AT_A_TERMINAL = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'sacam'; runpy.run_module('sacam.cli', run_name='__main__')"
)
"""``python -m sacam.cli`` as a terminal starts it: Ctrl-C raises KeyboardInterrupt even
when this test runs under a shell that ignores SIGINT (a background job of a script
passes SIG_IGN to its children, and Python keeps an ignored SIGINT ignored)."""


@pytest.mark.script
def test_ctrl_c_exits_cleanly_keeps_results_and_resumes(tmp_path, monkeypatch) -> None:
    """A real process, a real SIGINT; a second run meanwhile is refused.

    The model holds after three images while its gate file exists, so the run cannot end
    before the signal, however slow or fast the machine.
    """
    data = colour_folder(tmp_path, n=8)
    out = tmp_path / "out"
    spec, gate = held_model_spec(tmp_path, after=3)
    args = [
        "benchmark", str(data), "--model", spec, "--out", str(out),
        "--methods", "grad-cam", "--metrics", "deletion", "--steps", "4", "--images-per-step", "1",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path)]))
    proc = subprocess.Popen(
        [sys.executable, "-c", AT_A_TERMINAL, *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: (out / ".sacam.lock").exists() and (out / ".sacam.lock").read_text(), proc)
        second = subprocess.run(
            [sys.executable, "-m", "sacam.cli", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        assert second.returncode == 3 and "another sacam benchmark" in second.stderr
        wait_for(lambda: (out / "results.csv").exists() and len(_pairs(out)) >= 2, proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill() if proc.poll() is None else None
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    kept = _pairs(out)
    assert 2 <= len(kept) <= 3
    gate.unlink()
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main([*args, "--limit", str(len(kept) + 2)]) == 0  # resumes: the next two images
    pairs = _pairs(out)
    assert len(pairs) == len(set(pairs)) == len(kept) + 2
    assert set(kept) <= set(pairs)
