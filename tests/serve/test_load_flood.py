"""``benchmarks/load.py --flood``: a burst of large uploads meets the bounded queue."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.serve import require

ROOT = Path(__file__).resolve().parents[2]


def test_flood_is_accepted_up_to_the_queue_and_refused_beyond() -> None:
    require("fastapi")
    require("httpx")
    command = [sys.executable, str(ROOT / "benchmarks" / "load.py"), "--requests", "0"]
    command += ["--flood", "5", "--flood-megapixels", "2", "--max-queue", "1"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {
        r.split("|")[1].strip(): r.split("|")[2].strip()
        for r in done.stdout.splitlines()
        if r.startswith("| ")
    }
    accepted = int(rows["accepted (202)"])
    refused = int(rows["refused (429)"].split()[0])
    # one job runs and one waits; the other three find the queue full (a job counts as
    # waiting until the model thread picks it up, so as few as one may be accepted)
    assert 1 <= accepted <= 2 and accepted + refused == 5
    assert rows["other answers"].startswith("0")
    assert "Retry-After" in rows["refused (429)"]
    assert "MiB" in rows["RSS after every job was cancelled"]
    # the peak during the flood stays within the sum of the server's limits
    assert rows["peak within the bound"] == "yes"
    bound = next(v for k, v in rows.items() if k.startswith("bound: "))
    assert "decodes at a time" in next(k for k in rows if k.startswith("bound: "))
    peak = next(v for k, v in rows.items() if k.startswith("peak RSS"))
    assert int(peak.split()[0]) <= int(bound.split()[0])
