"""Class names as a person types them: ``--target "tabby cat"``, ``--target cat``."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from importlib import resources

from ..errors import TargetError
from ..models import imagenet_class_names
from ..targets import parse_class

CANDIDATES_SHOWN = 8


def normalize(name: str) -> str:
    """``name`` lower-cased, with ``_``, ``-`` and runs of spaces as one space."""
    return " ".join(re.sub(r"[_\-]+", " ", name).lower().split())


def _imagenet_aliases() -> list[list[str]]:
    """Every ImageNet class's names (``["tabby", "tabby cat"]``), in index order."""
    text = resources.files("sacam").joinpath("data/imagenet_classes.tsv").read_text("utf-8")
    rows = [line.split("\t") for line in text.splitlines() if line and not line.startswith("#")]
    return [[lemma.strip() for lemma in row[2].split(",")] for row in rows]


def _aliases(class_names: Sequence[str]) -> list[list[str]]:
    """Each class's names: ImageNet's lemmas for ImageNet models, else the one name."""
    if list(class_names) == imagenet_class_names():
        return _imagenet_aliases()
    return [[name] for name in class_names]


def resolve_target(text: str, class_names: Sequence[str], *, what: str = "--target") -> int:
    """A class index from an index or a name typed any way a person would.

    Names match whatever their case, spacing and ``_``/``-``/space; for ImageNet models
    any of a class's WordNet names matches (``"tabby cat"`` is class 281, ``tabby``). A
    word that names no class exactly but is part of one class's name picks it; part of
    several, the error lists them; otherwise it suggests the closest names.

    Raises:
        TargetError: out of range, ambiguous or unknown, with what to type instead.

    Example:
        >>> resolve_target("Tabby_Cat", ["dog", "tabby cat"])
        1
    """
    try:
        return parse_class(text, class_names, what=what)
    except TargetError:
        if text.strip().lstrip("+-").isdigit() or not class_names:
            raise
    key = normalize(text)
    aliases = _aliases(class_names)
    exact = [i for i, names in enumerate(aliases) if key in map(normalize, names)]
    if exact:
        return exact[0]
    words = set(key.split())
    partial = [
        i
        for i, names in enumerate(aliases)
        if any(words <= set(normalize(n).split()) for n in names)
    ]
    if len(partial) == 1:
        return partial[0]
    if partial:
        shown = ", ".join(f"{class_names[i]} ({i})" for i in partial[:CANDIDATES_SHOWN])
        more = f" and {len(partial) - CANDIDATES_SHOWN} more" if len(partial) > 8 else ""
        raise TargetError(
            f"{what} {text!r} matches {len(partial)} classes: {shown}{more}; "
            "give the full name or the index"
        )
    index = {normalize(n): i for i, names in enumerate(aliases) for n in names}
    close = difflib.get_close_matches(key, list(index), n=3, cutoff=0.6)
    hint = (
        "did you mean " + ", ".join(f"{class_names[index[c]]} ({index[c]})" for c in close) + "?"
        if close
        else f"give a class index 0..{len(class_names) - 1} or one of the model's class names"
    )
    raise TargetError(f"{what} {text!r} is neither a class index nor a class name; {hint}")
