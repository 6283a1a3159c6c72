"""Scale-out on Ray: the runner's batches computed by Ray Data actors, recorded locally.

A thin adapter around the local engine's per-batch step
(:func:`~sacam.evaluation.runner.execution.score_batch`):

- the driver (``sacam benchmark``) takes the lock, resumes, predicts, and cuts the images
  that miss some method into the same batches the local engine makes (``images_per_step``
  consecutive images, with the names each method misses), so both engines score
  identical batches and give the same numbers;
- those batches are a Ray dataset; ``map_batches`` hands them to ``workers`` actors of a
  callable class whose constructor loads the model once per actor from the run's settings
  (model name or ``pkg.mod:factory`` and weights path: the module itself, hooked or not,
  is never pickled), each with ``gpus_per_worker`` GPUs and ``cpus_per_worker`` CPUs;
- each actor decodes a batch once and runs ``score_batch`` (autograd on: no inference
  mode) for each method on the images that miss it, returning per method the pairs, the
  failures and, with ``--save-maps``, the maps as compressed bytes;
- the driver appends each batch to the results store as it arrives, so a killed driver
  resumes like a local run, and an image that fails in a worker is a ``failures.csv`` row.

``ray`` is an optional extra (``pip install -e ".[ray]"``); this module imports it only
inside its functions, and ``import sacam`` never imports this module.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from tqdm import tqdm

from .._speed.allocator import keep_freed_memory
from ..errors import SacamError
from .config import BenchmarkConfig, load_run_model
from .explain_folder import Engine as ExplainEngine
from .explain_folder import Explainer, ExplainJob, explain_batch
from .localization import Annotation
from .registry import metric_info
from .runner import execution
from .runner.data import Dataset, Item, batches
from .runner.execution import BatchOutcome, Engine, record, score_batch
from .runner.maps import MapReader, MapWriter
from .runner.state import Run
from .runner.store import PairResult, ResultsStore

INSTALL_HINT = 'pip install -e ".[ray]"'


def require_ray() -> Any:
    """The ``ray`` module, or a :class:`SacamError` saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise SacamError(
            f"--engine ray needs Ray, which is not installed: {INSTALL_HINT} "
            '(or pip install "ray[data]")'
        ) from None
    return ray


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a Ray run is.

    Attributes:
        address: a running cluster (``auto`` or ``HOST:PORT``); None starts a local Ray
            instance for the run and shuts it down after (unless one is already running in
            this process, e.g. a test fixture's, which is used and left running).
        workers: actors (model copies); None: as many as the cluster's GPUs (with
            ``gpus_per_worker``) or CPUs allow.
        gpus_per_worker: GPUs per actor (1 for one worker per GPU; fractions share one).
        cpus_per_worker: CPUs per actor; also its torch threads (at least 1).
    """

    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0

    def threads(self) -> int:
        """Torch threads per actor."""
        return max(1, int(self.cpus_per_worker))

    def device(self) -> str:
        """The actors' device: their GPU (Ray sets ``CUDA_VISIBLE_DEVICES``) or the CPU."""
        return "cuda" if self.gpus_per_worker > 0 else "cpu"


class _Collector(MapWriter):
    """Keeps the maps of one batch in memory for the driver to write (``--save-maps``)."""

    def __init__(self) -> None:
        super().__init__(Path("."))
        self.saved: list[dict[str, np.ndarray]] = []

    def write(
        self,
        method: str,
        names: list[str],
        classes: torch.Tensor,
        maps: torch.Tensor,
        time_s: float,
    ) -> Path:
        """Keep the batch (float16 maps, as the shards hold them)."""
        self.saved.append(
            {
                "images": np.array(names, dtype=str),
                "classes": classes.detach().cpu().numpy().astype(np.int64),
                "maps": maps.detach().to(torch.float16).cpu().numpy(),
                "time_s": np.array(time_s, dtype=np.float64),
            }
        )
        return Path(".")


def _to_bytes(saved: list[dict[str, np.ndarray]]) -> bytes:
    if not saved:
        return b""
    buf, d = io.BytesIO(), saved[0]
    np.savez_compressed(
        buf, images=d["images"], classes=d["classes"], maps=d["maps"], time_s=d["time_s"]
    )
    return buf.getvalue()


