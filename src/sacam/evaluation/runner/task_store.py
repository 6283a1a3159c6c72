"""The results store of a detection or segmentation run: whole images, resumable.

- ``results.csv``: one row per object and method. When an image is done, its rows (every
  method it missed) are appended in one write of whole lines, flushed and synced, so a
  kill can cut only the image written last.
- ``failures.csv``: ``image,error``, one row per image that could not be scored (an
  unreadable image or mask, an annotation that does not fit the model); the run goes on.

On open, a line cut by a killed process (no final newline) is dropped. The image written
last is then checked against its number of objects: a method with fewer rows (a write cut
between lines) loses them and is computed again. Every other image was written whole.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ...errors import InputError
from .store import append_lines, drop_cut_line, replace_rows

TASK_FAILURE_FIELDS = ["image", "error"]
SKIPPED = (OSError, ValueError, RuntimeError)
"""Errors of one image (an unreadable image or mask, an annotation that does not fit the
model): a ``failures.csv`` row, and the run goes on."""


class TaskStore:
    """Append-only results of a detection or segmentation run (see the module docstring).

    Args:
        out: the run's folder.
        header: the columns of ``results.csv``.

    Raises:
        InputError: ``results.csv`` exists with other columns.
    """

    def __init__(self, out: Path, header: list[str]) -> None:
        self.header = header
        self.results = out / "results.csv"
        self.failures = out / "failures.csv"
        self.repaired: list[str] = []
        for path, columns in ((self.results, header), (self.failures, TASK_FAILURE_FIELDS)):
            if not path.exists() or path.stat().st_size == 0:
                path.write_text(",".join(columns) + "\n", encoding="utf-8")
                continue
            if drop_cut_line(path):
                self.repaired.append(path.name)
            with path.open(encoding="utf-8", newline="") as f:
                found = next(csv.reader(f), [])
            if found != columns:
                raise InputError(
                    f"{path} has the columns {','.join(found)}, not {','.join(columns)}: "
                    "it was written by another kind of run; use another --out or delete it"
                )

    def rows(self) -> list[dict[str, str]]:
        """Every complete row of results.csv (values as text), in the order written."""
        with self.results.open(encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))

    def done(self, count: Callable[[str], int | None]) -> set[tuple[str, str]]:
        """The (image, method) pairs written whole; drops the short ones of the last image.

        Args:
            count: the number of objects of an image by name (None: not known, its rows
                are kept).
        """
        rows = self.rows()
        objects: dict[tuple[str, str], list[int]] = defaultdict(list)
        for line, r in enumerate(rows, start=2):
            if not (r.get("object") or "").isdigit() or not r.get("method"):
                raise InputError(
                    f"{self.results} line {line} is not a result row ({r}): fix or delete the file"
                )
            objects[(r["image"], r["method"])].append(int(r["object"]))
        if not rows:
            return set()
        last = rows[-1]["image"]
        n = count(last)
        short = {
            pair
            for pair, seen in objects.items()
            if pair[0] == last and n is not None and sorted(seen) != list(range(n))
        }
        if short:
            kept = [r for r in rows if (r["image"], r["method"]) not in short]
            replace_rows(self.results, self.header, ([r[k] for k in self.header] for r in kept))
        return set(objects) - short

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append an image's rows as one write of whole lines."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, self.header, restval="", lineterminator="\n")
        writer.writerows(rows)
        append_lines(self.results, buf.getvalue())

    def failure(self, image: str, error: str) -> None:
        """Record an image that could not be scored (one whole line)."""
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow([image, error.replace("\n", " ")])
        append_lines(self.failures, buf.getvalue())

    def failed(self) -> set[str]:
        """The images of failures.csv."""
        with self.failures.open(encoding="utf-8", newline="") as f:
            return {r["image"] for r in csv.DictReader(f)}

    def forget_failures(self, images: set[str]) -> None:
        """Drop the failure rows of ``images`` (the run retries them and records them anew).

        Rows of other images (past ``--limit``, say) stay.
        """
        with self.failures.open(encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))[1:]
        kept = [r for r in rows if not r or r[0] not in images]
        if len(kept) != len(rows):
            replace_rows(self.failures, TASK_FAILURE_FIELDS, kept)
