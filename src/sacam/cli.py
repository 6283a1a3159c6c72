"""The ``sacam`` command line.

``sacam explain [IMAGES...]`` explains images (the scikit-image sample photos by default)
with the default pretrained model, prints each image's top-5 classes and writes overlay
PNGs; ``sacam explain DIR`` explains a whole folder (an overlay, with ``--save-maps`` a
map, per image; ``--engine ray`` on Ray actors). ``sacam benchmark DATA_DIR`` scores
methods with the metrics (``--engine ray`` likewise). ``sacam methods`` lists the
registered methods. ``sacam serve`` runs the web page (with the ``serve`` extra).

Exit codes: 0 success; 2 bad arguments (unknown method, layer, target, model or metric, a
value out of range, an unavailable device), checked before any work; 3 unreadable input
(an image, a data folder without labels, a bad labels.csv row, or an output folder
another benchmark is writing to); 130 a benchmark stopped by Ctrl-C (its finished results
are kept; the same command resumes). ``explain`` goes on with the other images when one
cannot be read, reports it on one line, and exits 3 at the end.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import torch
from tqdm import tqdm

from . import __version__
from ._outputs import to_logits
from .api import build_method
from .errors import InputError, ModelError, SacamError
from .models import SAMPLE_IMAGES, LoadedModel, check_device, load_image, load_model
from .registry import get_method, list_methods, method_info, methods_table
from .viz import overlay, save_grid

if TYPE_CHECKING:
    from .evaluation.config import BenchmarkConfig
    from .evaluation.ray_engine import RayOptions

EXIT_USAGE = 2
EXIT_IMAGE = 3
EXIT_INTERRUPTED = 130
GRID_ROWS = 8
WEB_MODULES = {"fastapi", "starlette", "uvicorn", "multipart", "python_multipart", "pydantic"}


def default_method() -> str:
    """SA-CAM when it is registered, else Grad-CAM."""
    return "sa-cam" if "sa-cam" in list_methods() else "grad-cam"


class _Parser(argparse.ArgumentParser):
    """argparse with sacam's one-line errors (``sacam: error: ...``, exit 2)."""

    def error(self, message: str) -> NoReturn:
        """Print one line and exit with the usage code."""
        print(f"sacam: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum of {low}")
        return value

    parse.__name__ = "whole number"
    return parse


def _unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} is outside [0, 1]")
    return value