class BatchScorer:
    """The Ray Data actor: one model per actor, one decoded batch for every method per call."""

    def __init__(
        self,
        config: BenchmarkConfig,
        metrics: list[str],
        annotations: dict[str, Annotation],
        threads: int,
        device: str,
    ) -> None:
        torch.set_num_threads(threads)
        keep_freed_memory()  # the actor's process is sacam's, as for the CLI
        config = replace(config, device=device, workers=1)
        torch.manual_seed(config.seed)
        lm = load_run_model(config)
        self.run = Run(
            config=config,
            lm=lm,
            dataset=Dataset([], "ray", annotations),
            metrics=[metric_info(m) for m in metrics],
            store=cast(ResultsStore, None),  # score_batch writes nothing; the driver records
            done=set(),
            predictions={},
            progress=False,
        )
        if config.from_maps is not None:
            self.run.reader = MapReader(config.from_maps)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each row's images decoded once, then outcome and maps of each method they miss."""
        outcomes, maps = [], []
        run = self.run
        for text, lacks in zip(batch["items"], batch["missing"], strict=True):
            rows = json.loads(str(text))
            items = [Item(r[0], Path(r[1]), int(r[2]), r[3]) for r in rows]
            run.predictions = {r[0]: {"top1": str(r[4])} for r in rows if r[4] is not None}
            (loaded,) = list(batches(items, run.lm.preprocess, len(items), 1, depth=0))
            loaded.pixels = loaded.pixels.to(run.config.device)  # once for every method
            missing = {m: set(names) for m, names in json.loads(str(lacks)).items()}
            for method, part in execution.method_parts(loaded, missing):
                collector = _Collector() if run.config.save_maps else None
                run.writer = collector
                outcome = score_batch(run, method, part)
                outcomes.append(_outcome_json(method, outcome))
                maps.append(_to_bytes(collector.saved) if collector else b"")
        return {"outcome": np.array(outcomes, dtype=object), "maps": np.array(maps, dtype=object)}


def _outcome_json(method: str, outcome: BatchOutcome) -> str:
    pairs = [[p.image, p.values, p.curves, p.time_s] for p in outcome.pairs]
    return json.dumps({"method": method, "pairs": pairs, "failures": outcome.failures})


def _record_row(run: Run, text: str, maps: bytes) -> int:
    """Write one returned batch into the store (and its maps); returns its image count."""
    data = json.loads(text)
    method = data["method"]
    pairs = [PairResult(p[0], method, p[1], p[2], p[3]) for p in data["pairs"]]
    if maps and run.writer is not None:
        with np.load(io.BytesIO(maps), allow_pickle=False) as z:
            run.writer.write(
                method,
                [str(n) for n in z["images"]],
                torch.from_numpy(z["classes"]),
                torch.from_numpy(z["maps"]),
                float(z["time_s"]),
            )
    record(run, method, BatchOutcome(pairs, [tuple(f) for f in data["failures"]]))
    return len(pairs) + len(data["failures"])


def _target(run: Run, item: Item) -> int | None:
    """The driver's top-1 of ``item`` (None without one: the worker records the failure)."""
    prediction = run.predictions.get(item.name)
    return int(prediction["top1"]) if prediction else None


def _chunks(run: Run) -> list[dict[str, str]]:
    """The missing pairs as the local engine's batches, with the names each method misses."""
    todo, missing = execution.missing_by_method(run.dataset.items, run.config.methods, run.done)
    size = run.config.images_per_step
    rows = []
    for start in range(0, len(todo), size):
        chunk = todo[start : start + size]
        items = [[it.name, str(it.path), it.label, it.where, _target(run, it)] for it in chunk]
        lacks = {m: [it.name for it in chunk if it.name in names] for m, names in missing.items()}
        rows.append({"items": json.dumps(items), "missing": json.dumps(lacks)})
    return rows


def _default_workers(ray: Any, options: RayOptions) -> int:
    resources = ray.cluster_resources()
    if options.gpus_per_worker > 0:
        n = int(resources.get("GPU", 0) // options.gpus_per_worker)
        if n < 1:
            raise SacamError(
                f"--gpus-per-worker {options.gpus_per_worker}: the Ray cluster has "
                f"{resources.get('GPU', 0)} GPU(s)"
            )
        return n
    return max(1, int(resources.get("CPU", 1) // max(options.cpus_per_worker, 1e-3)))


@contextlib.contextmanager
def _session(ray: Any, options: RayOptions) -> Iterator[None]:
    """Connect to (or start) Ray for one run; a failed Ray job becomes one SacamError.

    A Ray instance this run started is shut down afterwards; one already running (a
    caller's, or a cluster's) is left as it is.
    """
    started = _connect(ray, options)
    try:
        yield
    except ray.exceptions.RayError as exc:
        raise _failed(exc) from None
    finally:
        if started:
            ray.shutdown()


def _connect(ray: Any, options: RayOptions) -> bool:
    """Connect to (or start) Ray; True when this run started it and must shut it down."""
    if ray.is_initialized():
        return False
    # workers' own output stays in Ray's session logs (/tmp/ray/session_*/logs): failed
    # images are failures.csv rows, a dead job one error line
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": "warning",
        "log_to_driver": False,
    }
    if options.address is not None:
        kwargs["address"] = options.address
    # workers import the model factory (pkg.mod:factory) as the driver does
    path = os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]).strip(os.pathsep)
    kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": path}}
    ray.init(**kwargs)
    return True


