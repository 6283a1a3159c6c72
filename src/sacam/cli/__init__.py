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
from ..registry import list_methods, methods_table
from ._args import (
    EXIT_IMAGE,
    EXIT_USAGE,
    Parser,
    add_model_options,
    device_arg,
    install_hint,
    int_at_least,
    model_source,
    port,
    positive_float,
)
from ._benchmark import add_benchmark_parser, benchmark_command
from ._explain import add_explain_parser, explain_command
from ._methods import methods_text
from ._tasks import add_serve_task_options, serve_task_options

WEB_MODULES = {"fastapi", "starlette", "uvicorn", "multipart", "python_multipart", "pydantic"}


def _parser() -> argparse.ArgumentParser:
    """The ``sacam`` argument parser with its subcommands."""
    parser = Parser(
        prog="sacam", description="Class activation maps for CNN classifiers, with SA-CAM."
    )
    parser.add_argument("--version", action="version", version=f"sacam {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    add_explain_parser(sub)
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
    add_serve_task_options(srv)

    meth = sub.add_parser("methods", help="list the registered CAM methods, or one's options")
    meth.add_argument(
        "name",
        nargs="?",
        choices=list_methods(),
        metavar="NAME",
        help="a method: print its options with their defaults",
    )
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
        print(methods_table() if args.markdown else methods_text(args.name))
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
            f"{install_hint('serve')}"
        ) from None
    try:
        serve(
            **model_source(args),
            device=args.device,
            host=args.host,
            port=args.port,
            max_upload_mb=args.max_upload_mb,
            max_queue=args.max_queue,
            allowed_hosts=args.allowed_host,
            **serve_task_options(args),
        )
    except KeyboardInterrupt:  # pragma: no cover - Ctrl+C
        pass
    return 0


__all__ = ["main"]
