"""The results store of a run folder: whole lines only, resumable, one writer at a time.

- ``results.csv`` (``image,method,metric,value``), ``curves.jsonl`` and ``failures.csv``
  are appended one batch at a time, each batch as one ``write`` of whole lines, flushed
  and synced; a pair's ``time_s`` row comes last and marks it complete.
- On open, a line cut by a killed process (no final newline) is dropped, as are the rows
  of pairs without their ``time_s``; those pairs are recomputed.
- :class:`RunLock` keeps a second process off the folder: an exclusive ``flock`` on
  ``.sacam.lock`` (released by the OS when the holder dies, so a stale file is simply
  taken over), with the holder's PID in it for the message.
- :func:`check_settings` refuses a folder whose ``run.json`` holds other settings, naming
  them, and writes the current ones.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import socket
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from ...errors import InputError, SacamError
from ..config import RENAMED_SETTINGS

RESULT_FIELDS = ["image", "method", "metric", "value"]
FAILURE_FIELDS = ["image", "method", "error"]


class OutputLockedError(InputError):
    """Another process is writing to the output folder."""


def drop_cut_line(path: Path) -> bool:
    """Truncate ``path`` after its last newline; True if a cut line was dropped."""
    size = path.stat().st_size
    if size == 0:
        return False
    with path.open("rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return False
        f.seek(0)
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)
    return True


def replace_rows(path: Path, header: list[str], rows: Iterable[Sequence[str]]) -> None:
    """Rewrite the CSV ``path`` as ``header`` and ``rows``, through a temporary file.

    A kill leaves the old file or the new one; lines end as appended lines do (LF).
    """
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    os.replace(tmp, path)


def append_lines(path: Path, text: str) -> None:
    """Append whole lines to ``path`` in one write, flushed and synced."""
    if not text:
        return
    with path.open("a", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def check_settings(out: Path, settings: dict[str, Any], defaults: dict[str, Any]) -> None:
    """Refuse a folder written with other settings, naming them; else write ``run.json``.

    A setting the earlier run's ``run.json`` does not have (added to sacam since) counts as
    its default, so a folder made by an older version resumes when nothing changed.
    """
    run_file = out / "run.json"
    current = json.loads(json.dumps(settings))
    if run_file.exists():
        previous = json.loads(run_file.read_text())
        for old, new in RENAMED_SETTINGS.items():
            if old in previous:
                previous.setdefault(new, previous.pop(old))
        base = json.loads(json.dumps(defaults))
        for key, value in base.items():
            previous.setdefault(key, value)
        differ = sorted(
            k for k in current.keys() | previous.keys() if current.get(k) != previous.get(k)
        )
        if differ:
            shown = "; ".join(
                f"{k}: {previous.get(k, '(none)')!r} then, {current.get(k, '(none)')!r} now"
                for k in differ[:4]
            )
            raise SacamError(
                f"{out} holds results of a run with other settings ({shown}); use another "
                "--out, the same settings, or delete it"
            )
    run_file.write_text(json.dumps(current, indent=1))


@dataclass
class PairResult:
    """Everything one (image, method) pair produced."""

    image: str
    method: str
    values: dict[str, float]
    curves: dict[str, list[float]]
    time_s: float


class ResultsStore:
    """Append-only results of a run folder (see the module docstring)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.results = out / "results.csv"
        self.curves = out / "curves.jsonl"
        self.failures = out / "failures.csv"
        self.repaired: list[str] = []
        for path, header in (
            (self.results, ",".join(RESULT_FIELDS)),
            (self.failures, ",".join(FAILURE_FIELDS)),
            (self.curves, None),
        ):
            if not path.exists():
                path.write_text("" if header is None else header + "\n", encoding="utf-8")
            elif drop_cut_line(path):
                self.repaired.append(path.name)

    def rows(self) -> list[dict[str, str]]:
        """Every complete row of results.csv (values as text)."""
        with self.results.open(encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))

    def done_pairs(self) -> set[tuple[str, str]]:
        """Pairs whose ``time_s`` row was written; drops rows of unfinished pairs."""
        rows = self.rows()
        for k, r in enumerate(rows, start=2):
            try:
                float(r["value"])
            except (TypeError, ValueError):
                raise InputError(
                    f"{self.results} line {k} is not a result row ({r}): fix or delete the file"
                ) from None
        done = {(r["image"], r["method"]) for r in rows if r["metric"] == "time_s"}
        kept = [r for r in rows if (r["image"], r["method"]) in done]
        if len(kept) != len(rows):
            replace_rows(self.results, RESULT_FIELDS, ([r[k] for k in RESULT_FIELDS] for r in kept))
        return done

    def write(self, pairs: Iterable[PairResult]) -> None:
        """Append finished pairs: curves first, then results (``time_s`` last per pair)."""
        curves, results = io.StringIO(), io.StringIO()
        w = csv.writer(results, lineterminator="\n")
        for p in pairs:
            for kind, curve in p.curves.items():
                rec = {"image": p.image, "method": p.method, "kind": kind, "values": curve}
                curves.write(json.dumps(rec) + "\n")
            for name, val in p.values.items():
                w.writerow([p.image, p.method, name, repr(float(val))])
            w.writerow([p.image, p.method, "time_s", repr(float(p.time_s))])
        append_lines(self.curves, curves.getvalue())
        append_lines(self.results, results.getvalue())

    def forget_failures(self, pairs: set[tuple[str, str]]) -> None:
        """Drop the failure rows of ``pairs`` (a run retries them and records them anew).

        Without this, every resume appended another row for a pair that failed again, and
        kept the row of one that has since succeeded. Rows of other pairs (other methods,
        images past ``--limit``) stay.
        """
        with self.failures.open(encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
        kept = [r for r in rows[1:] if len(r) < 2 or (r[0], r[1]) not in pairs]
        if len(kept) != len(rows) - 1:
            replace_rows(self.failures, FAILURE_FIELDS, kept)

    def failure(self, image: str, method: str, error: str) -> None:
        """Record a failed pair (whole line)."""
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow([image, method, error.replace("\n", " ")])
        append_lines(self.failures, buf.getvalue())


def pair_results(
    names: list[str],
    method: str,
    values: dict[str, torch.Tensor],
    curves: dict[str, torch.Tensor],
    time_s: float,
) -> list[PairResult]:
    """Split batch tensors ``(B,)`` / ``(B, n)`` into one :class:`PairResult` per image."""
    vals = {k: v.detach().float().cpu().tolist() for k, v in values.items()}
    curv = {k: v.detach().float().cpu().tolist() for k, v in curves.items()}
    return [
        PairResult(
            name,
            method,
            {k: (float(v[i]) if math.isfinite(v[i]) else math.nan) for k, v in vals.items()},
            {k: v[i] for k, v in curv.items()},
            time_s,
        )
        for i, name in enumerate(names)
    ]


class RunLock:
    """Exclusive use of an output folder by one process (a context manager).

    Raises:
        OutputLockedError: another live process holds the folder.
    """

    def __init__(self, out: Path) -> None:
        self.path = out / ".sacam.lock"
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock(fd)
        except OSError:
            os.close(fd)
            holder = self.path.read_text(errors="replace").strip() or "unknown"
            raise OutputLockedError(
                f"another sacam benchmark ({holder}) is writing to {self.path.parent}: wait "
                "for it to finish, or use another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing releases the lock
            self._fd = None


def _lock(fd: int) -> None:
    """Take an exclusive, non-blocking lock on ``fd`` (OSError when held elsewhere)."""
    if sys.platform == "win32":  # pragma: no cover
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    else:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
