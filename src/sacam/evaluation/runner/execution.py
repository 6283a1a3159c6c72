"""The run itself: images × methods × metrics, batch by batch, resumable.

``run_benchmark(config)`` takes the folder lock, checks the settings against an earlier
run in the same folder, loads the model on ``config.device``, then predicts, explains and
scores the images ``config.images_per_step`` at a time (decoded ahead by threads, once for the
prediction and all methods: each decoded batch is predicted where it lacks a prediction,
then goes to every method that misses some of it), appending whole lines to the results
store. The metrics are the registry's; the loop knows none of them by name. A failed pair
is retried on resume, its old failure row dropped first (so failures.csv holds each
pair's latest failure once).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from ..._outputs import to_logits
from ...errors import InputError, SacamError
from ...models import LoadedModel
from ...registry import method_info
from ..config import BenchmarkConfig, load_run_model
from ..localization import annotation_mask, load_annotations
from ..registry import (
    MetricBatch,
    MetricInfo,
    MetricOutput,
    default_metrics,
    list_metrics,
    metric_info,
)
from .clock import ENGINE, MAPS, Clock, metric_part
from .data import Item, Loaded, batches, check_labels, discover
from .grid import run_grids
from .maps import MapReader, MapWriter, drop_unsaved
from .predictions import load_predictions, predict_batch, predict_missing
from .report import write_report
from .state import Run, check_methods
from .store import PairResult, ResultsStore, RunLock, check_settings, pair_results
from .summary import summarize
from .tasks import run_task_benchmark

Engine = Callable[[Run], None]


@dataclass
class BatchOutcome:
    """What one batch produced: finished pairs and ``(image, error)`` failures."""

    pairs: list[PairResult]
    failures: list[tuple[str, str]]


def select_metrics(names: list[str], has_annotations: bool) -> list[MetricInfo]:
    """The registry entries a run scores (``all`` and ``default`` expand).

    Metrics that need annotations are dropped from ``all`` when there are none, and
    refused when asked for by name.
    """
    chosen: list[str] = []
    for name in names:
        if name == "all":
            chosen += [m for m in list_metrics() if has_annotations or _no_boxes(m)]
        elif name == "default":
            chosen += default_metrics()
        else:
            metric_info(name)  # unknown names fail listing the valid ones
            if not has_annotations and not _no_boxes(name):
                raise SacamError(
                    f"{name} needs boxes or masks: pass --annotations FILE (CSV or JSON) or "
                    "use the ImageNet validation layout (LOC_val_solution.csv)"
                )
            chosen.append(name)
    return [metric_info(m) for m in dict.fromkeys(chosen)]


def _no_boxes(name: str) -> bool:
    return "annotations" not in metric_info(name).needs


def progress_disabled(progress: bool | None) -> bool | None:
    """The ``disable`` argument of tqdm for a progress setting (None: only on a terminal).

    Example:
        >>> progress_disabled(True), progress_disabled(False), progress_disabled(None)
        (False, True, None)
    """
    return None if progress is None else not progress


def _targets(run: Run, items: list[Item]) -> torch.Tensor:
    if run.config.use_labels:
        return torch.tensor([it.label for it in items])
    missing = [it.name for it in items if it.name not in run.predictions]
    if missing:
        raise InputError(f"no prediction for {missing[0]}: it was not predicted before its maps")
    return torch.tensor([int(run.predictions[it.name]["top1"]) for it in items])


def _masks(run: Run, loaded: Loaded) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    anns = [run.dataset.annotations.get(it.name) for it in loaded.items]
    if not any(a is not None for a in anns):
        return None, torch.zeros(len(anns), dtype=torch.bool)
    s = run.lm.preprocess.size
    masks = torch.zeros(len(anns), s, s, dtype=torch.bool)
    for i, (ann, size) in enumerate(zip(anns, loaded.sizes, strict=True)):
        if ann is not None:
            masks[i] = annotation_mask(ann, size, run.lm.preprocess)
    return masks, torch.tensor([a is not None for a in anns])


def _maps(
    run: Run, method: str, x: torch.Tensor, items: list[Item]
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Maps, explained classes and seconds per map: computed, or read from saved maps."""
    names = [it.name for it in items]
    if run.reader is not None:
        maps, classes, time_s = run.reader.load(method, names)
        if maps.shape[-2:] != x.shape[-2:]:
            raise InputError(f"saved maps are {tuple(maps.shape[-2:])}, the inputs {x.shape[-2:]}")
        return maps.to(x.device), classes.to(x.device), time_s
    classes = _targets(run, items)  # on the CPU: checking them needs no device sync
    t0 = time.perf_counter()
    maps = run.cam(method)(x, classes)
    if maps.is_cuda:
        torch.cuda.synchronize(maps.device)  # the time is the map's, not the queue's
    time_s = (time.perf_counter() - t0) / len(items)
    run.clock.add(MAPS, time_s * len(items))
    if run.writer is not None:
        run.writer.write(method, names, classes, maps, time_s)
    return maps, classes.to(x.device, non_blocking=True), time_s


