"""The model of a ``sacam`` command: your own (``--model pkg.mod:factory``) included."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

from ..errors import InputError, ModelError
from ..models import LoadedModel, load_model
from ._args import existing_file, int_at_least, positive_float


def add_preprocess_options(parser: argparse.ArgumentParser) -> None:
    """``--class-names``, ``--size``, ``--mean`` and ``--std`` for a model of your own."""
    parser.add_argument(
        "--class-names",
        type=existing_file,
        default=None,
        metavar="FILE",
        help="text file of class names, one per line in class-index order (default: the "
        "ImageNet names for 1000-class models)",
    )
    parser.add_argument(
        "--size",
        type=int_at_least(1),
        default=None,
        help="side in pixels of the model's input (default: the model's own, else 224)",
    )
    parser.add_argument(
        "--mean",
        type=float,
        nargs=3,
        default=None,
        metavar=("R", "G", "B"),
        help="per-channel mean of [0, 1] pixels (default: the model's own, else ImageNet's)",
    )
    parser.add_argument(
        "--std",
        type=positive_float,
        nargs=3,
        default=None,
        metavar=("R", "G", "B"),
        help="per-channel standard deviation (default: the model's own, else ImageNet's)",
    )


def read_class_names(path: str | None) -> list[str] | None:
    """The class names of ``--class-names`` (blank lines and surrounding spaces dropped)."""
    if path is None:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the class names in {path}: {exc}") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise InputError(f"{path} holds no class names: write one per line")
    return names


def _import_path(spec: str | None) -> None:
    """Put the working folder on the import path for ``module:factory``, as ``python -m``."""
    if spec is None or ":" not in spec or spec.startswith(("torchvision:", "timm:")):
        return
    if Path(spec).exists():
        return
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def cli_model(args: argparse.Namespace) -> LoadedModel:
    """Load the model the arguments name, warn on random weights, apply preprocessing."""
    _import_path(args.model)
    try:
        loaded = load_model(
            args.model,
            weights=args.weights,
            device=getattr(args, "device", "cpu"),
            trust_model_file=args.trust_model_file,
            class_names=read_class_names(getattr(args, "class_names", None)),
            size=getattr(args, "size", None),
            resize=getattr(args, "resize", None),
        )
    except ModelError as exc:
        if str(exc).startswith("cannot import"):
            raise ModelError(
                f"{exc}; run sacam in the folder that holds the module, or add that folder "
                "to PYTHONPATH"
            ) from None
        raise
    changes = {k: tuple(v) for k in ("mean", "std") if (v := getattr(args, k, None)) is not None}
    if changes:
        loaded = replace(loaded, preprocess=replace(loaded.preprocess, **changes))  # type: ignore[arg-type]
    if loaded.info.get("weights") == "random":
        print(
            f"sacam: warning: {loaded.name} has random weights (no --weights given): its "
            "predictions and maps are those of an untrained network",
            file=sys.stderr,
        )
    return loaded