def ray_engine(options: RayOptions) -> Engine:
    """An engine for :func:`~sacam.evaluation.runner.execution.run_benchmark` on Ray.

    Args:
        options: the cluster and the actors' resources.

    Raises:
        SacamError: Ray is not installed (naming the extra to install).
    """
    ray = require_ray()

    def engine(run: Run) -> None:
        rows = _chunks(run)
        if not rows:
            return
        with _session(ray, options):
            _execute(ray, run, rows, options)

    return engine


def _stream(
    ray: Any,
    rows: list[dict[str, str]],
    actor: type,
    kwargs: dict[str, Any],
    options: RayOptions,
) -> tuple[Any, int]:
    """``rows`` mapped by ``workers`` actors of class ``actor``; (iterable of rows, workers)."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # sacam's own bar counts the images
    ctx.execution_options.preserve_order = False
    # a dead worker is one error line of sacam's: Ray Data's own report of it (a traceback
    # logged from one of its threads) would print it a second time, at length
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    workers = min(options.workers or _default_workers(ray, options), len(rows))
    mapped = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        actor,
        fn_constructor_kwargs=kwargs,
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=workers),  # ``concurrency=workers``
        num_cpus=options.cpus_per_worker,
        num_gpus=options.gpus_per_worker,
    )
    return mapped.iter_rows(), workers


def _execute(ray: Any, run: Run, rows: list[dict[str, str]], options: RayOptions) -> None:
    kwargs = {
        "config": run.config,
        "metrics": [m.name for m in run.metrics],
        "annotations": run.dataset.annotations,
        "threads": options.threads(),
        "device": options.device(),
    }
    scored, workers = _stream(ray, rows, BatchScorer, kwargs, options)
    total = sum(len(names) for r in rows for names in json.loads(r["missing"]).values())
    disable = execution.progress_disabled(run.progress)
    bar = tqdm(total=total, unit="pair", desc=f"ray ×{workers}", disable=disable)
    try:
        for row in scored:
            bar.update(_record_row(run, str(row["outcome"]), bytes(row["maps"])))
    finally:
        bar.close()


class FolderExplainer:
    """The Ray Data actor of ``sacam explain DIR``: one model per actor."""

    def __init__(self, job: ExplainJob, threads: int, device: str) -> None:
        torch.set_num_threads(threads)
        keep_freed_memory()
        self.explainer = Explainer(replace(job, device=device))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Explain each row's images (files written here); returns the failures as JSON."""
        out = []
        for text in batch["items"]:
            items = [Item(r[0], Path(r[1]), 0, r[1]) for r in json.loads(str(text))]
            out.append(json.dumps([len(items), explain_batch(self.explainer, items)]))
        return {"outcome": np.array(out, dtype=object)}


def ray_explain_engine(options: RayOptions) -> ExplainEngine:
    """An engine for :func:`~sacam.evaluation.explain_folder.explain_folder` on Ray.

    The actors write the overlays and maps themselves (into ``OUT``, which they must
    reach: on a cluster, a shared file system, as for the images).
    """
    ray = require_ray()

    def engine(
        job: ExplainJob, chunks: list[list[Item]], done: Callable[[int, list], None]
    ) -> None:
        rows = [{"items": json.dumps([[it.name, str(it.path)] for it in c])} for c in chunks]
        with _session(ray, options):
            kwargs = {"job": job, "threads": options.threads(), "device": options.device()}
            stream, _ = _stream(ray, rows, FolderExplainer, kwargs, options)
            for row in stream:
                n, failures = json.loads(str(row["outcome"]))
                done(n, [tuple(f) for f in failures])

    return engine


def _failed(exc: BaseException) -> SacamError:
    """A one-line error for a Ray job that died (an actor that could not load the model)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    cause = lines[-1] if lines else type(exc).__name__
    return SacamError(f"the Ray run failed ({cause}); finished results are kept: rerun to resume")


__all__ = [
    "BatchScorer",
    "FolderExplainer",
    "RayOptions",
    "ray_engine",
    "ray_explain_engine",
    "require_ray",
]