def score(
    metrics: list[MetricInfo], batch: MetricBatch, clock: Clock | None = None
) -> MetricOutput:
    """Every chosen per-image metric on one batch, merged into one output.

    With a ``clock``, each metric's seconds are charged to it (see :mod:`.clock`).
    """
    merged = MetricOutput({}, {})
    clock = clock or Clock()
    for info in metrics:
        if info.unit != "image":
            continue
        if "annotations" in info.needs and batch.masks is None:
            continue
        with clock.part(metric_part(info.name), batch.images.device):
            out = info.fn(batch)
        merged.values.update(out.values)
        merged.curves.update(out.curves)
    return merged


def _score_loaded(run: Run, method: str, loaded: Loaded) -> list[PairResult]:
    lm, cfg = run.lm, run.config
    x = lm.preprocess.normalize(loaded.pixels.to(cfg.device, non_blocking=True))
    maps, classes, time_s = _maps(run, method, x, loaded.items)
    masks, has_mask = _masks(run, loaded)
    batch = MetricBatch(
        model=lm.model,
        images=x,
        maps=maps,
        classes=classes,
        preprocess=lm.preprocess,
        config=cfg,
        method=method,
        explain=run.explainer(method),
        masks=None if masks is None else masks.to(x.device),
        has_mask=has_mask,
    )
    out = score(run.metrics, batch, run.clock)
    names = [it.name for it in loaded.items]
    return pair_results(names, method, out.values, out.curves, time_s)