def _device(text: str) -> str:
    try:
        check_device(text)
    except ModelError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _port(text: str) -> int:
    value = _int_at_least(0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (0..65535)")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _cmap(text: str) -> str:
    import matplotlib

    names = sorted(n for n in matplotlib.colormaps if not n.endswith("_r"))
    if text in matplotlib.colormaps:
        return text
    close = difflib.get_close_matches(text, names, n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise argparse.ArgumentTypeError(
        f"unknown colour map {text!r}; {hint}matplotlib's maps: {', '.join(names)} "
        "(each also reversed with _r)"
    )


def _out_dir(text: str) -> Path:
    """A folder that exists and is writable, or that can be created."""
    path = Path(text)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        what = "is a file" if probe == path else f"lies under the file {probe}"
        raise argparse.ArgumentTypeError(f"{text!r} {what}; name a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text!r} cannot be written: {probe} is not writable")
    return path


def _method_option(text: str) -> tuple[str, str, Any]:
    """``METHOD:KEY=VALUE`` -> (method, key, value), the option checked against the method."""
    method, sep, rest = text.partition(":")
    key, eq, raw = rest.partition("=")
    if not sep or not eq or not key:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not METHOD:KEY=VALUE (e.g. sa-cam:temperature=5)"
        )
    if method not in list_methods():
        raise argparse.ArgumentTypeError(
            f"unknown method {method!r}; one of: {', '.join(list_methods())}"
        )
    allowed = get_method(method).option_names()
    if key not in allowed:
        raise argparse.ArgumentTypeError(
            f"method {method!r} has no option {key!r}; it accepts: {', '.join(allowed)}"
        )
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return method, key, value


def _existing_file(text: str) -> str:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    return text


def _existing_file_path(text: str) -> Path:
    return Path(_existing_file(text))


def _existing_dir(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"no such folder: {text!r}")
    return path


def _model_options(parser: argparse.ArgumentParser) -> None:
    """The model-loading options every subcommand that loads a model shares."""
    parser.add_argument(
        "--model", default=None, help="model name, .pt2/TorchScript file, or pkg.mod:factory"
    )
    parser.add_argument(
        "--weights",
        type=_existing_file,
        default=None,
        help="state dict for the --model architecture",
    )
    parser.add_argument(
        "--trust-model-file",
        action="store_true",
        help="allow a model file that runs code while loading (TorchScript, pickles)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sacam", description="Class activation maps for CNN classifiers, with SA-CAM."
    )
    parser.add_argument("--version", action="version", version=f"sacam {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    ex = sub.add_parser("explain", help="explain images and write overlay PNGs")
    ex.add_argument(
        "images",
        nargs="*",
        help="image files; 'sample:NAME' for a scikit-image photo; none: the sample photos "
        f"({', '.join(SAMPLE_IMAGES)})",
    )
    _model_options(ex)
    ex.add_argument(
        "--method",
        action="append",
        choices=list_methods(),
        metavar="METHOD",
        help=f"CAM method, repeat for a comparison grid; one of: {', '.join(list_methods())} "
        f"(default: {default_method()})",
    )
    ex.add_argument(
        "--layer", action="append", help="target layer (dotted name; repeat for several)"
    )
    ex.add_argument(
        "--target", default=None, help="class index or exact class name (default: top-1)"
    )
    ex.add_argument(
        "--out", type=_out_dir, default="sacam-out", help="output folder (default: sacam-out)"
    )
    ex.add_argument("--resize", choices=["crop", "squash"], default=None, help="image resize mode")
    ex.add_argument(
        "--batch-size", type=_int_at_least(1), default=8, help="images per batch (default: 8)"
    )
    ex.add_argument(
        "--cmap", type=_cmap, default="jet", help="matplotlib colour map (default: jet)"
    )
    ex.add_argument(
        "--alpha", type=_unit_float, default=0.5, help="overlay opacity in [0, 1] (default: 0.5)"
    )
    ex.add_argument(
        "--device", type=_device, default="cpu", help="torch device: cpu, cuda, cuda:N, mps"
    )
    ex.add_argument(
        "--save-maps",
        action="store_true",
        help="folder mode: also write each map (float16 .npy) beside its overlay",
    )
    ex.add_argument(
        "--workers",
        type=_int_at_least(1),
        default=None,
        help="folder mode with --engine ray: Ray workers",
    )
    _engine_options(ex)

    _benchmark_parser(sub)

    srv = sub.add_parser(
        "serve", help="serve a local web page to explain images (needs the 'serve' extra)"
    )
    srv.add_argument("--host", default="127.0.0.1", help="address (default: 127.0.0.1)")
    srv.add_argument(
        "--port", type=_port, default=8000, help="TCP port, 0 for a free one (default: 8000)"
    )
    _model_options(srv)
    srv.add_argument(
        "--device", type=_device, default="cpu", help="torch device: cpu, cuda, cuda:N, mps"
    )
    srv.add_argument(
        "--max-upload-mb",
        type=_positive_float,
        default=20.0,
        help="largest upload in MB (default: 20)",
    )

    meth = sub.add_parser("methods", help="list the registered CAM methods")
    meth.add_argument("--markdown", action="store_true", help="print the README's Markdown table")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.command == "methods":
        if args.markdown:
            print(methods_table())
            return 0
        names = list_methods()
        width = max(map(len, names))
        papers = min(34, max(len(method_info(n).paper) for n in names))
        for name in names:
            info = method_info(name)
            print(f"{name:{width}s}  {info.paper:{papers}s}  {info.description}")
        return 0
    try:
        if args.command == "benchmark":
            return _benchmark(args)
        if args.command == "serve":
            return _serve(args)
        return _explain(args)
    except InputError as exc:
        print(f"sacam: error: {exc}", file=sys.stderr)
        return EXIT_IMAGE
    except SacamError as exc:
        print(f"sacam: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _benchmark_parser(sub: argparse._SubParsersAction) -> None:
    from .evaluation.presets import PRESETS
    from .evaluation.registry import list_metrics

    bench = sub.add_parser(
        "benchmark", help="score methods with the evaluation metrics on a folder"
    )
    bench.add_argument(
        "data_dir",
        type=_existing_dir,
        help="images: a folder with labels.csv (file,class_index), class sub-folders "
        "(WordNet ids or class indices), or ImageNet val with LOC_val_solution.csv",
    )
    _model_options(bench)
    bench.add_argument(
        "--methods",
        nargs="+",
        choices=list_methods(),
        metavar="METHOD",
        default=None,
        help="methods to compare (default: grad-cam grad-cam++ sa-cam; with --from-maps: "
        "the saved ones)",
    )
    bench.add_argument(
        "--layer",
        action="append",
        default=None,
        help="layer every method explains (dotted name; repeat for several; default: each "
        "method's automatic choice)",
    )
    bench.add_argument(
        "--method-option",
        action="append",
        type=_method_option,
        default=[],
        metavar="METHOD:KEY=VALUE",
        help="an option of one method, e.g. sa-cam:temperature=5 or score-cam:batch_size=64 "
        "(repeatable; values are Python literals, else strings)",
    )
    bench.add_argument(
        "--metrics",
        nargs="+",
        default=None,
        choices=[*list_metrics(), "default", "all"],
        metavar="METRIC",
        help=f"metrics: {', '.join(list_metrics())}; 'default' or 'all' (default: default; "
        "with --preset: the preset's)",
    )
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
        "--limit", type=_int_at_least(1), default=None, help="first N images of the folder"
    )
    bench.add_argument(
        "--out", type=_out_dir, default=Path("sacam-benchmark"), help="output folder"
    )
    bench.add_argument(
        "--device", type=_device, default="cpu", help="cpu, cuda or cuda:N (default: cpu)"
    )
    bench.add_argument(
        "--batch-size",
        type=_int_at_least(1),
        default=16,
        help="images explained per step (default: 16)",
    )
    bench.add_argument(
        "--workers",
        type=_int_at_least(0),
        default=None,
        help="image decoding threads (default: 4); with --engine ray: Ray workers (actors; "
        "default: as many as the cluster's CPUs, or GPUs with --gpus-per-worker, allow)",
    )
    bench.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    bench.add_argument(
        "--steps",
        type=_int_at_least(1),
        default=None,
        help="deletion/insertion steps (default: image width)",
    )
    bench.add_argument(
        "--annotations", type=_existing_file_path, default=None, help="boxes/masks CSV or JSON"
    )
    bench.add_argument("--attacks", nargs="+", default=["pgd"], choices=["random", "pgd", "topk"])
    bench.add_argument(
        "--iterations",
        type=_int_at_least(1),
        default=100,
        help="attack steps of stability and explanation_attack (default: 100)",
    )
    bench.add_argument(
        "--epsilons",
        type=_positive_float,
        nargs="+",
        default=None,
        metavar="EPS",
        help="ε sweep of adversarial and explanation_attack, in units of 1/255 "
        "(default: 0.5 1 2 4 8)",
    )
    bench.add_argument(
        "--adv-iterations",
        type=_int_at_least(1),
        default=10,
        help="PGD steps of the adversarial examples (metric adversarial; default: 10)",
    )
    bench.add_argument(
        "--use-labels", action="store_true", help="explain the labelled class, not the top-1"
    )
    bench.add_argument(
        "--grid-threshold", type=_unit_float, default=0.99, help="grid pointing: min. softmax"
    )
    bench.add_argument(
        "--save-maps", action="store_true", help="keep every map (float16) in OUT/maps/"
    )
    bench.add_argument(
        "--from-maps", type=Path, default=None, metavar="DIR", help="score maps saved in DIR"
    )
    _engine_options(bench)


def _engine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help='local: this process; ray: Ray Data actors (pip install -e ".[ray]")',
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


def _ray_engine_options(args: argparse.Namespace) -> RayOptions | None:
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
    from .evaluation.ray_engine import RayOptions, require_ray

    require_ray()
    return RayOptions(args.address, args.workers, args.gpus_per_worker, args.cpus_per_worker)


def _benchmark_config(args: argparse.Namespace) -> BenchmarkConfig:
    from .evaluation.config import BenchmarkConfig
    from .evaluation.runner.maps import MapReader

    threads = 4 if args.workers is None or args.engine == "ray" else args.workers
    config = BenchmarkConfig(
        data_dir=args.data_dir,
        out=args.out,
        model=args.model,
        weights=args.weights,
        trust_model_file=args.trust_model_file,
        limit=args.limit,
        steps=args.steps,
        annotations=args.annotations,
        attacks=tuple(args.attacks),
        iterations=args.iterations,
        adv_iterations=args.adv_iterations,
        use_labels=args.use_labels,
        grid_threshold=args.grid_threshold,
        metrics=list(args.metrics or ["default"]),
        device=args.device,
        batch_size=args.batch_size,
        workers=threads,
        seed=args.seed,
        save_maps=args.save_maps,
        from_maps=args.from_maps,
        layer=args.layer,
    )
    if args.epsilons is not None:
        config.epsilons = tuple(dict.fromkeys(e / 255 for e in args.epsilons))
    for method, key, value in args.method_option:
        config.method_options.setdefault(method, {})[key] = value
    if args.methods:
        config.methods = list(dict.fromkeys(args.methods))
    elif args.from_maps is not None:
        config.methods = MapReader(args.from_maps).methods()
    return config


def _benchmark_runs(args: argparse.Namespace) -> list[BenchmarkConfig]:
    """The run of the arguments, or the runs of ``--preset``."""
    if args.preset is None:
        if args.preset_settings is not None:
            raise SacamError("--preset-settings needs --preset")
        return [_benchmark_config(args)]
    from .evaluation.presets import expand_preset

    if args.from_maps is not None:
        raise SacamError("--from-maps scores one run's maps: it does not combine with --preset")
    base = _benchmark_config(args)
    return expand_preset(
        args.preset,
        base,
        methods=list(dict.fromkeys(args.methods)) if args.methods else None,
        metrics=args.metrics,
        only=args.preset_settings,
    )


def _benchmark(args: argparse.Namespace) -> int:
    from .evaluation.runner import render_markdown, run_benchmark

    options = _ray_engine_options(args)
    configs = _benchmark_runs(args)
    engine = None
    if options is not None:
        from .evaluation.ray_engine import ray_engine

        engine = ray_engine(options)
    for config in configs:
        if len(configs) > 1:
            print(f"== {config.out.name}: model {config.model}, layer {config.layer or 'auto'}")
        try:
            summary = run_benchmark(config, engine=engine)
        except KeyboardInterrupt:
            print(
                f"sacam: interrupted; finished results are kept in {config.out}/: run the same "
                "command again to resume",
                file=sys.stderr,
            )
            return EXIT_INTERRUPTED
        print(render_markdown(summary))
        print(
            f"wrote results.csv, summary.md, summary.json, figures and report.html to {config.out}/"
        )
    return 0


def _explain_folder(args: argparse.Namespace) -> int:
    from .evaluation.explain_folder import ExplainJob, explain_folder

    options = _ray_engine_options(args)
    if options is None and args.workers is not None:
        raise SacamError("--workers needs --engine ray")
    methods = tuple(dict.fromkeys(args.method or [default_method()]))
    target = None
    if args.target is not None:
        loaded = load_model(
            args.model, weights=args.weights, trust_model_file=args.trust_model_file
        )
        target = _parse_target(args.target, loaded)
    job = ExplainJob(
        data_dir=Path(args.images[0]),
        out=Path(args.out),
        methods=methods,
        model=args.model,
        weights=args.weights,
        layer=args.layer if args.layer is None or len(args.layer) > 1 else args.layer[0],
        target=target,
        resize=args.resize,
        batch_size=args.batch_size,
        device=args.device,
        save_maps=args.save_maps,
        cmap=args.cmap,
        alpha=args.alpha,
        trust_model_file=args.trust_model_file,
    )
    engine = None
    if options is not None:
        from .evaluation.ray_engine import ray_explain_engine

        engine = ray_explain_engine(options)
    n, failed = explain_folder(job, engine)
    what = "overlays and maps" if args.save_maps else "overlays"
    print(f"{n} image(s) × {len(methods)} method(s): {what} in {job.out}/")
    if failed:
        print(f"{failed} failed (image, method) pair(s): see {job.out / 'failures.csv'}")
    return EXIT_IMAGE if failed else 0


def _serve(args: argparse.Namespace) -> int:
    try:
        from .serve import serve
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in WEB_MODULES:
            raise
        raise SacamError(
            f"sacam serve needs the web dependencies ({exc.name} is missing): "
            'pip install -e ".[serve]"'
        ) from None
    try:
        serve(
            args.model,
            weights=args.weights,
            trust_model_file=args.trust_model_file,
            device=args.device,
            host=args.host,
            port=args.port,
            max_upload_mb=args.max_upload_mb,
        )
    except KeyboardInterrupt:  # pragma: no cover - Ctrl+C
        pass
    return 0


def _parse_target(text: str | None, loaded: LoadedModel) -> int | None:
    if text is None:
        return None
    n = len(loaded.class_names)
    try:
        index = int(text)
    except ValueError:
        matches = [i for i, name in enumerate(loaded.class_names) if name.lower() == text.lower()]
        if not matches:
            raise SacamError(
                f"--target {text!r} is neither a class index nor a class name"
            ) from None
        return matches[0]
    if n and not 0 <= index < n:
        raise SacamError(
            f"--target {index} is out of range: the model has {n} classes (0..{n - 1})"
        )
    return index


def _image_names(sources: Sequence[str]) -> list[str]:
    names: list[str] = []
    for src in sources:
        stem = src.split(":", 1)[1] if src.startswith("sample:") else Path(src).stem
        name, k = stem, 1
        while name in names:
            k += 1
            name = f"{stem}-{k}"
        names.append(name)
    return names


def _write_pngs(
    args: argparse.Namespace,
    out: Path,
    names: list[str],
    pixels: list[torch.Tensor],
    maps: dict[str, torch.Tensor],
    titles: list[str],
) -> list[Path]:
    """Write one overlay per image and method, and comparison grids for several methods."""
    methods = list(maps)
    written: list[Path] = []
    for i, name in enumerate(names):
        for m in methods:
            path = out / f"{name}_{m}.png"
            overlay(pixels[i], maps[m][i], cmap=args.cmap, alpha=args.alpha).save(path)
            written.append(path)
    if len(methods) > 1:
        pages = range(0, len(names), GRID_ROWS)
        for page, start in enumerate(pages, start=1):
            rows = slice(start, start + GRID_ROWS)
            suffix = "" if len(pages) == 1 else f"-{page:02d}"
            written.append(
                save_grid(
                    pixels[rows],
                    {m: v[rows] for m, v in maps.items()},
                    out / f"comparison{suffix}.png",
                    titles=titles[rows],
                    cmap=args.cmap,
                    alpha=args.alpha,
                )
            )
    return written


def _explain(args: argparse.Namespace) -> int:
    if len(args.images) == 1 and Path(args.images[0]).is_dir():
        return _explain_folder(args)
    if args.engine == "ray" or args.save_maps:
        flag = "--engine ray" if args.engine == "ray" else "--save-maps"
        raise SacamError(f"{flag} explains a folder: pass one DIR of images")
    _ray_engine_options(args)  # refuses --address and the other Ray options
    if args.workers is not None:
        raise SacamError("--workers needs a folder (DIR) and --engine ray")
    sources = list(args.images) or [f"sample:{s}" for s in SAMPLE_IMAGES]
    methods = list(dict.fromkeys(args.method or [default_method()]))
    loaded = load_model(
        args.model,
        weights=args.weights,
        device=args.device,
        trust_model_file=args.trust_model_file,
    )
    if args.resize:
        from .models import with_preprocess

        loaded = with_preprocess(loaded, resize=args.resize)
    target = _parse_target(args.target, loaded)
    layer = args.layer if args.layer is None or len(args.layer) > 1 else args.layer[0]
    cams = {m: build_method(loaded.model, m, layer) for m in methods}
    pre = loaded.preprocess
    out: Path = args.out
    # each image is reduced to the model's input at once: only one decoded image is held
    pixels: list[torch.Tensor] = []
    readable: list[str] = []
    unreadable = 0
    for src in sources:
        try:
            pixels.append(pre.pixels(load_image(src, draft_size=(pre.size, pre.size))))
            readable.append(src)
        except InputError as exc:
            print(f"sacam: error: {exc}", file=sys.stderr)
            unreadable += 1
    if not pixels:
        return EXIT_IMAGE
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SacamError(f"cannot create the output folder {out}: {exc}") from None
    sources = readable
    names = _image_names(sources)
    all_maps: dict[str, list[torch.Tensor]] = {m: [] for m in methods}
    titles: list[str] = []
    bar = tqdm(total=len(pixels), unit="image", desc="explaining", disable=None)
    try:
        for start in range(0, len(pixels), args.batch_size):
            chunk = slice(start, start + args.batch_size)
            x = pre.normalize(torch.stack(pixels[chunk])).to(args.device)
            with torch.inference_mode():
                logits = to_logits(loaded.model(x))
            probs = torch.softmax(logits.float(), dim=1)
            top = probs.topk(min(5, probs.shape[1]), dim=1)
            targets = target if target is not None else top.indices[:, 0]
            for m, cam in cams.items():
                all_maps[m].append(cam(x, targets).cpu())
            for b, name in enumerate(names[chunk]):
                cls = int(targets if isinstance(targets, int) else targets[b])
                ranked = ", ".join(
                    f"{loaded.class_name(int(i))} ({p:.3f})"
                    for p, i in zip(top.values[b].tolist(), top.indices[b].tolist(), strict=True)
                )
                tqdm.write(f"{name}: top-5 {ranked}")
                titles.append(f"{name}: {loaded.class_name(cls)} {float(probs[b, cls]):.2f}")
            bar.update(len(names[chunk]))
    finally:
        bar.close()
    maps = {m: torch.cat(v) for m, v in all_maps.items()}
    try:
        written = _write_pngs(args, out, names, pixels, maps, titles)
    except OSError as exc:
        raise SacamError(f"cannot write to the output folder {out}: {exc}") from None
    print(f"model {loaded.name}, method(s) {', '.join(methods)}")
    print(f"wrote {len(written)} PNG file(s) to {out}/:")
    for path in written:
        print(f"  {path}")
    if unreadable:  # each was reported on its own line above
        return EXIT_IMAGE
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
