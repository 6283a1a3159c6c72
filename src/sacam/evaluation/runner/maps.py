"""Saved maps: sharded, compressed float16 arrays keyed by image and method.

``--save-maps`` writes, per method, ``maps/<method>/shard-NNNNNN.npz`` (one shard per
batch, written to a temporary file and renamed, so a shard is whole or absent) holding
``images`` (names), ``maps`` (``(B, H, W)`` float16 at the input size), ``classes`` (the
explained class) and ``time_s`` (seconds per map). ``--from-maps DIR`` scores those maps
instead of computing them; a later shard wins when an image appears twice.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ...errors import InputError
from .data import Loaded


def _method_dir(root: Path, method: str) -> Path:
    return root / method


class MapWriter:
    """Writes one shard per batch under ``root/<method>/``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def write(
        self,
        method: str,
        names: list[str],
        classes: torch.Tensor,
        maps: torch.Tensor,
        time_s: float,
    ) -> Path:
        """Save one batch's maps; returns the shard's path."""
        folder = _method_dir(self.root, method)
        folder.mkdir(parents=True, exist_ok=True)
        index = len(list(folder.glob("shard-*.npz")))
        path = folder / f"shard-{index:06d}.npz"
        while path.exists():
            index += 1
            path = folder / f"shard-{index:06d}.npz"
        tmp = folder / f".{path.stem}.tmp.npz"
        np.savez_compressed(
            tmp,
            images=np.array(names, dtype=str),
            maps=maps.detach().to(torch.float16).cpu().numpy(),
            classes=classes.detach().cpu().numpy().astype(np.int64),
            time_s=np.full(len(names), time_s, dtype=np.float64),
        )
        os.replace(tmp, path)
        return path


class MapReader:
    """Looks maps up by (image, method) in a folder written by :class:`MapWriter`."""

    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise InputError(f"--from-maps {root} is not a folder of saved maps")
        self.root = root
        self._index: dict[str, dict[str, tuple[Path, int]]] = {}
        self._cache: tuple[Path, dict[str, np.ndarray]] | None = None

    def methods(self) -> list[str]:
        """Methods with saved maps, sorted."""
        return sorted(p.name for p in self.root.iterdir() if any(p.glob("shard-*.npz")))

    def _method_index(self, method: str) -> dict[str, tuple[Path, int]]:
        if method not in self._index:
            index: dict[str, tuple[Path, int]] = {}
            for shard in sorted(_method_dir(self.root, method).glob("shard-*.npz")):
                with np.load(shard, allow_pickle=False) as data:
                    for i, name in enumerate(data["images"].tolist()):
                        index[str(name)] = (shard, i)
            if not index:
                raise InputError(f"{self.root} holds no saved maps of method {method!r}")
            self._index[method] = index
        return self._index[method]

    def _shard(self, path: Path) -> dict[str, np.ndarray]:
        if self._cache is None or self._cache[0] != path:
            with np.load(path, allow_pickle=False) as data:
                self._cache = (path, {k: data[k] for k in data.files})
        return self._cache[1]

    def has(self, method: str, name: str) -> bool:
        """Whether a map of ``name`` by ``method`` was saved."""
        try:
            return name in self._method_index(method)
        except InputError:
            return False

    def load(self, method: str, names: list[str]) -> tuple[torch.Tensor, torch.Tensor, float]:
        """``(maps (B, H, W) float32, classes (B,), mean time_s)`` of ``names``."""
        index = self._method_index(method)
        missing = [n for n in names if n not in index]
        if missing:
            raise InputError(f"no saved map of {missing[0]!r} for {method!r} in {self.root}")
        maps, classes, times = [], [], []
        for name in names:
            shard, i = index[name]
            data = self._shard(shard)
            maps.append(torch.from_numpy(data["maps"][i].astype(np.float32)))
            classes.append(int(data["classes"][i]))
            times.append(float(data["time_s"][i]))
        return torch.stack(maps), torch.tensor(classes), sum(times) / len(times)


def drop_unsaved(reader: MapReader, method: str, loaded: Loaded) -> None:
    """Move the images without a saved map from ``loaded.items`` to ``loaded.failed``."""
    keep = [i for i, it in enumerate(loaded.items) if reader.has(method, it.name)]
    for i, it in enumerate(loaded.items):
        if i not in keep:
            error = f"InputError: no saved map of {it.name!r} for {method!r} in {reader.root}"
            loaded.failed.append((it, error))
    loaded.items = [loaded.items[i] for i in keep]
    loaded.pixels = loaded.pixels[keep]
    loaded.sizes = [loaded.sizes[i] for i in keep]
