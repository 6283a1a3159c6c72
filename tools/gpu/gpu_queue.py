"""The GPU work docs/results.md and docs/performance.md still owe, as one budgeted queue.

Some sessions are lent a GPU for a few minutes; this script is what such a session runs,
so that none of it has to be rebuilt from the docs first. It runs the jobs below in
order until its time budget is spent, on a machine that holds the repository, the
carried kit of ``tools/gpu/gpu_kit.sh`` (wheels, the development images, the run
folders to resume) and nothing else:

    python3 tools/gpu/gpu_queue.py --data .gpu/data --runs .gpu/runs --budget 540 --out $OUT

``--budget`` is the call's whole time for the queue: keep it a minute under the call's
``timeout_s`` (600 s at most), which itself must fit the session's device time left
(the device tool's ``status``) less the machine's start.

- A ``sacam benchmark`` job writes into ``RUNS/NAME``; in the docs its folder is
  ``docs/results/SETTING/NAME`` (the job's ``setting``). Its folder keeps every finished
  (image, method) pair, so a job cut off by the budget (SIGINT, then SIGKILL) resumes in
  the next session from where it stopped; a finished job resumes as a no-op.
- A script job (``benchmarks/*.py``) prints its table; it starts only when its
  estimated time is left.
- Each job's output (a script's table, a run's progress and errors) goes to
  ``NAME.log``. Everything comes back as ``OUT/results.tar.gz`` (``SETTING/NAME/...`` and
  ``logs/NAME.log``), packed again after every job and on SIGTERM, so a call killed early
  still returns what finished, and ``OUT/queue.log`` (per job: the command, how it ended,
  seconds; skipped jobs too). Unpack it with ``tar xzf results.tar.gz -C docs/results``
  (then move ``docs/results/logs`` away), update the tables in the docs, and commit only
  the summaries (``summary.md``, ``summary.json``, ``run.json``) of a finished run; a run
  still owed keeps its ``results.csv`` and ``predictions.csv``, which the next session
  resumes.

Edit ``JOBS`` when work is done or added: the order is the priority.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

GRACE_S = 20.0
"""Seconds a cut job gets between SIGINT and SIGKILL."""


@dataclass(frozen=True)
class Job:
    """One unit of the queue: a resumable ``sacam benchmark`` run or a benchmark script."""

    name: str
    argv: tuple[str, ...]
    """Arguments after ``sacam benchmark DATA`` (run) or the script's path (script)."""
    script: bool = False
    estimate_s: float = 60.0
    """Seconds left that the job needs to start: a script's time on an H200; a run job
    resumes, so it starts whenever a minute is left."""
    setting: str = ""
    """A run job's folder of ``docs/results`` (model × layer); empty for a script."""


def _a(text: str) -> tuple[str, ...]:
    """A job's arguments written as one line."""
    return tuple(text.split())


FAITH = "--steps 16 --metrics confidence deletion insertion"
JOBS: tuple[Job, ...] = (
    # The Score family on all 100 images (docs/results.md). A folder begun on the CPU
    # resumes here (its run.json holds no device); docs/results.md says which images ran
    # where.
    Job(
        "gpu-lite0-blocks15-sscam",
        _a(f"--layer _blocks.15 {FAITH} --methods ss-cam"),
        setting="lite0-blocks15",
    ),
    Job(
        "gpu-lite2-head-costly",
        _a(f"--model efficientnet-lite2 {FAITH} --methods grad-cam sa-cam is-cam poly-cam"),
        setting="lite2-head",
    ),
    # The performance goals (docs/performance.md, "GPU"): Grad-CAM against its floor,
    # the runner's per-image overhead at two sizes, the tail methods' row cap.
    Job(
        "speed-gpu",
        _a("benchmarks/speed.py --methods grad-cam sa-cam --skip-torchcam --skip-tradeoffs"),
        script=True,
        estimate_s=90,
    ),
    Job(
        "throughput-gpu-512",
        _a(
            "benchmarks/throughput.py --synthetic 512 --limit 512 --images-per-step 256 --repeat 1 "
            "--workers 12"
        ),
        script=True,
        estimate_s=60,
    ),
    Job(
        "throughput-gpu-2048",
        _a(
            "benchmarks/throughput.py --synthetic 2048 --limit 2048 --images-per-step 256 "
            "--repeat 1 --workers 12 --no-cold"
        ),
        script=True,
        estimate_s=120,
    ),
    Job(
        "tail-strategies-gpu",
        _a("benchmarks/tail_strategies.py --batches 1 8 --repeat 3"),
        script=True,
        estimate_s=60,
    ),
    # Then SS-CAM at _blocks.10, the full stability protocol beyond its first 40 images,
    # then SS-CAM at the two heads (the longest jobs: last, so that the short ones are not
    # queued behind them; docs/performance.md).
    Job(
        "lite0-blocks10-sscam",
        _a(f"--layer _blocks.10 {FAITH} --methods grad-cam sa-cam ss-cam"),
        setting="lite0-blocks10",
    ),
    Job(
        "gpu-stability-blocks15",
        _a("--layer _blocks.15 --methods grad-cam sa-cam --metrics adversarial explanation_attack"),
        setting="lite0-blocks15",
    ),
    Job(
        "gpu-lite0-head-sscam",
        _a(f"{FAITH} --methods grad-cam sa-cam ss-cam"),
        setting="lite0-head",
    ),
    Job(
        "gpu-lite2-head-sscam",
        _a(f"--model efficientnet-lite2 {FAITH} --methods grad-cam sa-cam ss-cam"),
        setting="lite2-head",
    ),
)


