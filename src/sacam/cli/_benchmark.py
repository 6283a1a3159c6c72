"""``sacam benchmark``: its options, its runs (one, or a preset's), and running them."""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SacamError

if TYPE_CHECKING:
    from ..evaluation.config import BenchmarkConfig
    from ..evaluation.ray_engine import RayOptions

from ._args import (
    EXIT_INTERRUPTED,
    add_list_option,
    add_method_options,
    add_model_options,
    device_arg,
    existing_file_path,
    install_hint,
    int_at_least,
    model_source,
    out_dir,
    positive_float,
    unit_float,
)
from ._benchmark_tasks import add_benchmark_task_options, apply_task_options, print_task_summary
from ._demo import SAMPLES, data_source, demo_labels, write_demo_set
from ._model import add_preprocess_options, read_class_names


def add_benchmark_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``benchmark`` subcommand and its options to ``sub``."""
    from ..evaluation.registry import list_metrics

    bench = sub.add_parser(
        "benchmark", help="score methods with the evaluation metrics on a folder"
    )
    bench.add_argument(
        "data_dir",
        type=data_source,
        help="images: a folder with labels.csv (file,class_index), class sub-folders "
        "(WordNet ids, class indices or --class-names), or ImageNet val with LOC_val_solution.csv; "
        "'samples': a built-in demo set of 4 labelled photos (no download)",
    )
    add_model_options(bench)
    add_preprocess_options(bench)  # --class-names, --size, --mean, --std as in explain
    add_method_options(bench, "grad-cam grad-cam++ sa-cam; with --from-maps: the saved ones")
    add_list_option(
        bench,
        "metric",
        "METRIC",
        f"metric: {', '.join(list_metrics())}; 'default' or 'all' (default: default; "
        "with --preset: the preset's)",
        choices=[*list_metrics(), "default", "all"],
    )
    _add_run_options(bench)
    _add_metric_settings(bench)
    add_benchmark_task_options(bench)
    add_engine_options(bench)


def _add_run_options(bench: argparse.ArgumentParser) -> None:
    """The run's scope and machine: preset, images, output folder, device, steps, workers."""
    from ..evaluation.presets import PRESETS

    bench.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="a protocol of several runs, one sub-folder of --out per setting (paper: every "
        "method, 4 model/layer settings, faithfulness + stability + grid pointing)",
    )
    bench.add_argument(
        "--preset-settings",
        nargs="+",
        default=None,
        metavar="SETTING",
        help="run only these settings of --preset (e.g. lite0-blocks15)",
    )
    bench.add_argument(
        "--limit", type=int_at_least(1), default=None, help="first N images of the folder"
    )
    bench.add_argument("--out", type=out_dir, default=Path("sacam-benchmark"), help="output folder")
    bench.add_argument(
        "--device", type=device_arg, default="cpu", help="cpu, cuda or cuda:N (default: cpu)"
    )
    bench.add_argument(
        "--images-per-step",
        type=int_at_least(1),
        default=16,
        help="images explained and scored per step (default: 16)",
    )
    bench.add_argument(
        "--workers",
        type=int_at_least(0),
        default=None,
        help="image decoding threads (default: 4); with --engine ray: Ray workers (actors; "
        "default: as many as the cluster's CPUs, or GPUs with --gpus-per-worker, allow)",
    )
    bench.add_argument("--seed", type=int, default=0, help="seed of every random choice")


