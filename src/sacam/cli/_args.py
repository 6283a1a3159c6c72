"""Argument types and shared options of the ``sacam`` command line (one-line errors, exit 2)."""

from __future__ import annotations

import argparse
import ast
import difflib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from ..errors import ModelError
from ..models import check_device
from ..registry import get_method, list_methods

EXIT_USAGE = 2
EXIT_IMAGE = 3
EXIT_INTERRUPTED = 130


def default_method() -> str:
    """The default method of the command line and of :func:`sacam.explain`: SA-CAM."""
    return "sa-cam"


def install_hint(extra: str) -> str:
    """The ``pip install`` line for an optional extra, fit for how sacam was installed.

    A source checkout installed in editable mode is told ``pip install -e ".[extra]"``;
    an installed wheel ``pip install "sacam[extra]"``.
    """
    import json
    from importlib import metadata

    try:
        text = metadata.distribution("sacam").read_text("direct_url.json")
        editable = bool(json.loads(text or "{}").get("dir_info", {}).get("editable"))
    except (metadata.PackageNotFoundError, ValueError, AttributeError):
        editable = False
    return f'pip install -e ".[{extra}]"' if editable else f'pip install "sacam[{extra}]"'


class Parser(argparse.ArgumentParser):
    """argparse with sacam's one-line errors (``sacam: error: ...``, exit 2).

    Options are matched by their full names only (no prefixes), so ``--method`` can never
    be read as an ambiguous prefix of ``--methods`` or ``--method-option``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        """Print one line and exit with the usage code."""
        print(f"sacam: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an int of at least ``low``."""

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


def _number(text: str) -> float:
    """``float(text)``, or the argparse error that says it is not a number."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def unit_float(text: str) -> float:
    """An argparse type: a float in [0, 1]."""
    value = _number(text)
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} is outside [0, 1]")
    return value


def device_arg(text: str) -> str:
    """An argparse type: a torch device this machine has (cpu, cuda, cuda:N, mps)."""
    try:
        check_device(text)
    except ModelError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def port(text: str) -> int:
    """An argparse type: a TCP port, 0 (any free one) to 65535."""
    value = int_at_least(0)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (0..65535)")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite float above 0."""
    value = _number(text)
    if not 0.0 < value < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def cmap(text: str) -> str:
    """An argparse type: a matplotlib colour map name (the closest ones named if not)."""
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


def out_dir(text: str) -> Path:
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


def method_option(text: str) -> tuple[str, str, Any]:
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


def existing_file(text: str) -> str:
    """An argparse type: the path of an existing file, as given."""
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text!r}")
    return text


def existing_file_path(text: str) -> Path:
    """An argparse type: the path of an existing file, as a Path."""
    return Path(existing_file(text))


def existing_dir(text: str) -> Path:
    """An argparse type: the path of an existing folder."""
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"no such folder: {text!r}")
    return path


def add_list_option(
    parser: argparse.ArgumentParser,
    name: str,
    metavar: str,
    help: str,
    choices: list[str] | None = None,
    dest: str | None = None,
) -> None:
    """``--NAME X`` (repeatable) and ``--NAMEs X Y ...``: one list, either form, any mix."""
    dest = dest or f"{name}s".replace("-", "_")
    common: dict[str, Any] = {"dest": dest, "default": None, "metavar": metavar}
    if choices is not None:
        common["choices"] = choices
    parser.add_argument(f"--{name}", action="append", help=f"{help} (repeatable)", **common)
    parser.add_argument(
        f"--{name}s", action="extend", nargs="+", help="the same, several at once", **common
    )


def add_method_options(parser: argparse.ArgumentParser, default: str) -> None:
    """``--method``/``--methods`` and ``--method-option``, the same in every subcommand."""
    add_list_option(
        parser,
        "method",
        "METHOD",
        f"CAM method; one of: {', '.join(list_methods())} (default: {default})",
        choices=list_methods(),
    )
    parser.add_argument(
        "--method-option",
        action="append",
        type=method_option,
        default=[],
        metavar="METHOD:KEY=VALUE",
        help="an option of one method, e.g. sa-cam:temperature=5 (repeatable; values are "
        "Python literals, else strings; 'sacam methods NAME' lists a method's options)",
    )
    add_list_option(
        parser,
        "layer",
        "LAYER",
        "layer every method explains (dotted name; default: each method's automatic choice)",
    )


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The model-loading options every subcommand that loads a model shares."""
    parser.add_argument(
        "--model", default=None, help="model name, .pt2/TorchScript file, or pkg.mod:factory"
    )
    parser.add_argument(
        "--weights",
        type=existing_file,
        default=None,
        help="state dict for the --model architecture",
    )
    parser.add_argument(
        "--trust-model-file",
        action="store_true",
        help="allow a model file that runs code while loading (TorchScript, pickles)",
    )


def add_dense_options(parser: argparse.ArgumentParser, *, layout: bool = True) -> None:
    """How a YOLO-style detector's dense output reads: box format, objectness, layout.

    ``layout=False`` leaves out ``--dense-layout`` (the web app reads the layout itself).
    """
    parser.add_argument(
        "--box-format",
        choices=["xywh", "xyxy"],
        default="xywh",
        help="detection, YOLO-style output: the box columns, centre and size (xywh, the "
        "default) or corners (xyxy)",
    )
    parser.add_argument(
        "--objectness",
        action="store_true",
        help="detection, YOLO-style output: a column after the box holds objectness (YOLOv5)",
    )
    if layout:
        parser.add_argument(
            "--dense-layout",
            choices=["auto", "bnd", "bdn"],
            default="auto",
            help="detection, YOLO-style output: (B, N, D) rows or (B, D, N) (default: auto)",
        )


def method_options(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """``--method-option`` as ``{method: {key: value}}``; ``--activation`` for every method."""
    options: dict[str, dict[str, Any]] = {}
    for method, key, value in args.method_option:
        options.setdefault(method, {})[key] = value
    if getattr(args, "activation", None) is not None:
        for method in args.methods or [default_method()]:
            options.setdefault(method, {}).setdefault("activation", args.activation)
    return options


def layer_of(args: argparse.Namespace) -> str | list[str] | None:
    """``--layers`` as the ``layer`` argument: None, one name, or a list of several."""
    layers: list[str] | None = args.layers
    return layers if layers is None or len(layers) > 1 else layers[0]


def model_source(args: argparse.Namespace) -> dict[str, Any]:
    """Where the model comes from, as keywords: ``model``, ``weights``, ``trust_model_file``."""
    return {
        "model": args.model,
        "weights": args.weights,
        "trust_model_file": args.trust_model_file,
    }
