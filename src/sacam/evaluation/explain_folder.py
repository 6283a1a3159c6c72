"""``sacam explain DIR``: every image below a folder explained, one overlay (and map) each.

Per image ``name`` (its path below ``DIR`` without the suffix) and method ``m`` it writes
``OUT/<name>_<m>.png`` (the overlay) and, with ``save_maps``, ``OUT/<name>_<m>.npy`` (the
map, float16 at the input size); a chosen class and layer join the name
(``<name>_<m>_<class>_<layer>.png``), so runs for other classes or layers keep their
files. Each file is written to a temporary name and renamed, so
a file is whole or absent. Images whose files all exist are skipped (a rerun resumes);
images that fail are appended to ``OUT/failures.csv`` (``image,method,error``). Each
explained image's top-1 class is appended to ``OUT/predictions.csv``
(``image,class_index,class_name,probability``).

The per-batch step :func:`explain_batch` is the same for the local engine (this process)
and the Ray engine (:mod:`sacam.evaluation.ray_engine`, one model per actor).
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..api import build_method
from ..errors import InputError, SacamError
from ..models import load_model, with_preprocess
from ..scores import class_probabilities
from ..viz import overlay
from .runner.data import IMAGE_SUFFIXES, Item, batches
from .runner.store import RunLock

PREDICTIONS = "predictions.csv"
PREDICTION_HEADER = ("image", "class_index", "class_name", "probability")


@dataclass(frozen=True)
class ExplainJob:
    """The settings of a folder explanation (picklable: Ray actors rebuild the model)."""

    data_dir: Path
    out: Path
    methods: tuple[str, ...]
    model: str | None = None
    weights: str | None = None
    layer: str | list[str] | None = None
    target: int | None = None
    resize: str | None = None
    images_per_step: int = 8
    device: str = "cpu"
    save_maps: bool = False
    cmap: str = "jet"
    alpha: float = 0.5
    trust_model_file: bool = False
    size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    class_names: tuple[str, ...] | None = None
    method_options: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()

    def outputs(self, name: str) -> list[Path]:
        """The files one image gets."""
        kinds = (".png", ".npy") if self.save_maps else (".png",)
        return [self.out / f"{self.stem(name, m)}{k}" for m in self.methods for k in kinds]

    def stem(self, name: str, method: str) -> str:
        """``<image>_<method>``, then the chosen class and layer, if any."""
        names = self.class_names or ()
        label = None
        if self.target is not None:
            label = names[self.target] if self.target < len(names) else f"class {self.target}"
        layer = [self.layer] if isinstance(self.layer, str) else self.layer
        return output_stem(name, method, label, layer)


def slug(text: str) -> str:
    """``text`` as a file-name part: lower case, other characters as one ``-``.

    Example:
        >>> slug("Tiger cat"), slug("_blocks.15")
        ('tiger-cat', 'blocks.15')
    """
    return re.sub(r"[^a-z0-9._+@]+", "-", text.lower()).strip("-_.") or "x"


def output_stem(image: str, method: str, label: str | None, layers: list[str] | None) -> str:
    """A map's file name, no suffix: ``chelsea_sa-cam``, ``chelsea_sa-cam_tabby_blocks.15``."""
    parts = [image, method]
    if label is not None:
        parts.append(slug(label))
    if layers:
        parts.append("+".join(slug(x) for x in layers))
    return "_".join(parts)