def _add_metric_settings(bench: argparse.ArgumentParser) -> None:
    """The settings of single metrics (curve steps, attacks, grid pointing) and of maps."""
    bench.add_argument(
        "--steps",
        type=int_at_least(1),
        default=None,
        help="deletion/insertion steps (default: image width)",
    )
    bench.add_argument(
        "--annotations", type=existing_file_path, default=None, help="boxes/masks CSV or JSON"
    )
    bench.add_argument(
        "--iterations",
        type=int_at_least(1),
        default=100,
        help="attack steps of explanation_attack (default: 100)",
    )
    bench.add_argument(
        "--epsilons",
        type=positive_float,
        nargs="+",
        default=None,
        metavar="EPS",
        help="ε sweep of adversarial and explanation_attack, in units of 1/255 "
        "(default: 0.5 1 2 4 8)",
    )
    bench.add_argument(
        "--adv-iterations",
        type=int_at_least(1),
        default=10,
        help="PGD steps of the adversarial examples (metric adversarial; default: 10)",
    )
    bench.add_argument(
        "--use-labels", action="store_true", help="explain the labelled class, not the top-1"
    )
    bench.add_argument(
        "--grid-threshold", type=unit_float, default=0.99, help="grid pointing: min. softmax"
    )
    bench.add_argument(
        "--save-maps", action="store_true", help="keep every map (float16) in OUT/maps/"
    )
    bench.add_argument(
        "--from-maps", type=Path, default=None, metavar="DIR", help="score maps saved in DIR"
    )


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--engine`` and the Ray options (address, GPUs and CPUs per worker)."""
    parser.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help=f"local: this process; ray: Ray Data actors ({install_hint('ray')})",
    )
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster (auto or HOST:PORT; default: start a local Ray for the run)",
    )
    parser.add_argument(
        "--gpus-per-worker", type=float, default=0.0, help="GPUs per Ray worker (default: 0)"
    )
    parser.add_argument(
        "--cpus-per-worker",
        type=float,
        default=1.0,
        help="CPUs (and torch threads) per Ray worker (default: 1)",
    )


def ray_engine_options(args: argparse.Namespace) -> RayOptions | None:
    """The Ray options of ``--engine ray`` (None for the local engine); checks them."""
    if args.engine != "ray":
        for flag, value, default in (
            ("--address", args.address, None),
            ("--gpus-per-worker", args.gpus_per_worker, 0.0),
            ("--cpus-per-worker", args.cpus_per_worker, 1.0),
        ):
            if value != default:
                raise SacamError(f"{flag} needs --engine ray")
        return None
    if args.workers is not None and args.workers < 1:
        raise SacamError(f"--workers must be at least 1 with --engine ray, got {args.workers}")
    if args.gpus_per_worker < 0 or args.cpus_per_worker <= 0:
        raise SacamError("--gpus-per-worker must be 0 or more and --cpus-per-worker above 0")
    from ..evaluation.ray_engine import RayOptions, require_ray

    require_ray()
    return RayOptions(args.address, args.workers, args.gpus_per_worker, args.cpus_per_worker)


def _benchmark_config(args: argparse.Namespace) -> BenchmarkConfig:
    """The run the arguments describe (``--methods`` or, from saved maps, theirs)."""
    from ..evaluation.config import BenchmarkConfig
    from ..evaluation.runner.maps import MapReader

    threads = 4 if args.workers is None or args.engine == "ray" else args.workers
    data_dir = args.data_dir
    if data_dir == SAMPLES:
        data_dir = write_demo_set(args.out / "samples")
        print(f"demo set: {len(demo_labels())} labelled sample photos in {data_dir}/")
    config = BenchmarkConfig(
        data_dir=data_dir,
        out=args.out,
        **model_source(args),
        limit=args.limit,
        steps=args.steps,
        annotations=args.annotations,
        iterations=args.iterations,
        adv_iterations=args.adv_iterations,
        use_labels=args.use_labels,
        grid_threshold=args.grid_threshold,
        metrics=list(args.metrics or ["default"]),
        device=args.device,
        images_per_step=args.images_per_step,
        workers=threads,
        seed=args.seed,
        save_maps=args.save_maps,
        from_maps=args.from_maps,
        layer=args.layers,
        image_size=args.size,
        mean=None if args.mean is None else tuple(args.mean),
        std=None if args.std is None else tuple(args.std),
        class_names=read_class_names(args.class_names),
    )
    if args.epsilons is not None:
        config.epsilons = tuple(dict.fromkeys(e / 255 for e in args.epsilons))
    for method, key, value in args.method_option:
        config.method_options.setdefault(method, {})[key] = value
    if args.methods:
        config.methods = list(dict.fromkeys(args.methods))
    elif args.from_maps is not None:
        config.methods = MapReader(args.from_maps).methods()
    apply_task_options(args, config)
    return config


def _benchmark_runs(args: argparse.Namespace) -> list[BenchmarkConfig]:
    """The run of the arguments, or the runs of ``--preset``."""
    if args.preset is None:
        if args.preset_settings is not None:
            raise SacamError("--preset-settings needs --preset")
        return [_benchmark_config(args)]
    from ..evaluation.presets import expand_preset

    if args.from_maps is not None:
        raise SacamError("--from-maps scores one run's maps: it does not combine with --preset")
    given = [f for f in ("class_names", "mean", "std") if getattr(args, f) is not None]
    if given:
        flags = ", ".join("--" + f.replace("_", "-") for f in given)
        raise SacamError(
            f"--preset {args.preset} uses its own models with their own preprocessing and "
            f"class names: drop {flags} (or run without --preset)"
        )
    base = _benchmark_config(args)
    return expand_preset(
        args.preset,
        base,
        methods=list(dict.fromkeys(args.methods)) if args.methods else None,
        metrics=args.metrics,
        only=args.preset_settings,
    )


def time_line(summary: dict[str, Any], wall_s: float) -> str:
    """Where this command's time went: maps, each metric and the rest, adding up to the wall.

    With the run's clock (``summary["timing"]``, this command's own seconds) it is three
    lines: the wall time as maps + the rest, the rest part by part (each metric, predicting,
    loading, writing, and what no part timed), and the same per image processed. Without
    it, the maps' seconds come from the summary's time column.
    """
    timing = summary.get("timing") or {}
    methods = len(summary["table"]) or 1
    if timing.get("seconds"):
        return _clock_lines(timing, wall_s, methods)
    images = int(summary["settings"]["images"]) or 1
    maps_s = sum(
        mean * images
        for t in summary["table"].values()
        if math.isfinite(mean := t.get("time_s", {}).get("mean", math.nan))
    )
    if maps_s > wall_s:  # a resumed run: most maps were made by an earlier command
        return (
            f"time: {wall_s:.1f} s for this command (resumed); the maps of all "
            f"{images} image(s) took {maps_s:.1f} s when they were made"
        )
    return (
        f"time: {wall_s:.1f} s = {maps_s:.1f} s computing maps (the time column, per image "
        f"and method) + {wall_s - maps_s:.1f} s loading, predicting, scoring the metrics and "
        f"writing; {wall_s / images:.2f} s per image for {methods} method(s)"
    )


def _clock_lines(timing: dict[str, Any], wall_s: float, methods: int) -> str:
    """The three lines of :func:`time_line` from the run's clock."""
    from ..evaluation.runner.clock import ENGINE, MAPS, METRIC

    seconds: dict[str, float] = dict(timing["seconds"])
    on_engine = ENGINE in seconds and MAPS not in seconds
    first = ENGINE if on_engine else "computing maps"
    maps_s = seconds.pop(ENGINE if on_engine else MAPS, 0.0)
    metrics = {k.removeprefix(METRIC): v for k, v in seconds.items() if k.startswith(METRIC)}
    others = {k: v for k, v in seconds.items() if not k.startswith(METRIC)}
    other_s = max(0.0, wall_s - maps_s - sum(seconds.values()))
    parts = [f"{v:.1f} s {k}" for k, v in metrics.items()]
    parts += [f"{v:.1f} s {k}" for k, v in others.items()]
    parts.append(f"{other_s:.1f} s other (waiting for decoded images, progress bars)")
    n = int(timing.get("images", 0))
    lines = [
        f"time: {wall_s:.1f} s = {maps_s:.1f} s {first} + {wall_s - maps_s:.1f} s the "
        f"rest, for {n} image(s) × {methods} method(s) computed by this command",
        "the rest: " + "; ".join(parts),
    ]
    if n:
        rest_s = wall_s - maps_s - sum(metrics.values())
        each = [f"{maps_s / n:.3f} s {first}"]
        each += [f"{v / n:.3f} s {k}" for k, v in metrics.items()]
        each.append(f"{rest_s / n:.3f} s loading, predicting, writing and other")
        lines.append(f"per image: {wall_s / n:.3f} s = " + " + ".join(each))
    return "\n".join(lines)