def command(job: Job, data: Path, runs: Path, device: str) -> list[str]:
    """The process ``job`` runs, with this queue's interpreter, data, run folder and device."""
    if job.script:
        return [sys.executable, *job.argv, "--device", device]
    return [
        sys.executable,
        "-m",
        "sacam.cli",
        "benchmark",
        str(data),
        "--device",
        device,
        *job.argv,
        "--out",
        str(runs / job.name),
    ]


def run_job(cmd: list[str], log_path: Path, deadline: float) -> str:
    """Run ``cmd`` until it ends or ``deadline``; how it ended: ``rc=N`` or ``cut``.

    Its output goes to ``log_path``. At the deadline the process group gets SIGINT (a
    run stops between pairs), then SIGKILL after up to ``GRACE_S``, also for children that
    outlived their parent; a run's folder keeps what it finished either way.
    """
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return f"rc={proc.wait(timeout=max(deadline - time.monotonic(), 1.0))}"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return "cut"


def run_queue(
    jobs: tuple[Job, ...],
    data: Path,
    runs: Path,
    out: Path,
    device: str,
    budget_s: float,
    reserve_s: float = 30.0,
) -> list[str]:
    """Run ``jobs`` in order within ``budget_s`` seconds and pack what they made into ``out``.

    ``reserve_s`` of the budget is kept for packing; ``out/queue.log`` and the archive
    are rewritten after every job. Returns the log's lines.
    """
    deadline = time.monotonic() + budget_s - reserve_s
    for folder in (out, runs, logs_of(runs)):
        folder.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    packed = False
    for job in jobs:
        left = deadline - time.monotonic()
        if left < job.estimate_s:
            lines.append(f"{job.name}: skipped, {left:.0f} s left")
        else:
            cmd = command(job, data, runs, device)
            began = time.monotonic()
            how = run_job(cmd, logs_of(runs) / f"{job.name}.log", deadline)
            took = time.monotonic() - began
            lines.append(f"{job.name}: {how} after {took:.0f} s: {' '.join(cmd)}")
            pack(jobs, runs, out)
            packed = True
        (out / "queue.log").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if not packed:  # no job ran: the archive still holds the folders it was given
        pack(jobs, runs, out)
    return lines


def logs_of(runs: Path) -> Path:
    """The folder of the jobs' output, beside ``runs``."""
    return runs.parent / f"{runs.name}-logs"


def pack(jobs: tuple[Job, ...], runs: Path, out: Path) -> Path:
    """``out/results.tar.gz``: every run folder as ``SETTING/NAME`` and every job's log.

    Written to a temporary name and renamed, so a kill while packing leaves the last
    whole archive. The device tool brings back at most 8 files: one archive and one log.
    """
    path = out / "results.tar.gz"
    tmp = out / ".results.tar.gz.tmp"
    logs = logs_of(runs)
    with tarfile.open(tmp, "w:gz") as tar:
        for job in jobs:
            if not job.script and (runs / job.name).is_dir():
                tar.add(runs / job.name, arcname=f"{job.setting or 'runs'}/{job.name}")
            if (logs / f"{job.name}.log").exists():
                tar.add(logs / f"{job.name}.log", arcname=f"logs/{job.name}.log")
    os.replace(tmp, path)
    return path


def _pack_on_sigterm(jobs: tuple[Job, ...], runs: Path, out: Path) -> None:
    """On SIGTERM (the device call ending), pack what is there, then exit."""

    def handler(signum: int, frame: object) -> None:
        pack(jobs, runs, out)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def main() -> None:
    """Run the queue from the command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the development images")
    parser.add_argument("--runs", type=Path, required=True, help="run folders (resumed)")
    parser.add_argument("--out", type=Path, required=True, help="where results.tar.gz goes")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds in all")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--only", nargs="+", help="these jobs only, in the queue's order")
    args = parser.parse_args()
    jobs = tuple(j for j in JOBS if not args.only or j.name in args.only)
    unknown = set(args.only or ()) - {j.name for j in JOBS}
    if unknown:
        parser.error(f"unknown jobs {sorted(unknown)}; the queue has {[j.name for j in JOBS]}")
    _pack_on_sigterm(jobs, args.runs, args.out)
    for line in run_queue(jobs, args.data, args.runs, args.out, args.device, args.budget):
        print(line)


if __name__ == "__main__":
    main()
