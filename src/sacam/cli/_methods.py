"""``sacam methods [NAME]``: the registered methods, or one method's options."""

from __future__ import annotations

import inspect
import re

from ..core import BaseCAM
from ..registry import list_methods, method_info

#: What the options every method inherits from :class:`sacam.core.BaseCAM` do.
COMMON_OPTIONS = {
    "reshape_transform": "turns a layer's token output into (B, C, h, w) maps (Python only)",
    "fusion": "how the maps of several layers combine: 'max' or 'mean'",
    "eval_mode": "run the model in eval mode while explaining",
    "eigen_smooth": "keep only the first principal component of the channel contributions",
    "output_transform": "turns the model's output into logits (Python only)",
}


def _describe(cls: type[BaseCAM], name: str) -> str:
    """One line on an option: the first docstring sentence that names it in ``code``."""
    if name in COMMON_OPTIONS:
        return COMMON_OPTIONS[name]
    for klass in cls.__mro__:
        doc = inspect.cleandoc(klass.__doc__ or "")
        for para in re.split(r"\n\s*\n", doc):
            text = " ".join(para.split())
            for sentence in re.split(r"(?<=[.;])\s+", text):
                if f"``{name}``" in sentence or re.match(rf"{name}\b\s*:", sentence):
                    return _plain(sentence.removeprefix(f"{name}:"))
    return "see the method's documentation (help(sacam.get_method(NAME)))"


def _plain(text: str, width: int = 90) -> str:
    """Docstring markup dropped, cut to ``width`` characters."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text).replace("``", "").strip(" ;")
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def methods_text(name: str | None = None) -> str:
    """The table of methods, or with ``name`` that method's options and their defaults."""
    if name is None:
        names = list_methods()
        width = max(map(len, names))
        papers = min(34, max(len(method_info(n).paper) for n in names))
        return "\n".join(
            f"{n:{width}s}  {method_info(n).paper:{papers}s}  {method_info(n).description}"
            for n in names
        )
    info = method_info(name)
    cls = info.cls
    defaults = cls.option_defaults()
    own = [n for n in defaults if n not in COMMON_OPTIONS]
    common = [n for n in defaults if n in COMMON_OPTIONS]
    lines = [f"{name}: {info.description}", f"  paper: {info.paper} {info.url}", "  options:"]
    width = max(map(len, defaults), default=0)
    for opt in [*own, *common]:
        value = defaults[opt]
        shown = "required" if value is inspect.Parameter.empty else repr(value)
        lines.append(f"    {opt:{width}s} = {shown:10s}  {_describe(cls, opt)}")
    lines.append(f"  set one with --method-option {name}:KEY=VALUE")
    return "\n".join(lines)
