"""The plan store: tuned batch plans and measured memory costs kept on disk.

A tuned choice (:class:`sacam._speed.tuner.Tuner`) or a measured memory cost
(:mod:`sacam._speed.memory`) is written here and read back by every later process that
runs the same work, which then starts at the chosen plan and measures nothing.

Where: ``$SACAM_CACHE_DIR/plans.json`` when that variable is set (an empty value turns
the disk cache off), else ``plans.json`` in the user cache folder that ``platformdirs``
gives (``~/.cache/sacam`` on Linux, ``~/Library/Caches/sacam`` on macOS,
a per-user folder under ``%LOCALAPPDATA%`` on Windows). Delete the file to tune again (after a
hardware change, say); a file that cannot be read or written is ignored (the run then
tunes, as without a cache).

The key (:func:`plan_key`) holds what a timing depends on: the model's architecture
(:func:`model_fingerprint`: every module's class, the code of its ``forward``, its
settings and its parameters' and buffers' shapes and dtypes — not their values, which do
not change the time a pass takes), the input's shape and dtype, the device (with its name
on CUDA), the torch version and its number of CPU threads, and the CPU model. A different
architecture, input size, device or thread count is a different key, so it is tuned
afresh.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

CACHE_ENV = "SACAM_CACHE_DIR"
FILE_NAME = "plans.json"
FORMAT = 2  # bump when the meaning of a stored plan changes


def cache_file() -> Path | None:
    """The plans file, or None when the disk cache is off (``SACAM_CACHE_DIR=""``)."""
    env = os.environ.get(CACHE_ENV)
    if env is not None:
        return Path(env) / FILE_NAME if env else None
    import platformdirs

    return Path(platformdirs.user_cache_dir("sacam", appauthor=False)) / FILE_NAME


def _code_digest(cls: type) -> str:
    """A digest of the class's ``forward`` code (bytecode and constants), or its name."""
    fwd = getattr(cls, "forward", None)
    code = getattr(fwd, "__code__", None)
    if code is None:
        return f"{cls.__module__}.{cls.__qualname__}"
    return hashlib.sha256(code.co_code + repr(code.co_consts).encode()).hexdigest()[:16]


def model_fingerprint(model: nn.Module) -> str:
    """A digest of the model's architecture (not its weights' values).

    Two models built the same way give the same fingerprint whatever their weights; a
    different layer, setting, shape, dtype or ``forward`` code gives another.

    Example:
        >>> from torch import nn
        >>> a = model_fingerprint(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
        >>> a == model_fingerprint(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
        True
        >>> a == model_fingerprint(nn.Sequential(nn.Conv2d(3, 4, 5), nn.ReLU()))
        False
    """
    h = hashlib.sha256()
    codes: dict[type, str] = {}
    for name, module in model.named_modules():
        cls = type(module)
        if cls not in codes:
            codes[cls] = _code_digest(cls)
        h.update(f"{name}|{cls.__module__}.{cls.__qualname__}|{codes[cls]}|".encode())
        h.update(module.extra_repr().encode())
        h.update(f"|{module.training}\n".encode())
    for kind, tensors in (("p", model.named_parameters()), ("b", model.named_buffers())):
        for name, t in tensors:
            h.update(f"{kind}|{name}|{tuple(t.shape)}|{t.dtype}\n".encode())
    return h.hexdigest()


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (or the platform's guess)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def plan_key(
    model: nn.Module,
    sample_shape: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device | str,
    purpose: str,
) -> str:
    """The cache key of a plan for ``model`` on inputs of ``sample_shape`` (one sample).

    Args:
        model: the model the plan runs.
        sample_shape: one input's shape, ``(C, H, W)``.
        dtype: the inputs' dtype.
        device: where the passes run.
        purpose: what the plan is for (``"curves"``), so that different loops don't mix.
    """
    dev = torch.device(device)
    where = str(dev)
    if dev.type == "cuda":
        where += "|" + torch.cuda.get_device_name(dev)
    parts = [
        f"v{FORMAT}",
        purpose,
        model_fingerprint(model),
        "x".join(str(s) for s in sample_shape),
        str(dtype),
        where,
        f"torch {torch.__version__}",
        f"{torch.get_num_threads()} threads",
        cpu_name(),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_plan(key: str) -> dict[str, Any] | None:
    """The stored plan of ``key`` (a dict of plain values), or None."""
    path = cache_file()
    if path is None:
        return None
    entry = _read(path).get(key)
    return entry if isinstance(entry, dict) else None


def save_plan(key: str, plan: dict[str, Any]) -> None:
    """Store ``plan`` under ``key`` (whole-file replace; failures are ignored)."""
    path = cache_file()
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read(path)
        data[key] = plan
        fd, tmp = tempfile.mkstemp(prefix=".plans-", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        return
