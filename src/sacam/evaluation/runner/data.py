"""The images of a run: three folder layouts, validated, and decoded ahead of the model.

Layouts of ``DATA_DIR`` (the first that applies):

1. ``labels.csv`` with columns ``file,class_index`` (more columns allowed): files are paths
   relative to the folder;
2. ``LOC_val_solution.csv`` (ImageNet's validation layout, ``ImageId,PredictionString``):
   images ``<ImageId>.JPEG`` in the folder, in ``val/`` or in ``ILSVRC/Data/CLS-LOC/val/``;
   the label is the first box's WordNet id, and the boxes of that class feed the pointing
   games;
3. class sub-folders (torchvision's ImageFolder): folder names are WordNet ids
   (``n01440764``) or class indices (``0``, ``17``); images anywhere below them.

With the model's class names given (``--class-names``), a ``class_index`` cell or a
class folder may also name its class, in any case (``tabby``, ``Tabby``).

Every row is validated; a bad one raises :class:`~sacam.errors.InputError` naming the file
and the line.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import torch

from ...errors import InputError
from ...images import load_image
from ...models import imagenet_classes
from ...preprocess import Preprocess
from ..localization import Annotation, Box

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
_WNID = re.compile(r"^n\d{8}$")
_VAL_FOLDERS = (".", "val", "ILSVRC/Data/CLS-LOC/val")


@dataclass(frozen=True)
class Item:
    """One image of the run: its name in the results, path, label and source line."""

    name: str
    path: Path
    label: int
    where: str


@dataclass
class Dataset:
    """The images of a run, their layout and the annotations the layout carries."""

    items: list[Item]
    layout: str
    annotations: dict[str, Annotation] = field(default_factory=dict)


def discover(
    data_dir: Path, limit: int | None = None, class_names: Sequence[str] | None = None
) -> Dataset:
    """Find and validate the images of ``data_dir`` (see the module docstring).

    ``class_names`` lets ``labels.csv`` and class folders name classes by these names.
    """
    if not data_dir.is_dir():
        raise InputError(f"DATA_DIR {data_dir} is not a folder")
    if (data_dir / "labels.csv").is_file():
        ds = Dataset(read_labels_csv(data_dir, class_names), "labels.csv")
    elif (data_dir / "LOC_val_solution.csv").is_file():
        items, boxes = read_imagenet_val(data_dir)
        ds = Dataset(items, "imagenet-val", boxes)
    else:
        ds = Dataset(read_class_folders(data_dir, class_names), "class folders")
    if limit is not None:
        ds.items = ds.items[:limit]
    return ds


def check_labels(items: list[Item], n_classes: int) -> None:
    """Raise InputError naming the first item whose label the model does not have."""
    for item in items:
        if n_classes and item.label >= n_classes:
            raise InputError(
                f"{item.where}: class_index {item.label} is out of range: the model has "
                f"{n_classes} classes (0..{n_classes - 1})"
            )


def _decode_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(
            f"{path} line {line} is not UTF-8 text ({data.splitlines()[line - 1]!r}): "
            "save the file as UTF-8"
        ) from None


def _safe_name(data_dir: Path, file: str, where: str) -> str:
    """The file's normalised relative name; refuses absolute paths and ``..`` escapes."""
    posix = file.replace("\\", "/")
    parts = PurePosixPath(posix).parts
    if not posix or posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
        raise InputError(f"{where}: file {file!r} is not a path relative to DATA_DIR")
    depth = 0
    for part in parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            raise InputError(
                f"{where}: file {file!r} is outside DATA_DIR ({data_dir}); list paths "
                "relative to the folder, inside it"
            )
    return os.path.normpath(posix).replace(os.sep, "/")


def _named_class(text: str, names: Sequence[str] | None) -> int | None:
    """The index of the class named ``text`` (any case) among ``names``, or None."""
    key = text.strip().casefold()
    return next((i for i, n in enumerate(names or ()) if n.strip().casefold() == key), None)


