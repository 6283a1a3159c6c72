"""A Griffe extension for the documentation site: sacam's docstrings in Markdown.

sacam's docstrings are Google style with a few Sphinx habits: roles that name other
objects (``:func:`sacam.explain```, ``:class:`~sacam.core.BaseCAM```), ``.. math::``
lines, and ``Example:`` sections of doctests. mkdocstrings reads Markdown, so before
parsing this extension turns the roles into code spans (``~`` keeps the last name only),
each ``.. math::`` line into a code block, and ``Example:`` into ``Examples:``, the
section whose doctests mkdocstrings shows as code.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?[a-z]+:`(~?)([^`<]+?)(?:\s*<[^>]+>)?`")
_MATH = re.compile(r"^(\s*)\.\. math::\s*(.*)$")


def markdown_docstring(text: str) -> str:
    r"""A docstring with its Sphinx roles, math lines and example headings in Markdown.

    Args:
        text: the docstring, as written.

    Returns:
        the docstring for mkdocstrings' Google-style parser.

    Example:
        >>> markdown_docstring("See :func:`sacam.explain` and :class:`~a.B`.\n\nExample:")
        'See `sacam.explain` and `B`.\n\nExamples:'
    """

    def code(m: re.Match[str]) -> str:
        return f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`"

    lines = []
    for line in _ROLE.sub(code, text).splitlines():
        math = _MATH.match(line)
        if math:
            indent, formula = math.groups()
            lines += [f"{indent}```text", f"{indent}{formula}", f"{indent}```"]
        elif line.strip() == "Example:":
            lines.append(line.replace("Example:", "Examples:"))
        else:
            lines.append(line)
    return "\n".join(lines)


class SphinxToMarkdown(griffe.Extension):
    """Rewrite every docstring with :func:`markdown_docstring` before it is parsed."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Called for each object Griffe loads."""
        if obj.docstring is not None:
            obj.docstring.value = markdown_docstring(obj.docstring.value)
