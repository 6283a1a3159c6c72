"""The grid pointing game's part of a run: grids of confident images, one map per cell."""

from __future__ import annotations

import time

import torch

from ...errors import SacamError
from ..localization import make_grids, tile
from ..registry import MetricBatch
from .data import Item, batches
from .state import Run
from .store import PairResult


def run_grids(run: Run) -> list[str]:
    """Score every grid metric on the run's grids; returns the grid names (``grid-NNN``)."""
    cfg, items = run.config, run.dataset.items
    confident = [
        (i, int(run.predictions[it.name]["top1"]))
        for i, it in enumerate(items)
        if it.name in run.predictions
        and int(run.predictions[it.name]["top1"]) == it.label
        and float(run.predictions[it.name]["prob"]) >= cfg.grid_threshold
    ]
    grids = make_grids(confident, cfg.grid_n, cfg.grid_count, cfg.seed)
    names = []
    for g, members in enumerate(grids):
        name = f"grid-{g:03d}"
        names.append(name)
        todo = [m for m in cfg.methods if (name, m) not in run.done]
        if todo:
            run.store.forget_failures({(name, m) for m in todo})  # retried now
            _score_grid(run, name, [items[i] for i in members], todo)
    return names


def _score_grid(run: Run, name: str, members: list[Item], methods: list[str]) -> None:
    cfg, lm, n = run.config, run.lm, run.config.grid_n
    (loaded,) = list(batches(members, lm.preprocess, len(members), 1))
    if loaded.failed:
        for method in methods:
            run.store.failure(name, method, loaded.failed[0][1])
        return
    x = lm.preprocess.normalize(loaded.pixels.to(cfg.device))
    grid = tile(x, n).expand(n * n, -1, -1, -1)
    classes = torch.tensor([it.label for it in members], device=x.device)
    for method in methods:
        try:
            t0 = time.perf_counter()
            maps = run.cam(method)(grid, classes)
            elapsed = (time.perf_counter() - t0) / (n * n)
            batch = MetricBatch(lm.model, grid, maps, classes, lm.preprocess, cfg, method)
            values = {}
            for info in run.metrics:
                if info.unit == "grid":
                    values.update({k: float(v.mean()) for k, v in info.fn(batch).values.items()})
            run.store.write([PairResult(name, method, values, {}, elapsed)])
        except (SacamError, RuntimeError, ValueError) as exc:
            run.store.failure(name, method, f"{type(exc).__name__}: {exc}")