def benchmark_command(args: argparse.Namespace) -> int:
    """Run ``sacam benchmark`` (each preset run in turn); returns the exit code."""
    from ..evaluation.runner import render_markdown, run_benchmark

    options = ray_engine_options(args)
    configs = _benchmark_runs(args)
    engine = None
    if options is not None:
        from ..evaluation.ray_engine import ray_engine

        engine = ray_engine(options)
    for config in configs:
        if len(configs) > 1:
            print(f"== {config.out.name}: model {config.model}, layer {config.layer or 'auto'}")
        print(
            f"benchmark of {', '.join(config.methods)} on {config.data_dir}: loading the model "
            "and the images, predicting, then explaining and scoring (figures and report last)",
            flush=True,
        )
        start = time.perf_counter()
        try:
            summary = run_benchmark(config, engine=engine)
        except KeyboardInterrupt:
            print(
                f"sacam: interrupted; finished results are kept in {config.out}/: run the same "
                "command again to resume",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
        if config.task != "classification":
            print_task_summary(summary, str(config.out), time.perf_counter() - start)
            continue
        print(render_markdown(summary))
        print(time_line(summary, time.perf_counter() - start))
        print(
            f"wrote results.csv, summary.md, summary.json, figures and report.html to {config.out}/"
        )
    return 0
