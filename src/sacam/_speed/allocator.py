"""The C allocator under PyTorch's CPU tensors: keep freed memory, or hand it back.

On Linux, glibc's ``malloc`` serves every block above its mmap threshold (at most 32 MiB)
with a fresh ``mmap`` and unmaps it on ``free``. A batch of images through a CNN has
activations of tens to hundreds of MB, so every forward pass maps its large tensors,
faults their pages in one 4 KiB page at a time (the kernel zeroes each one) and unmaps
them again; perturbation methods and the deletion/insertion curves run thousands of such
passes, and the page faults can cost more than the arithmetic.

:func:`keep_freed_memory` tells glibc to serve large blocks from its heap and to keep
freed memory at the heap's top instead of returning it, so that a pass reuses the pages
the previous pass freed. The process then also keeps memory that fragmentation makes
hard to reuse, so its peak resident set grows (a perturbation method's batch still
stays within its ``max_memory_mb``). The numbers are the same: only where the memory
comes from changes. docs/performance.md ("The C allocator") has the measured times and
peaks, and ``python benchmarks/allocator.py`` measures them on your machine. The
``sacam`` command (except ``sacam serve``, whose model thread gained nothing) and the
Ray actors of ``--engine ray`` call it at start; a script of yours calls
:func:`sacam.keep_freed_memory` once at its top.

It leaves glibc alone when you configured its allocator yourself (any ``MALLOC_*``
variable or a ``glibc.malloc`` tunable in ``GLIBC_TUNABLES``) or set
``SACAM_KEEP_FREED_MEMORY=0`` (glibc as it starts; note that ``MALLOC_MMAP_MAX_=65536``
is not that: setting it also switches off glibc's sliding mmap threshold), and it is a
no-op where the C library is not glibc. Under another allocator preloaded with
``LD_PRELOAD`` the call changes nothing that allocator does (tcmalloc keeps freed memory
on its own; jemalloc at its defaults returns it).
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4
KEEP_MB = 1024
OPT_OUT = "SACAM_KEEP_FREED_MEMORY"  # "0": leave glibc as it is


def on_glibc() -> bool:
    """Whether this process runs on Linux with glibc, whose allocator this module sets.

    Example:
        >>> on_glibc() in (True, False)
        True
    """
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def _glibc() -> ctypes.CDLL | None:
    if not on_glibc():
        return None
    try:
        return ctypes.CDLL(None)
    except OSError:  # pragma: no cover - no C library to ask
        return None


def user_configured_malloc(environ: dict[str, str] | None = None) -> bool:
    """Whether the environment sets glibc's allocator (``MALLOC_*``, ``GLIBC_TUNABLES``).

    Example:
        >>> user_configured_malloc({"MALLOC_ARENA_MAX": "2"})
        True
        >>> user_configured_malloc({"PATH": "/usr/bin"})
        False
    """
    env = os.environ if environ is None else environ
    if any(k.startswith("MALLOC_") for k in env):
        return True
    return "glibc.malloc" in env.get("GLIBC_TUNABLES", "")


def keep_freed_memory(keep_mb: int = KEEP_MB) -> bool:
    """Make glibc reuse freed memory for large tensors instead of mapping it afresh.

    Sets glibc's ``M_MMAP_MAX`` to 0 (large blocks come from the heap) and
    ``M_TRIM_THRESHOLD`` to ``keep_mb`` MiB (freed memory at the heap's top stays in the
    process until it exceeds that much; then glibc hands almost all of it back, as it
    does at its default threshold). Process-wide and lasting; call it once at the start.
    Threads other than the main one allocate from arenas of their own, whose heaps hold
    at most 64 MiB: there a larger block is still mapped afresh (``sacam serve`` runs
    the model in such a thread; it gained nothing measurable and does not call this).

    Args:
        keep_mb: freed memory kept at the heap's top, in MiB (1 to 2047).

    Returns:
        True when glibc took the settings; False (nothing changed) where the C library is
        not glibc, the environment configures glibc's allocator already (``MALLOC_*``,
        ``GLIBC_TUNABLES``), or ``SACAM_KEEP_FREED_MEMORY=0`` opts out.

    Example:
        >>> import sacam
        >>> sacam.keep_freed_memory()  # doctest: +SKIP
        True
    """
    if not 1 <= keep_mb <= 2047:
        raise ValueError(f"keep_mb must be 1 to 2047 (MiB), got {keep_mb}")
    libc = _glibc()
    if libc is None or user_configured_malloc() or os.environ.get(OPT_OUT) == "0":
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, keep_mb << 20))


def release_free_memory() -> None:
    """Return the C allocator's free blocks to the system (glibc ``malloc_trim``).

    Used before measuring a pass's memory: without it the pass can reuse blocks an earlier
    pass freed and show no growth of the resident set. A no-op elsewhere.

    Example:
        >>> release_free_memory()
    """
    libc = _glibc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    if trim is not None:
        trim(0)
