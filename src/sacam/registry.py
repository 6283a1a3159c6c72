"""The one registry of CAM methods.

The CLI's choices, the docs table and the shared tests all derive from it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from .core import BaseCAM
from .errors import MethodError

M = TypeVar("M", bound=type[BaseCAM])


@dataclass(frozen=True)
class MethodInfo:
    """A registered method: its name, class, paper and one-line description."""

    name: str
    cls: type[BaseCAM]
    paper: str
    url: str
    description: str
    family: str


_METHODS: dict[str, MethodInfo] = {}


def register_method(
    name: str, *, paper: str, url: str, description: str, family: str
) -> Callable[[M], M]:
    """Class decorator that registers a :class:`~sacam.core.BaseCAM` subclass under ``name``.

    Names are lower case with hyphens (``grad-cam``, ``grad-cam++``, ``sa-cam``).
    """
    if name != name.lower() or " " in name or "_" in name:
        raise MethodError(f"method names are lower case with hyphens, got {name!r}")

    def decorate(cls: M) -> M:
        if name in _METHODS:
            raise MethodError(f"a method named {name!r} is already registered")
        cls.name = name
        _METHODS[name] = MethodInfo(name, cls, paper, url, description, family)
        return cls

    return decorate


def list_methods() -> list[str]:
    """Names of all registered methods, in registration order.

    Example:
        >>> import sacam
        >>> "grad-cam" in sacam.list_methods()
        True
    """
    return list(_METHODS)


def method_info(name: str) -> MethodInfo:
    """Registry entry of a method; raises :class:`MethodError` listing valid names."""
    try:
        return _METHODS[name]
    except KeyError:
        raise MethodError(
            f"unknown method {name!r}; valid methods: {', '.join(_METHODS)}"
        ) from None


def get_method(name: str) -> type[BaseCAM]:
    """The method class registered under ``name``."""
    return method_info(name).cls


def check_options(name: str, options: Mapping[str, object], role: str = "method") -> type[BaseCAM]:
    """The class of method ``name`` once every key of ``options`` is one of its options.

    Every entry point checks options here: :func:`sacam.explain` and
    :func:`sacam.build_method`, and the base method of a method built on another
    (``base_options``). The error names the unknown options, suggests close names and
    lists the valid ones.

    Args:
        name: a registered method name.
        options: keyword options for its constructor (besides model and layer).
        role: how the message names the method (``"method"``, ``"base"``).

    Example:
        >>> import sacam
        >>> check_options("sa-cam", {"gamma": 1.0}).name
        'sa-cam'
        >>> try:
        ...     check_options("sa-cam", {"gama": 1.0})
        ... except MethodError as e:
        ...     print(str(e).split(";")[0])
        method 'sa-cam' does not accept option(s) gama (did you mean gamma?)
    """
    cls = get_method(name)
    allowed = cls.option_names()
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        close = sorted({c for u in unknown for c in difflib.get_close_matches(u, allowed, n=3)})
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise MethodError(
            f"{role} {name!r} does not accept option(s) {', '.join(unknown)}{hint}; "
            f"it accepts: {', '.join(allowed)}"
        )
    return cls


def methods_table() -> str:
    """The registry as a Markdown table (name, family, paper, description)."""
    lines = ["| method | family | paper | what it does |", "|---|---|---|---|"]
    for info in _METHODS.values():
        lines.append(
            f"| `{info.name}` | {info.family} | [{info.paper}]({info.url}) | {info.description} |"
        )
    return "\n".join(lines)
