"""Running the repository's scripts and child processes from the tests."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"


def run_tool(name: str, *args: str, timeout: float = 900) -> str:
    """Run ``benchmarks/NAME`` with ``args``; its standard output (it must exit 0)."""
    done = subprocess.run(
        [sys.executable, str(BENCH / name), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def wait_for(ready: Callable[[], object], proc: subprocess.Popen[str]) -> None:
    """Poll until ``ready()`` while ``proc`` runs; the deadline only guards against a hang."""
    deadline = time.monotonic() + 900
    while not ready():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