def _class_index(text: str, where: str, names: Sequence[str] | None = None) -> int:
    value = text.strip()
    if re.fullmatch(r"\+?\d+", value):
        return int(value)
    named = _named_class(value, names)
    if named is not None:
        return named
    if names:
        raise InputError(
            f"{where}: class_index {text!r} is neither a class index (0, 1, ...) nor one of "
            f"the {len(names)} class names (e.g. {names[0]!r})"
        )
    raise InputError(f"{where}: class_index {text!r} is not a class index (an integer 0, 1, ...)")


def read_labels_csv(data_dir: Path, class_names: Sequence[str] | None = None) -> list[Item]:
    """Rows of ``labels.csv``: UTF-8 (a BOM is fine), columns ``file,class_index``."""
    path = data_dir / "labels.csv"
    reader = csv.reader(io.StringIO(_decode_text(path), newline=""))
    header = [h.strip() for h in next(reader, [])]
    if "file" not in header or "class_index" not in header:
        raise InputError(f"{path} needs the columns file,class_index (its header: {header})")
    fi, ci = header.index("file"), header.index("class_index")
    items: list[Item] = []
    seen: dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        where = f"{path} line {line} ({','.join(row)})"
        if len(row) <= max(fi, ci):
            raise InputError(f"{where}: the row needs a file and a class_index")
        name = _safe_name(data_dir, row[fi].strip(), where)
        if name in seen:
            raise InputError(f"{where}: {name} is listed twice (first on line {seen[name]})")
        seen[name] = line
        label = _class_index(row[ci], where, class_names)
        items.append(Item(name, data_dir / name, label, where))
    if not items:
        raise InputError(f"{path} lists no images")
    return items


def _wnid_index() -> dict[str, int]:
    return {wnid: i for i, (wnid, _) in enumerate(imagenet_classes())}


def read_class_folders(data_dir: Path, class_names: Sequence[str] | None = None) -> list[Item]:
    """Images in class sub-folders named by WordNet id, class index or class name."""
    folders = sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise InputError(
            f"{data_dir} holds no labels.csv, no LOC_val_solution.csv and no class "
            "sub-folders: add a labels.csv with columns file,class_index"
        )
    wnids = _wnid_index()
    items: list[Item] = []
    for folder in folders:
        where = f"{data_dir}: folder {folder.name!r}"
        if _WNID.match(folder.name):
            if folder.name not in wnids:
                raise InputError(f"{where} is not an ImageNet-1k WordNet id")
            label = wnids[folder.name]
        elif folder.name.isdigit():
            label = int(folder.name)
        elif (named := _named_class(folder.name, class_names)) is not None:
            label = named
        else:
            by_name = " or by one of the --class-names" if class_names else ""
            raise InputError(
                f"{where}: class folders are named by WordNet id (n01440764) or class index "
                f"(0){by_name}"
            )
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        for p in files:
            name = p.relative_to(data_dir).as_posix()
            items.append(Item(name, p, label, f"{where}, {name}"))
    if not items:
        raise InputError(f"{data_dir}: the class folders hold no images")
    return items


def _val_folder(data_dir: Path, first: str) -> Path:
    for sub in _VAL_FOLDERS:
        if (data_dir / sub / f"{first}.JPEG").is_file():
            return data_dir / sub
    return data_dir


def _parse_boxes(text: str, where: str) -> list[tuple[str, Box]]:
    tokens = text.split()
    if not tokens or len(tokens) % 5:
        raise InputError(f"{where}: PredictionString needs groups of 'wnid x0 y0 x1 y1'")
    out = []
    for k in range(0, len(tokens), 5):
        try:
            coords = tuple(float(t) for t in tokens[k + 1 : k + 5])
        except ValueError:
            bad = tokens[k + 1 : k + 5]
            raise InputError(f"{where}: box coordinates {bad} are not numbers") from None
        out.append((tokens[k], coords))
    return out  # type: ignore[return-value]


