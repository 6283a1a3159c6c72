"""The lowest layer of sacam: one re-entrant lock per model, and thread-bound hooks.

See :mod:`sacam._hooks` for why every call on a model holds its lock.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable

from torch import nn

from ._outputs import unwrap

__all__ = ["Hook", "model_lock", "this_thread_only"]

_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The re-entrant lock that serialises sacam's calls on ``model`` (one per model object).

    A :class:`sacam._outputs.LogitsModel` wrapper has the lock of the model it wraps.

    Example:
        >>> from torch import nn
        >>> net = nn.Linear(2, 2)
        >>> model_lock(net) is model_lock(net), model_lock(net) is model_lock(nn.Linear(2, 2))
        (True, False)
    """
    model = unwrap(model)  # a LogitsModel shares the lock of the model it wraps
    with _LOCKS_LOCK:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = threading.RLock()
            _LOCKS[model] = lock
        return lock


Hook = Callable[[nn.Module, object, object], object]


def this_thread_only(hook: Hook) -> Hook:
    """Wrap a forward hook so that it acts only on forward passes run by the current thread."""
    owner = threading.get_ident()

    def wrapped(module: nn.Module, inp: object, out: object) -> object:
        if threading.get_ident() != owner:
            return None
        return hook(module, inp, out)

    return wrapped