def list_images(data_dir: Path) -> list[Item]:
    """Every image below ``data_dir`` (by suffix), sorted; names without the suffix."""
    if not data_dir.is_dir():
        raise InputError(f"{data_dir} is not a folder")
    paths = sorted(p for p in data_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise InputError(f"{data_dir} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    rel = [p.relative_to(data_dir).with_suffix("").as_posix() for p in paths]
    return [Item(name, p, 0, str(p)) for name, p in zip(rel, paths, strict=True)]


class Explainer:
    """The job's model and methods, built once (per process or per Ray actor)."""

    def __init__(self, job: ExplainJob) -> None:
        self.job = job
        self.lm = lm = load_model(
            job.model,
            weights=job.weights,
            device=job.device,
            trust_model_file=job.trust_model_file,
            resize=job.resize or None,
            size=job.size,
            class_names=job.class_names,
        )
        stats = {k: v for k, v in (("mean", job.mean), ("std", job.std)) if v is not None}
        if stats:
            self.lm = lm = with_preprocess(lm, **stats)
        options = {m: dict(o) for m, o in job.method_options}
        self.cams: dict[str, Callable[..., torch.Tensor]] = {
            m: build_method(lm.model, m, job.layer, **options.get(m, {})) for m in job.methods
        }


def _save(path: Path, write: Callable[[Any], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        write(f)
    os.replace(tmp, path)


def explain_batch(ex: Explainer, items: list[Item]) -> list[tuple[str, str, str]]:
    """Explain and write one batch; returns its failures ``(image, method, error)``."""
    job, pre = ex.job, ex.lm.preprocess
    (loaded,) = list(batches(items, pre, len(items), 1, depth=0))
    failures = [(it.name, m, err) for it, err in loaded.failed for m in job.methods]
    if not loaded.items:
        return failures
    x = pre.normalize(loaded.pixels).to(job.device)
    with torch.no_grad():
        probs = class_probabilities(ex.lm.model, x)
    p1, top1 = (t.cpu() for t in probs.max(1))
    _append_rows(
        job.out / PREDICTIONS,
        PREDICTION_HEADER,
        [
            (it.name, int(c), ex.lm.class_name(int(c)), f"{float(p):.4f}")
            for it, c, p in zip(loaded.items, top1, p1, strict=True)
        ],
    )
    targets = torch.full_like(top1, job.target) if job.target is not None else top1
    for method, cam in ex.cams.items():
        try:
            maps = cam(x, targets).detach().float().cpu()  # autograd on: gradient methods
            for i, it in enumerate(loaded.items):
                image = overlay(loaded.pixels[i], maps[i], cmap=job.cmap, alpha=job.alpha)
                stem = job.out / job.stem(it.name, method)
                _save(stem.with_name(stem.name + ".png"), lambda f: image.save(f, "PNG"))  # noqa: B023
                if job.save_maps:
                    arr = maps[i].numpy().astype(np.float16)
                    _save(stem.with_name(stem.name + ".npy"), lambda f: np.save(f, arr))  # noqa: B023
        except (SacamError, RuntimeError, ValueError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}".replace("\n", " ")
            failures += [(it.name, method, error) for it in loaded.items]
    return failures


def record_failures(out: Path, failures: list[tuple[str, str, str]]) -> None:
    """Append failures to ``out/failures.csv`` as whole lines (header on creation)."""
    _append_rows(out / "failures.csv", ("image", "method", "error"), failures)


def _append_rows(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Append CSV rows to ``path`` in one write (the header first when it is new)."""
    if not rows:
        return
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if not path.exists():
        w.writerow(header)
    w.writerows(rows)
    with path.open("a", encoding="utf-8", newline="") as f:
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())


def read_predictions(out: Path) -> list[dict[str, str]]:
    """The rows of ``out/predictions.csv`` (the latest per image), in image order."""
    path = out / PREDICTIONS
    if not path.is_file():
        return []
    with path.open(encoding="utf-8", newline="") as f:
        latest = {row["image"]: row for row in csv.DictReader(f)}
    return [latest[k] for k in sorted(latest)]


Engine = Callable[[ExplainJob, list[list[Item]], Callable[[int, list], None]], None]


def local_explain_engine(
    job: ExplainJob, chunks: list[list[Item]], done: Callable[[int, list], None]
) -> None:
    """Explain the chunks in this process, one after another."""
    ex = Explainer(job)
    for chunk in chunks:
        done(len(chunk), explain_batch(ex, chunk))


def explain_folder(
    job: ExplainJob, engine: Engine | None = None, progress: bool | None = None
) -> tuple[int, int]:
    """Explain every image below ``job.data_dir`` not explained yet.

    Args:
        job: the settings.
        engine: :func:`local_explain_engine` by default, or
            :func:`sacam.evaluation.ray_engine.ray_explain_engine`.
        progress: a progress bar (None: on a terminal only).

    Returns:
        ``(images explained or skipped as done, failed (image, method) pairs)``.
    """
    items = list_images(job.data_dir)
    job.out.mkdir(parents=True, exist_ok=True)
    with RunLock(job.out) as lock:
        todo = [it for it in items if not all(p.exists() for p in job.outputs(it.name))]
        step = job.images_per_step
        chunks = [todo[i : i + step] for i in range(0, len(todo), step)]
        failed = 0
        bar = tqdm(total=len(todo), unit="img", desc="explaining", disable=_disabled(progress))

        def done(n: int, failures: list) -> None:
            nonlocal failed
            record_failures(job.out, failures)
            failed += len(failures)
            bar.update(n)

        try:
            if chunks:
                (engine or local_explain_engine)(job, chunks, done)
        finally:
            bar.close()
            lock.path.unlink(missing_ok=True)  # still held: no lock file is left behind
    return len(items), failed


def _disabled(progress: bool | None) -> bool | None:
    return None if progress is None else not progress


__all__ = [
    "ExplainJob",
    "Explainer",
    "explain_batch",
    "explain_folder",
    "list_images",
    "read_predictions",
]
