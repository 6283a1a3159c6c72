"""Where one command's time went: seconds per part of a run, adding up to its wall time.

A :class:`Clock` on the run collects the seconds this command spent computing maps,
scoring each metric, predicting, loading and writing; the parts never overlap, so their
sum is at most the wall time, and the rest (decoding images the threads had not finished,
progress bars) is reported as such. A metric that reuses a part another metric computed
in the same batch (e.g. ``confidence`` and ``coherency`` share one forward pass) is
charged for its own work only; the part goes to the metric that ran first.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

MAPS = "maps"
#: An engine other than the local one (Ray) times its maps and metrics as one part.
ENGINE = "maps and metrics on the engine"
METRIC = "metric:"


@dataclass
class Clock:
    """Seconds per part of a run (this command's only) and the images it processed.

    Example:
        >>> clock = Clock()
        >>> clock.add("maps", 1.5); clock.add("maps", 0.5)
        >>> clock.seconds
        {'maps': 2.0}
    """

    seconds: dict[str, float] = field(default_factory=dict)
    images: int = 0

    def add(self, part: str, seconds: float) -> None:
        """Charge ``seconds`` to ``part``."""
        self.seconds[part] = self.seconds.get(part, 0.0) + seconds

    @contextmanager
    def part(self, name: str, device: torch.device | None = None) -> Iterator[None]:
        """Time the block and charge it to ``name`` (waiting for ``device``'s queue first)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if device is not None and device.type == "cuda":
                torch.cuda.synchronize(device)  # the part's time, not the queue's
            self.add(name, time.perf_counter() - t0)

    def as_dict(self) -> dict[str, object]:
        """``{"seconds": {part: s}, "images": n}`` for the summary."""
        return {"seconds": dict(self.seconds), "images": self.images}


def metric_part(name: str) -> str:
    """The clock's part name of a metric: ``metric:deletion``."""
    return f"{METRIC}{name}"
