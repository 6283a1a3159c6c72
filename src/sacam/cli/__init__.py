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
import sys
from collections.abc import Sequence

from .. import __version__
from .._speed.allocator import keep_freed_memory
from ..errors import InputError, SacamError
from ..models import SAMPLE_IMAGES
from ..registry import list_methods, method_info, methods_table
from ._args import (
    EXIT_IMAGE,
    EXIT_USAGE,
    Parser,
    add_model_options,
    cmap,
    default_method,
    device_arg,
    int_at_least,
    out_dir,
    port,
    positive_float,
    unit_float,
)
from ._benchmark import add_benchmark_parser, add_engine_options, benchmark_command
from ._explain import explain_command

WEB_MODULES = {"fastapi", "starlette", "uvicorn", "multipart", "python_multipart", "pydantic"}


def _parser() -> argparse.ArgumentParser:
    """The ``sacam`` argument parser with its subcommands."""
    parser = Parser(
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
    add_model_options(ex)
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
        "--target", default=None, help="class index or class name, in any case (default: top-1)"
    )
    ex.add_argument(
        "--out", type=out_dir, default="sacam-out", help="output folder (default: sacam-out)"
    )
    ex.add_argument("--resize", choices=["crop", "squash"], default=None, help="image resize mode")
    ex.add_argument(
        "--images-per-step",
        type=int_at_least(1),
        default=8,
        help="images explained per step (default: 8)",
    )
    ex.add_argument("--cmap", type=cmap, default="jet", help="matplotlib colour map (default: jet)")
    ex.add_argument(
        "--alpha", type=unit_float, default=0.5, help="overlay opacity in [0, 1] (default: 0.5)"
    )
    ex.add_argument(
        "--device", type=device_arg, default="cpu", help="torch device: cpu, cuda, cuda:N, mps"
    )
    ex.add_argument(
        "--save-maps",
        action="store_true",
        help="folder mode: also write each map (float16 .npy) beside its overlay",
    )
    ex.add_argument(
        "--workers",
        type=int_at_least(1),
        default=None,
        help="folder mode with --engine ray: Ray workers",
    )
    add_engine_options(ex)

    add_benchmark_parser(sub)

    srv = sub.add_parser(
        "serve", help="serve a local web page to explain images (needs the 'serve' extra)"
    )
    srv.add_argument("--host", default="127.0.0.1", help="address (default: 127.0.0.1)")
    srv.add_argument(
        "--port", type=port, default=8000, help="TCP port, 0 for a free one (default: 8000)"
    )
    add_model_options(srv)
    srv.add_argument(
        "--device", type=device_arg, default="cpu", help="torch device: cpu, cuda, cuda:N, mps"
    )
    srv.add_argument(
        "--max-upload-mb",
        type=positive_float,
        default=20.0,
        help="largest upload in MB (default: 20)",
    )
    srv.add_argument(
        "--max-queue",
        type=int_at_least(1),
        default=8,
        help="requests that may wait for the model; more get 429 (default: 8)",
    )
    srv.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="another host name the page may be reached by (repeatable; "
        "localhost, 127.0.0.1 and the --host address always are)",
    )

    meth = sub.add_parser("methods", help="list the registered CAM methods")
    meth.add_argument("--markdown", action="store_true", help="print the README's Markdown table")
    return parser


def entry(argv: Sequence[str] | None = None) -> int:
    """The ``sacam`` command's process: glibc keeps freed memory (not for ``serve``), then main.

    A process of many forward passes reuses freed pages instead of faulting fresh ones
    in (:func:`sacam.keep_freed_memory`). :func:`main` itself changes nothing
    process-wide, so a script or a test may call it in its own process.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] != ["serve"]:  # the web app's model thread gained nothing (performance.md)
        keep_freed_memory()
    return main(args)


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
            return benchmark_command(args)
        if args.command == "serve":
            return _serve(args)
        return explain_command(args)
    except InputError as exc:
        print(f"sacam: error: {exc}", file=sys.stderr)
        return EXIT_IMAGE
    except SacamError as exc:
        print(f"sacam: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _serve(args: argparse.Namespace) -> int:
    """Run ``sacam serve`` (a clear error when the web extra is missing)."""
    try:
        from ..serve import serve
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
            max_queue=args.max_queue,
            allowed_hosts=args.allowed_host,
        )
    except KeyboardInterrupt:  # pragma: no cover - Ctrl+C
        pass
    return 0


__all__ = ["main"]