def read_imagenet_val(data_dir: Path) -> tuple[list[Item], dict[str, Annotation]]:
    """ImageNet's validation layout: labels and boxes from ``LOC_val_solution.csv``."""
    path = data_dir / "LOC_val_solution.csv"
    reader = csv.reader(io.StringIO(_decode_text(path), newline=""))
    header = [h.strip() for h in next(reader, [])]
    if header[:2] != ["ImageId", "PredictionString"]:
        raise InputError(f"{path} needs the columns ImageId,PredictionString")
    wnids = _wnid_index()
    rows: list[tuple[str, int, list[Box], str]] = []
    for row in reader:
        if not row:
            continue
        where = f"{path} line {reader.line_num}"
        image_id = row[0].strip()
        _safe_name(data_dir, image_id, where)
        boxes = _parse_boxes(row[1] if len(row) > 1 else "", where)
        wnid = boxes[0][0]
        if wnid not in wnids:
            raise InputError(f"{where}: {wnid!r} is not an ImageNet-1k WordNet id")
        rows.append((image_id, wnids[wnid], [b for w, b in boxes if w == wnid], where))
    if not rows:
        raise InputError(f"{path} lists no images")
    rows.sort()
    folder = _val_folder(data_dir, rows[0][0])
    items, annotations = [], {}
    for image_id, label, kept, where in rows:
        name = f"{image_id}.JPEG"
        items.append(Item(name, folder / name, label, where))
        annotations[name] = Annotation(kept)
    return items, annotations


@dataclass
class Loaded:
    """A decoded batch: the readable items, their pixels and sizes, and the failures."""

    items: list[Item]
    pixels: torch.Tensor
    sizes: list[tuple[int, int]]
    failed: list[tuple[Item, str]]

    def part(self, names: set[str]) -> Loaded:
        """The images named in ``names``, as a batch of its own.

        Always a new object with its own lists (a method's step may edit the batch it
        scores, and the next method scores the same decoded images); the pixels are this
        batch's own tensor when every readable image is kept.
        """
        keep = [i for i, it in enumerate(self.items) if it.name in names]
        return Loaded(
            [self.items[i] for i in keep],
            self.pixels if len(keep) == len(self.items) else self.pixels[keep],
            [self.sizes[i] for i in keep],
            [(it, error) for it, error in self.failed if it.name in names],
        )


def _decode(item: Item, pre: Preprocess) -> tuple[torch.Tensor, tuple[int, int]]:
    image = load_image(item.path)
    return pre.pixels(image), image.size


def _collect(chunk: list[Item], futures: list[Future], pre: Preprocess, pin: bool) -> Loaded:
    good, pixels, sizes, failed = [], [], [], []
    for item, fut in zip(chunk, futures, strict=True):
        try:
            px, size = fut.result()
        except (InputError, OSError, ValueError) as exc:
            failed.append((item, f"{type(exc).__name__}: {exc}".replace("\n", " ")))
            continue
        good.append(item)
        pixels.append(px)
        sizes.append(size)
    stacked = torch.stack(pixels) if pixels else torch.empty(0, 3, pre.size, pre.size)
    return Loaded(good, stacked.pin_memory() if pin else stacked, sizes, failed)


def batches(
    items: list[Item],
    pre: Preprocess,
    batch_size: int,
    workers: int,
    depth: int = 2,
    pin_memory: bool = False,
) -> Iterator[Loaded]:
    """Decoded batches of ``items``, ``depth`` batches decoded ahead by ``workers`` threads.

    Decoding (PIL releases the GIL while it decodes and resizes) overlaps the model's
    work on the previous batch. Unreadable images are reported in ``failed``, not raised.
    ``pin_memory`` pins each batch so that its copy to a GPU runs asynchronously.
    """
    chunks = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="sacam-decode")
    pending: deque[tuple[list[Item], list[Future]]] = deque()
    try:
        for chunk in chunks[: depth + 1]:
            pending.append((chunk, [pool.submit(_decode, it, pre) for it in chunk]))
        nxt = len(pending)
        while pending:
            chunk, futures = pending.popleft()
            if nxt < len(chunks):
                pending.append((chunks[nxt], [pool.submit(_decode, it, pre) for it in chunks[nxt]]))
                nxt += 1
            yield _collect(chunk, futures, pre, pin_memory)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
