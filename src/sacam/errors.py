"""Exceptions raised by sacam.

Every error says what was wrong and what to do about it. All of them derive from
:class:`SacamError`, itself a :class:`ValueError`, so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class SacamError(ValueError):
    """Base class of every error sacam raises on bad input."""


class InputError(SacamError):
    """The images given to a method are not a usable batch."""


class LayerError(SacamError):
    """A target layer could not be found, or does not produce a usable output."""


class TargetError(SacamError):
    """A target (class index or score callable) does not fit the model output."""


class MethodError(SacamError):
    """An unknown method name, or options a method does not accept."""


class ModelError(SacamError):
    """A model could not be loaded or built."""