def score_batch(run: Run, method: str, loaded: Loaded) -> BatchOutcome:
    """Explain and score one decoded batch: its finished pairs and its failures.

    The one per-batch step of both engines (local and Ray): it writes nothing to the
    results store (saved maps go to ``run.writer``), so the caller records the outcome.
    """
    if run.reader is not None:
        drop_unsaved(run.reader, method, loaded)
    outcome = BatchOutcome([], [(item.name, error) for item, error in loaded.failed])
    if loaded.items:
        try:
            outcome.pairs = _score_loaded(run, method, loaded)
        except (SacamError, RuntimeError, ValueError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            outcome.failures += [(item.name, error) for item in loaded.items]
    return outcome


def record(run: Run, method: str, outcome: BatchOutcome) -> None:
    """Append a batch's failures and finished pairs to the run's results store."""
    for name, error in outcome.failures:
        run.store.failure(name, method, error)
    if outcome.pairs:
        run.store.write(outcome.pairs)


def missing_by_method(
    items: list[Item], methods: list[str], done: set[tuple[str, str]]
) -> tuple[list[Item], dict[str, set[str]]]:
    """The images some method still misses, in order, and each method's missing names."""
    missing = {m: {it.name for it in items if (it.name, m) not in done} for m in methods}
    todo = [it for it in items if any(it.name in names for names in missing.values())]
    return todo, missing


def method_parts(loaded: Loaded, missing: dict[str, set[str]]) -> Iterator[tuple[str, Loaded]]:
    """Each method with the part of a decoded batch it misses (methods with none skipped)."""
    for method, names in missing.items():
        part = loaded.part(names)
        if part.items or part.failed:
            yield method, part


def local_engine(run: Run) -> None:
    """The local engine: every method's missing pairs, batch by batch, in this process.

    Each image is decoded once for all methods: a decoded batch goes to every method that
    still misses some of its images (the images it misses), then the next batch. One
    progress bar per method.
    """
    cfg = run.config
    todo, missing = missing_by_method(run.dataset.items, cfg.methods, run.done)
    predict_missing(run, skip=todo)  # finished images without one: a pass of their own
    stacked = sys.stderr.isatty()  # bars on their own lines; a log gets plain updates
    bars = {
        m: tqdm(
            total=len(missing[m]),
            unit="img",
            desc=m,
            position=k if stacked else None,
            disable=progress_disabled(run.progress),
        )
        for k, m in enumerate(cfg.methods)
    }
    try:
        pin = cfg.device.startswith("cuda")
        for loaded in batches(todo, run.lm.preprocess, cfg.images_per_step, cfg.workers, 2, pin):
            loaded.pixels = loaded.pixels.to(cfg.device, non_blocking=True)  # once, not per method
            with run.clock.part("predicting", loaded.pixels.device):
                predict_batch(cfg.out, loaded, run.lm, cfg.device, run.predictions)
            for method, part in method_parts(loaded, missing):
                record(run, method, score_batch(run, method, part))
                bars[method].update(len(part.items) + len(part.failed))
    finally:
        for bar in bars.values():
            bar.close()


def _prepare(config: BenchmarkConfig, progress: bool | None) -> Run:
    dataset = discover(config.data_dir, config.limit, config.class_names)
    if config.annotations is not None:
        dataset.annotations.update(load_annotations(config.annotations))
    metrics = select_metrics(config.metrics, bool(dataset.annotations))
    for m in config.methods:
        method_info(m)  # unknown names fail before any work, listing the valid ones
    torch.manual_seed(config.seed)
    lm = load_run_model(config)
    check_labels(dataset.items, len(lm.class_names) or _n_classes(lm, config.device))
    check_methods(config, lm.model)  # a bad layer or option fails before any file is written
    settings = config.settings() | {"metrics": [m.name for m in metrics]}
    check_settings(config.out, settings, BenchmarkConfig(config.data_dir).settings())
    store = ResultsStore(config.out)
    done = store.done_pairs()
    _, missing = missing_by_method(dataset.items, config.methods, done)
    store.forget_failures({(name, m) for m, names in missing.items() for name in names})
    predictions = load_predictions(config.out)  # the engine predicts the others
    run = Run(config, lm, dataset, metrics, store, done, predictions, progress)
    if config.from_maps is not None:
        run.reader = MapReader(config.from_maps)
    if config.save_maps:
        run.writer = MapWriter(config.out / "maps")
    return run


def _n_classes(lm: LoadedModel, device: str) -> int:
    x = torch.zeros(1, 3, lm.preprocess.size, lm.preprocess.size, device=device)
    with torch.inference_mode():
        return int(to_logits(lm.model(x)).shape[1])


def run_benchmark(
    config: BenchmarkConfig, *, progress: bool | None = None, engine: Engine | None = None
) -> dict[str, Any]:
    """Run (or resume) a benchmark and write every output file; returns the summary.

    Args:
        config: the run's settings.
        progress: progress bars (one per method, with images/s and ETA): None shows them on
            a terminal only, True always (on stderr), False never.
        engine: what computes the missing pairs into ``run.store``
            (:func:`local_engine` by default, which predicts each image in the batch of its
            maps; :func:`sacam.evaluation.ray_engine.ray_engine` runs them on Ray). Any
            other engine finds every image predicted first, in a pass of its own. The
            lock, resume, summary and report are the same for all.

    Example:
        >>> from pathlib import Path
        >>> cfg = BenchmarkConfig(Path("imagenet-dev"), methods=["grad-cam"], limit=5)
        >>> cfg.images_per_step, cfg.metrics
        (16, ['default'])
    """
    if config.task != "classification":  # one map per annotated object: its own loop
        return run_task_benchmark(config, progress=progress)
    config.out.mkdir(parents=True, exist_ok=True)
    with RunLock(config.out):
        t0 = time.perf_counter()
        run = _prepare(config, progress)
        run.clock.add("loading", time.perf_counter() - t0)
        run.clock.images = len(missing_by_method(run.dataset.items, config.methods, run.done)[0])
        if engine is None or engine is local_engine:
            local_engine(run)
        else:
            with run.clock.part("predicting"):
                predict_missing(run)  # the rows it scores need their top-1 classes
            with run.clock.part(ENGINE):
                engine(run)
        grid_names: list[str] = []
        if any(m.unit == "grid" for m in run.metrics):
            with run.clock.part("grid metrics"):
                grid_names = run_grids(run)
        with run.clock.part("writing the summary and report"):
            summary = summarize(run, grid_names)
            write_report(run, summary)
    return summary | {"timing": run.clock.as_dict()}


__all__ = [
    "BatchOutcome",
    "BenchmarkConfig",
    "Engine",
    "local_engine",
    "method_parts",
    "missing_by_method",
    "predict_missing",
    "progress_disabled",
    "record",
    "run_benchmark",
    "score",
    "score_batch",
    "select_metrics",
]
