"""Throughput of ``sacam benchmark`` against a bare loop over the model doing the same work.

Usage:

    python benchmarks/throughput.py ../shared/data/imagenet-dev --limit 48
    python benchmarks/throughput.py --synthetic 48 --device cuda --images-per-step 64

Two measurements, in one process, on the same machine:

1. **Curves.** Deletion + insertion of ``--limit`` images (``--steps`` points each) as
   forward passes per second, against the model's own forward throughput at the same
   batch size and memory format (the plan ``curve_inputs_per_pass="auto"`` picks). Goal: ≥ 70%.
2. **Runner.** ``run_benchmark`` with ``--methods`` (default grad-cam, sa-cam) and the
   metrics confidence + deletion + insertion, images/s over the whole run (decoding,
   predictions, maps, metrics, results, summary; figures and report timed apart), against
   the forward floor: a bare loop over decoded tensors doing the same model work (one
   prediction forward, the method's map, the two confidence forwards and the
   2 × (steps + 1) perturbed forwards per image, at the same batch sizes). Goal: runner
   overhead ≤ 10%. A table shows where the last warm runner run spent its wall time
   (preparation, waiting for decoded batches, predictions, maps and metrics, writing
   results, summary).

The curves' tuned batch plan is kept on disk (``SACAM_CACHE_DIR``; this script points it
at a fresh temporary folder, never the user's cache): the curve measurement above tunes
it, so the timed runner runs start from it as any later run on the machine does. One
extra runner run with an empty cache (``--cold``, on by default) shows what the first run
on a machine pays for the tuning.

Wall time and the process's CPU time are both reported: on a machine shared with other
work, wall time swings with the neighbours' load, while CPU time counts this process's
own work (decoding threads included). With several torch threads, CPU time also counts
threads spinning at a barrier while a sibling waits for a core, so on a busy machine use
``--threads 1`` for a CPU-time comparison that only counts work.

Prints a Markdown table, the machine and the command.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sacam.api import build_method
from sacam.evaluation import BenchmarkConfig, faithfulness, run_benchmark
from sacam.evaluation.runner import execution
from sacam.evaluation.runner.data import batches, discover
from sacam.evaluation.runner.state import Run
from sacam.models import LoadedModel, load_model


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def synthetic_folder(root: Path, n: int) -> Path:
    """``n`` random 320×256 JPEGs with a labels.csv (class = index mod 1000)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = ["file,class_index"]
    for i in range(n):
        arr = (rng.random((256, 320, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(root / f"img{i:05d}.jpg", quality=90)
        rows.append(f"img{i:05d}.jpg,{i % 1000}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def curve_throughput(
    model: torch.nn.Module, x: torch.Tensor, steps: int, device: str, repeat: int
) -> dict:
    """Perturbed forward passes/s of deletion + insertion against plain forwards/s.

    Both are timed ``repeat`` times, interleaved; the best of each is kept (on a shared
    machine the best run is the least disturbed one).
    """
    classes = torch.zeros(x.shape[0], dtype=torch.long, device=device)
    maps = torch.rand(x.shape[0], *x.shape[-2:], device=device)
    step = faithfulness.step_size(x.shape[-2], x.shape[-1], steps)
    faithfulness.curve(model, x, torch.zeros_like(x), maps, classes, step, "auto")  # tunes
    plan = faithfulness.tuned_plan(model, x)
    fmt = torch.channels_last if plan.channels_last else torch.contiguous_format
    batch = x[:1].expand(plan.inputs_per_pass, -1, -1, -1).contiguous(memory_format=fmt)
    passes = x.shape[0] * 2 * (steps + 1)
    n_batches = math.ceil(passes / plan.inputs_per_pass)
    floor, rate, floor_cpu, rate_cpu = 0.0, 0.0, 0.0, 0.0
    with torch.inference_mode():
        model(batch)
    for _ in range(repeat):
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            for _ in range(n_batches):
                model(batch)
        _sync(device)
        floor = max(floor, n_batches * plan.inputs_per_pass / (time.perf_counter() - t0))
        floor_cpu = max(floor_cpu, n_batches * plan.inputs_per_pass / (time.process_time() - c0))
        t0, c0 = time.perf_counter(), time.process_time()
        faithfulness.curve(model, x, torch.zeros_like(x), maps, classes, step, "auto")
        faithfulness.curve(model, x, x.flip(-1), maps, classes, step, "auto")
        _sync(device)
        rate = max(rate, passes / (time.perf_counter() - t0))
        rate_cpu = max(rate_cpu, passes / (time.process_time() - c0))
    return {
        "batch": plan.inputs_per_pass,
        "floor": floor,
        "curves": rate,
        "ratio": rate / floor,
        "ratio_cpu": rate_cpu / floor_cpu,
    }


def bare_loop(
    lm: LoadedModel, xs: list[torch.Tensor], methods: list[str], steps: int, device: str
) -> tuple[float, float]:
    """(wall, CPU) seconds of the same model work as the runner, over decoded tensors."""
    plan = faithfulness.tuned_plan(lm.model, xs[0])
    fmt = torch.channels_last if plan.channels_last else torch.contiguous_format
    perturbed = xs[0][:1].expand(plan.inputs_per_pass, -1, -1, -1).contiguous(memory_format=fmt)
    cams = {m: build_method(lm.model, m) for m in methods}
    n_images = sum(x.shape[0] for x in xs)
    curve_passes = math.ceil(n_images * 2 * (steps + 1) / plan.inputs_per_pass)
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        classes = [lm.model(x).argmax(1) for x in xs]
    for m in methods:
        for x, c in zip(xs, classes, strict=True):
            maps = cams[m](x, c)
            with torch.inference_mode():
                lm.model(x)
                lm.model(x * maps[:, None])
        with torch.inference_mode():
            for _ in range(curve_passes):
                lm.model(perturbed)
    _sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


PHASES = {
    "_prepare": "prepare (data, model, settings)",
    "predict_batch": "predictions (each batch's new images)",
    "batches": "methods: waiting for decoded batches",
    "score_batch": "methods: maps and metrics",
    "record": "methods: writing results",
    "summarize": "summary",
}


def _timed(name: str, fn: Any, phases: dict[str, float]) -> Any:
    """``fn`` adding its wall seconds to ``phases[name]`` (a generator: the waits for items)."""

    def plain(*a: Any, **k: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - t0

    def waits(*a: Any, **k: Any) -> Any:
        it = iter(fn(*a, **k))
        while True:
            t0 = time.perf_counter()
            item = next(it, None)
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - t0
            if item is None:
                return
            yield item

    return waits if inspect.isgeneratorfunction(fn) else plain


def runner(
    data: Path, args: argparse.Namespace, out: Path
) -> tuple[float, float, float, dict[str, float]]:
    """(wall and CPU seconds of the run without figures and report, wall s of those, phases).

    The phases are the wall seconds spent in :data:`PHASES`' steps of the runner (on a
    GPU, a step that reads a result back also waits for the device's queued work).
    """
    timed: dict[str, float] = {}
    phases: dict[str, float] = {}
    real = execution.write_report
    originals = {name: getattr(execution, name) for name in PHASES}

    def report(run: Run, summary: dict[str, Any]) -> None:
        t0, c0 = time.perf_counter(), time.process_time()
        real(run, summary)
        timed["report"] = time.perf_counter() - t0
        timed["report_cpu"] = time.process_time() - c0

    execution.write_report = report
    for name, fn in originals.items():
        setattr(execution, name, _timed(name, fn, phases))
    cfg = BenchmarkConfig(
        data_dir=data,
        out=out,
        methods=args.methods,
        metrics=["confidence", "deletion", "insertion"],
        limit=args.limit,
        steps=args.steps,
        device=args.device,
        images_per_step=args.images_per_step,
        workers=args.workers,
    )
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        run_benchmark(cfg, progress=False)
    finally:
        execution.write_report = real
        for name, fn in originals.items():
            setattr(execution, name, fn)
    wall = time.perf_counter() - t0 - timed["report"]
    return wall, time.process_time() - c0 - timed["report_cpu"], timed["report"], phases


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("data_dir", nargs="?", type=Path)
    p.add_argument("--synthetic", type=int, default=None, help="generate N images instead")
    p.add_argument("--limit", type=int, default=48)
    p.add_argument("--methods", nargs="+", default=["grad-cam", "sa-cam"])
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--images-per-step", type=int, default=16)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeat", type=int, default=2, help="timed runs of each; the best counts")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument(
        "--no-cold", dest="cold", action="store_false", help="skip the run with an empty cache"
    )
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sacam-throughput-"))
    os.environ["SACAM_CACHE_DIR"] = str(tmp / "cache")  # never the user's plan cache
    if args.threads:
        torch.set_num_threads(args.threads)
    data = args.data_dir or synthetic_folder(tmp / "data", args.synthetic or args.limit)
    lm = load_model(device=args.device)
    items = discover(data, args.limit).items
    loaded = list(batches(items, lm.preprocess, args.images_per_step, args.workers))
    xs = [lm.preprocess.normalize(b.pixels.to(args.device)) for b in loaded]
    n = sum(x.shape[0] for x in xs)
    c = curve_throughput(lm.model, torch.cat(xs), args.steps, args.device, args.repeat)
    floor_s = floor_cpu = run_s = run_cpu = math.inf
    report_s = 0.0
    phases: dict[str, float] = {}
    pairs = []
    for k in range(args.repeat):  # interleaved; the best of each
        wall, cpu = bare_loop(lm, xs, args.methods, args.steps, args.device)
        floor_s, floor_cpu = min(floor_s, wall), min(floor_cpu, cpu)
        r_wall, r_cpu, report_s, phases = runner(data, args, tmp / f"out{k}")
        run_s, run_cpu = min(run_s, r_wall), min(run_cpu, r_cpu)
        pairs.append((wall, cpu, r_wall, r_cpu))
    cold = None
    if args.cold:  # a first run on the machine: an empty plan cache, so it tunes
        os.environ["SACAM_CACHE_DIR"] = str(tmp / "cold-cache")
        cold = runner(data, args, tmp / "out-cold")[:2]
        os.environ["SACAM_CACHE_DIR"] = str(tmp / "cache")
    images = n * len(args.methods)
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, device {args.device}"
    )
    print(f"command: python {' '.join(sys.argv)}")
    print(
        f"\n{n} images × {len(args.methods)} methods ({', '.join(args.methods)}), "
        f"confidence + deletion + insertion, {args.steps} steps, batch {args.images_per_step}, "
        f"best of {args.repeat} interleaved runs (plan cache warm; see the cold row)\n"
    )
    print("| measurement | value |\n|---|---|")
    print(f"| model forward floor at batch {c['batch']} | {c['floor']:.1f} images/s |")
    print(
        f"| deletion + insertion curves | {c['curves']:.1f} forward passes/s "
        f"({100 * c['ratio']:.0f}% of the floor; by CPU time {100 * c['ratio_cpu']:.0f}%; "
        "goal ≥ 70%) |"
    )
    print(
        f"| bare loop (forward floor of the protocol) | {images / floor_s:.2f} image-methods/s "
        f"({floor_s:.1f} s) |"
    )
    print(
        f"| sacam benchmark, without figures/report | {images / run_s:.2f} image-methods/s "
        f"({run_s:.1f} s) |"
    )
    print(f"| runner overhead, wall time | {100 * (run_s / floor_s - 1):+.1f}% (goal ≤ 10%) |")
    print(
        f"| runner overhead, CPU time of the process | {100 * (run_cpu / floor_cpu - 1):+.1f}% "
        f"({run_cpu:.1f} s against {floor_cpu:.1f} s) |"
    )
    if cold is not None:
        print(
            f"| first run on the machine (empty plan cache: tunes the curves), overhead | "
            f"wall {100 * (cold[0] / floor_s - 1):+.1f}%, "
            f"CPU {100 * (cold[1] / floor_cpu - 1):+.1f}% "
            f"({cold[0]:.1f} s, {cold[1]:.1f} s CPU) |"
        )
    print(f"| figures + report.html (once per run) | {report_s:.1f} s |")
    print("\nWhere the last warm runner run spent its wall time (seconds):\n")
    print("| phase | s |\n|---|---|")
    for name, label in PHASES.items():
        print(f"| {label} | {phases.get(name, 0.0):.2f} |")
    print("\nInterleaved pairs (bare loop, runner; seconds):\n")
    print(
        "| run | bare wall | bare CPU | runner wall | runner CPU | overhead wall | overhead CPU |"
    )
    print("|---|---|---|---|---|---|---|")
    for k, (fw, fc, rw, rc) in enumerate(pairs, 1):
        print(
            f"| {k} | {fw:.1f} | {fc:.1f} | {rw:.1f} | {rc:.1f} | {100 * (rw / fw - 1):+.1f}% | "
            f"{100 * (rc / fc - 1):+.1f}% |"
        )


if __name__ == "__main__":
    main()
