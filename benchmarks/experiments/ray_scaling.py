"""Images/s of ``sacam benchmark`` on Ray with 1 and 2 workers against the local engine.

Usage:

    pip install -e ".[ray]"
    python benchmarks/experiments/ray_scaling.py ../shared/data/imagenet-dev --limit 12
    python benchmarks/experiments/ray_scaling.py --synthetic 64 --gpus 1     # one worker per GPU

Every engine runs the same job (``--methods``, default the default method set
grad-cam grad-cam++ sa-cam; default metrics confidence, deletion, insertion, complexity
with ``--steps`` points) into a fresh folder, with one torch thread per worker (the local
engine: one thread in this process). Timed: the engine's part of the run (explaining and
scoring every missing pair and writing the rows), not the predictions, summary or report,
which the driver does alike for both. Ray's own start (``ray.init``) is outside the timing;
each Ray run includes starting its actors and loading one model per actor.

Prints a Markdown table (images/s, ratio to the local engine measured in the same run),
the per-image cost of each method's map (``time_s``), and the cost model
``images × seconds per image / workers`` for ImageNet-val (50,000 images).
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/

from throughput import synthetic_folder  # noqa: E402

from sacam.evaluation import BenchmarkConfig, run_benchmark  # noqa: E402
from sacam.evaluation.config import DEFAULT_METHODS  # noqa: E402
from sacam.evaluation.runner.execution import Engine, local_engine  # noqa: E402
from sacam.evaluation.runner.state import Run  # noqa: E402

IMAGENET_VAL = 50_000


def timed(engine: Engine, seconds: list[float]) -> Engine:
    def run(r: Run) -> None:
        t0 = time.perf_counter()
        engine(r)
        seconds.append(time.perf_counter() - t0)

    return run


def map_times(out: Path) -> dict[str, float]:
    per: dict[str, list[float]] = defaultdict(list)
    with (out / "results.csv").open() as f:
        for r in csv.DictReader(f):
            if r["metric"] == "time_s":
                per[r["method"]].append(float(r["value"]))
    return {m: sum(v) / len(v) for m, v in per.items()}


def _parse() -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", nargs="?", type=Path, help="a benchmark folder (labels.csv, ...)")
    ap.add_argument("--synthetic", type=int, default=0, help="generate N random images instead")
    ap.add_argument("--limit", type=int, default=12)
    ap.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    ap.add_argument("--steps", type=int, default=16, help="deletion/insertion points")
    ap.add_argument("--images-per-step", type=int, default=4)
    ap.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--gpus", type=float, default=0.0, help="GPUs per worker (0: CPU)")
    return ap.parse_args()


def main() -> None:
    """Time the engines and print the tables."""
    args = _parse()
    import ray

    from sacam.evaluation.ray_engine import RayOptions, ray_engine

    tmp = Path(tempfile.mkdtemp(prefix="sacam-ray-"))
    data = args.data or synthetic_folder(tmp / "data", args.synthetic or args.limit)
    root = Path(__file__).resolve().parents[2]
    env = {"PYTHONPATH": os.pathsep.join([str(root), str(root / "src")])}
    ray.init(include_dashboard=False, logging_level=logging.WARNING, runtime_env={"env_vars": env})
    device = "cuda" if args.gpus > 0 else "cpu"

    def config(name: str) -> BenchmarkConfig:
        return BenchmarkConfig(
            data_dir=data,
            out=tmp / name,
            methods=args.methods,
            limit=args.limit,
            steps=args.steps,
            images_per_step=args.images_per_step,
            device=device,
        )

    rows = []
    seconds: list[float] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    run_benchmark(config("local"), progress=False, engine=timed(local_engine, seconds))
    torch.set_num_threads(threads)
    n = args.limit
    local_s = seconds[-1]
    rows.append(("local (1 thread)", n / local_s, 1.0))
    for w in args.workers:
        opts = RayOptions(workers=w, gpus_per_worker=args.gpus, cpus_per_worker=1)
        run_benchmark(config(f"ray{w}"), progress=False, engine=timed(ray_engine(opts), seconds))
        rows.append((f"ray, {w} worker(s)", n / seconds[-1], local_s / seconds[-1]))
    ray.shutdown()
    maps = map_times(tmp / "local")
    shutil.rmtree(tmp, ignore_errors=True)

    _report(args, device, ray.__version__, rows, local_s, maps)


def _report(
    args: argparse.Namespace,
    device: str,
    ray_version: str,
    rows: list[tuple[str, float, float]],
    local_s: float,
    maps: dict[str, float],
) -> None:
    """Print the machine, the engines' table, per-image costs and the ImageNet-val estimate."""
    n = args.limit
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, ray {ray_version}, device {device}"
    )
    print(
        f"{n} images × {', '.join(args.methods)}; default metrics, steps {args.steps}, "
        f"batch {args.images_per_step}\n"
    )
    print("| engine | images/s | × local |\n|---|---|---|")
    for name, ips, ratio in rows:
        print(f"| {name} | {ips:.3f} | {ratio:.2f} |")
    per_image = local_s / n
    print(
        "\nper image (local engine, 1 thread): "
        f"{per_image:.2f} s in all; maps: " + ", ".join(f"{m} {t:.3f} s" for m, t in maps.items())
    )
    print("\nImageNet-val (50,000 images), images × s/image / workers:\n")
    print("| workers | hours |\n|---|---|")
    for w in (1, 8, 64):
        print(f"| {w} | {IMAGENET_VAL * per_image / w / 3600:.1f} |")
    print(f"\ncommand: python benchmarks/experiments/ray_scaling.py {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
