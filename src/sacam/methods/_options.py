"""Validation of method options: one clear :class:`~sacam.errors.MethodError` per bad value.

Every method checks its constructor options with these helpers, so the same mistake gets
the same message whatever the method.
"""

from __future__ import annotations

import math

from ..errors import MethodError

__all__ = ["check_bool", "check_count", "check_number", "check_seed", "check_variant"]


def check_count(name: str, value: object) -> int:
    """A positive ``int`` (``bool`` refused).

    Example:
        >>> check_count("groups", 4)
        4
    """
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise MethodError(f"{name} must be a positive int, got {value!r}")
    return value


def check_seed(value: object) -> int:
    """Any ``int`` (``bool`` refused), used to seed a generator."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise MethodError(f"seed must be an int, got {value!r}")
    return value


def check_bool(name: str, value: object) -> bool:
    """``True`` or ``False`` (not a truthy value)."""
    if not isinstance(value, bool):
        raise MethodError(f"{name} must be True or False, got {value!r}")
    return value


def check_variant(method: str, variant: object, allowed: tuple[str, ...]) -> str:
    """One of ``allowed``; the message lists them.

    Example:
        >>> check_variant("score-cam", "paper", ("paper", "softmax"))
        'paper'
    """
    if variant not in allowed:
        names = " or ".join(repr(a) for a in allowed)
        if len(allowed) > 2:
            names = ", ".join(repr(a) for a in allowed[:-1]) + f" or {allowed[-1]!r}"
        raise MethodError(f"{method} variant must be {names}, got {variant!r}")
    return str(variant)


def check_number(
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
) -> float:
    """A finite real number (``bool`` refused) with optional bounds; returned as ``float``.

    Args:
        name: the option's name, for the message.
        value: what the caller passed.
        minimum: smallest allowed value (inclusive).
        above: exclusive lower bound.
        maximum: largest allowed value (inclusive).

    Example:
        >>> check_number("std", 2, minimum=0)
        2.0
    """
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok and minimum is not None:
        ok = value >= minimum  # type: ignore[operator]
    if ok and above is not None:
        ok = value > above  # type: ignore[operator]
    if ok and maximum is not None:
        ok = value <= maximum  # type: ignore[operator]
    if not ok:
        bounds = []
        if minimum is not None:
            bounds.append(f">= {minimum:g}")
        if above is not None:
            bounds.append(f"> {above:g}")
        if maximum is not None:
            bounds.append(f"<= {maximum:g}")
        rule = "".join(" " + b for b in bounds[:1]) + "".join(" and " + b for b in bounds[1:])
        raise MethodError(f"{name} must be a finite number{rule}, got {value!r}")
    return float(value)  # type: ignore[arg-type]
