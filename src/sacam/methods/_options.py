"""Validation of method options: one clear :class:`~sacam.errors.MethodError` per bad value.

Every method checks its constructor options with these helpers, so the same mistake gets
the same message whatever the method.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from ..core import BaseCAM
from ..errors import MethodError
from ..registry import check_options

__all__ = [
    "base_method",
    "check_bool",
    "check_count",
    "check_number",
    "check_seed",
    "check_variant",
]


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


def base_method(owner: BaseCAM, method: str, base: object, options: object) -> BaseCAM:
    """Build the ``base`` method of a meta-method on the owner's model, layers and engine options.

    Args:
        owner: the meta-method (its model, layer, reshape_transform, eval_mode, fusion and
            output_transform are shared).
        method: the meta-method's name, for messages (and refused as its own base).
        base: a registered method name.
        options: ``None`` or a dict of the base's own options (checked by
            :func:`sacam.registry.check_options`).
    """
    if not isinstance(base, str):
        raise MethodError(f"{method}'s base must be a method name, got {base!r}")
    if base == method:
        raise MethodError(f"{method}'s base must be another method, e.g. 'grad-cam'")
    if options is not None and not isinstance(options, Mapping):
        raise MethodError(f"base_options must be a dict of options, got {options!r}")
    opts = dict(options or {})
    cls = check_options(base, opts, role="base")
    shared = sorted(set(opts) & set(BaseCAM.option_names()))
    if shared:
        raise MethodError(
            f"{', '.join(shared)} in base_options: the base shares {method}'s engine options; "
            f"pass them to {method} itself"
        )
    return cls(
        owner.model,
        owner.layer,
        reshape_transform=owner.reshape_transform,
        eval_mode=owner.eval_mode,
        eigen_smooth=owner.eigen_smooth,
        fusion=owner.fusion,
        output_transform=owner.output_transform,
        **opts,
    )
