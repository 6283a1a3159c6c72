"""Files made by the tests: a huge blank PNG written without its pixels, and .pt2 archives."""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

import torch

from .nets import small_cnn


def blank_1bit_png(path: Path, width: int, height: int) -> None:
    """A valid, all-black 1-bit greyscale PNG of any size, written without the pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    row = b"\0" * (1 + (width + 7) // 8)  # filter type 0, then the packed bits
    z = zlib.compressobj(9)
    parts = []
    rows_per_step = max(1, (1 << 20) // len(row))
    for start in range(0, height, rows_per_step):
        parts.append(z.compress(row * min(rows_per_step, height - start)))
    parts.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", b"".join(parts))
        + chunk(b"IEND", b"")
    )


class TouchOnUnpickle:
    """A pickle payload that creates a marker file when it is unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def exported_cnn(path: Path) -> Path:
    net = small_cnn().eval()
    torch.export.save(torch.export.export(net, (torch.rand(1, 3, 16, 16),)), str(path))
    return path


def rewrite_archive(path: Path, change) -> None:
    """Rewrite the archive: ``change(files)`` edits a dict of relative name -> bytes."""
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        root = names[0].split("/", 1)[0] + "/"
        files = {n[len(root) :]: zf.read(n) for n in names}
    change(files)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            zf.writestr(root + name, data)


def pickled_weight(marker: Path):
    def change(files: dict[str, bytes]) -> None:
        config_name = "data/weights/model_weights_config.json"
        config = json.loads(files[config_name])
        entry = config["config"]["0.weight"]
        entry["use_pickle"] = True
        files[config_name] = json.dumps(config).encode()
        files["data/weights/" + entry["path_name"]] = pickle.dumps(TouchOnUnpickle(marker))

    return change


def pickled_sample_inputs(marker: Path):
    def change(files: dict[str, bytes]) -> None:
        files["data/sample_inputs/model.pt"] = pickle.dumps(TouchOnUnpickle(marker))

    return change
