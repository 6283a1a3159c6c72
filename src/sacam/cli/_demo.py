"""``sacam benchmark samples``: a small labelled set built from the photos sacam ships."""

from __future__ import annotations

import argparse
import csv
from importlib import resources
from pathlib import Path

from ..errors import InputError
from ._args import existing_dir

SAMPLES = "samples"


def demo_labels() -> list[tuple[str, int, str]]:
    """The demo set's ``(skimage.data name, ImageNet class index, class name)`` rows."""
    text = resources.files("sacam").joinpath("data/demo_images.tsv").read_text("utf-8")
    rows = [line.split("\t") for line in text.splitlines() if line and not line.startswith("#")]
    return [(name, int(index), cls) for name, index, cls, *_ in rows]


def data_source(text: str) -> Path | str:
    """An argparse type: a data folder, or ``samples`` (the built-in demo set)."""
    if text == SAMPLES and not Path(text).is_dir():
        return SAMPLES
    try:
        return existing_dir(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"no such folder: {text!r} (or name 'samples' for the built-in demo set)"
        ) from None


def write_demo_set(folder: Path) -> Path:
    """Write the demo photos (PNG) and their ``labels.csv`` to ``folder``; returns it.

    Files already there are kept, so a rerun writes nothing.
    """
    import skimage.data
    from PIL import Image

    try:
        folder.mkdir(parents=True, exist_ok=True)
        rows = [("file", "class_index", "class_name")]
        for name, index, cls in demo_labels():
            path = folder / f"{name}.png"
            if not path.exists():
                tmp = folder / f".{name}.png.tmp"
                Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(tmp, "PNG")
                tmp.replace(path)
            rows.append((path.name, str(index), cls))
        with (folder / "labels.csv").open("w", encoding="utf-8", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows(rows)
    except OSError as exc:
        raise InputError(f"cannot write the demo set to {folder}: {exc}") from None
    return folder
