"""Generate the reference pages of the documentation site from sacam's registries.

mkdocs-gen-files runs this script at build time (``mkdocs build``), so the pages list
exactly the methods, metrics and command-line options of the installed sacam:

- ``reference/methods.md``: every registered method with its family, paper, options and
  their defaults, and its documentation;
- ``reference/metrics.md``: every registered metric with the values it writes, their
  directions and what it needs;
- ``reference/cli.md``: the help of every ``sacam`` subcommand.

The page builders are plain functions returning Markdown, so tests can check them.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import os
import re
from collections.abc import Callable

import sacam
import sacam.evaluation
from sacam.cli import main as cli_main
from sacam.evaluation.registry import list_metrics, metric_info

REQUIRED = "required"
_ROLE = re.compile(r":(?:\w+:)?\w+:`(~?)([^`<]+?)(?:\s*<[^>]+>)?`")
_SECTION = re.compile(r"^(Example|Examples):\s*$")


def option_defaults(cls: type[sacam.BaseCAM]) -> dict[str, str]:
    """Each keyword option of a method class and the ``repr`` of its default.

    The options and defaults are those of :meth:`sacam.BaseCAM.option_defaults`, in its
    order. An option without a default is marked ``"required"``.

    Args:
        cls: a registered method class.

    Returns:
        option name -> default as Python source text.
    """
    return {
        name: REQUIRED if value is inspect.Parameter.empty else _short_repr(value)
        for name, value in cls.option_defaults().items()
    }


def _short_repr(value: object) -> str:
    """``repr(value)``, with functions and classes named rather than addressed."""
    if inspect.isfunction(value) or inspect.isclass(value):
        return value.__qualname__
    return repr(value)


def docstring_markdown(doc: str | None) -> str:
    """A method class's docstring as Markdown.

    Roles such as ``:func:`x``` become code, ``.. math::`` lines become code blocks and
    ``Example:`` sections become ``pycon`` blocks.

    Args:
        doc: the raw docstring (``None`` for none).

    Returns:
        Markdown text, empty for no docstring.
    """
    lines = inspect.cleandoc(doc or "").splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if _SECTION.match(line):
            block, i = _indented(lines, i + 1)
            out += ["**Example**", "", "```pycon", *block, "```", ""]
            continue
        if stripped.startswith(".. math::"):
            block, i = _indented(lines, i + 1)
            formula = [stripped.removeprefix(".. math::").strip(), *block]
            out += ["", "```text", *[f for f in formula if f.strip()], "```", ""]
            continue
        out.append(_ROLE.sub(_code, line))
        i += 1
    return "\n".join(out).strip()


def _code(m: re.Match[str]) -> str:
    """A Sphinx role as a code span; ``~a.b.c`` shows ``c``."""
    return f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`"


def _indented(lines: list[str], start: int) -> tuple[list[str], int]:
    """The block of indented (or blank) lines from ``start``, dedented, and where it ends."""
    end = start
    while end < len(lines) and (not lines[end].strip() or lines[end].startswith((" ", "\t"))):
        end += 1
    block = inspect.cleandoc("\n".join(lines[start:end])).splitlines()
    return block, end


def methods_page() -> str:
    """The Markdown page listing every registered method, its options and its docs."""
    engine = sacam.BaseCAM.option_names()
    engine_defaults = option_defaults(sacam.BaseCAM)
    names = sacam.list_methods()
    parts = [
        "# Methods",
        "",
        f"sacam registers {len(names)} CAM methods. Each name below is a value of "
        "`sacam.explain(..., method=NAME)` and of `sacam explain --method NAME`; "
        "`sacam.list_methods()` lists them and `sacam.method_info(NAME)` gives an entry. "
        "Options are keyword arguments of `sacam.explain` (and "
        "`sacam benchmark --method-option NAME:KEY=VALUE`); an unknown option is an error "
        "that lists the valid ones.",
        "",
        "This page is generated from the registry when the site is built.",
        "",
        "## Options every method takes",
        "",
        "| option | default | what it does |",
        "|---|---|---|",
    ]
    for name in engine:
        parts.append(f"| `{name}` | `{engine_defaults[name]}` | {_ENGINE_HELP.get(name, '')} |")
    parts += ["", "## Overview", "", "| method | family | paper | what it does |"]
    parts.append("|---|---|---|---|")
    for name in names:
        info = sacam.method_info(name)
        parts.append(
            f"| [`{name}`](#{_anchor(name)}) | {info.family} | [{info.paper}]({info.url}) "
            f"| {info.description} |"
        )
    for name in names:
        parts += ["", _method_section(name, set(engine))]
    return "\n".join(parts) + "\n"


_ENGINE_HELP = {
    "reshape_transform": "turns a token layer's `(B, N, C)` output into `(B, C, h, w)` "
    "(see `sacam.transforms.vit_reshape_transform`)",
    "fusion": "how the maps of several layers are fused: `'max'` or `'mean'`",
    "eval_mode": "run the model in eval mode during the call (its own mode is restored after)",
    "eigen_smooth": "replace the weighted activations by their first principal component",
    "output_transform": "a callable from the model's output to its `(B, classes)` logits",
}


def _anchor(name: str) -> str:
    """The anchor of a method's section (Python-Markdown's toc slug of its heading)."""
    return re.sub(r"[^\w-]", "", name.lower())


def _method_section(name: str, engine: set[str]) -> str:
    """One method's section: heading, paper, description, own options, docstring."""
    info = sacam.method_info(name)
    own = {k: v for k, v in option_defaults(info.cls).items() if k not in engine}
    lines = [
        f"## {name}",
        "",
        f"*{info.family}* · [{info.paper}]({info.url}) · class "
        f"`{info.cls.__module__}.{info.cls.__qualname__}`",
        "",
        info.description,
        "",
    ]
    if own:
        lines += ["| option | default |", "|---|---|"]
        lines += [f"| `{k}` | `{v}` |" for k, v in own.items()]
    else:
        lines.append("No options beyond the ones every method takes.")
    lines += ["", docstring_markdown(info.cls.__doc__)]
    return "\n".join(lines)


def metrics_page() -> str:
    """The Markdown page listing every registered metric and the values it writes."""
    names = list_metrics()
    parts = [
        "# Metrics",
        "",
        f"sacam registers {len(names)} metrics. Each name is a choice of "
        "`sacam benchmark --metrics` (also `default` and `all`) and of "
        "`BenchmarkConfig(metrics=[...])`; a metric writes one or more values per image "
        "into `results.csv`. ↑ means higher is better, ↓ lower. A value marked `@ε` is "
        "written once per ε of the run's `--epsilons`, named `VALUE@ε` with ε in units "
        "of 1/255 (`adv_fgsm_topk@2`). The protocols are described in "
        "[Evaluation protocols](../evaluation.md).",
        "",
        "This page is generated from the registry when the site is built.",
        "",
        "| metric | default | needs | source |",
        "|---|---|---|---|",
    ]
    for name in names:
        info = metric_info(name)
        needs = ", ".join(sorted(info.needs)) or "–"
        parts.append(
            f"| [`{name}`](#{_anchor(name)}) | {'yes' if info.default else 'no'} "
            f"| {needs} | {info.source} |"
        )
    for name in names:
        info = metric_info(name)
        parts += ["", f"## {name}", "", f"Source: {info.source}.", ""]
        if info.needs:
            parts += [f"Needs: {', '.join(sorted(info.needs))}.", ""]
        if info.unit == "grid":
            parts += ["Scored on grids of images, not per image.", ""]
        parts += ["| value | direction | description |", "|---|---|---|"]
        for v in info.values:
            suffix = "@ε" if v.swept else ""
            arrow = "↑ higher is better" if v.higher_is_better else "↓ lower is better"
            parts.append(f"| `{v.name}{suffix}` | {arrow} | {v.description} |")
    return "\n".join(parts) + "\n"


def command_help(args: list[str]) -> str:
    """The ``--help`` text of a ``sacam`` command, as the terminal shows it at 88 columns."""
    buffer = io.StringIO()
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "88"
    try:
        with contextlib.redirect_stdout(buffer), contextlib.suppress(SystemExit):
            cli_main([*args, "--help"])
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old
    return buffer.getvalue().rstrip()


def subcommands() -> list[str]:
    """The ``sacam`` subcommands, as its help lists them."""
    found = re.search(r"\{([\w,-]+)\}", command_help([]))
    return found.group(1).split(",") if found else []


def cli_page() -> str:
    """The Markdown page with the help of ``sacam`` and of each subcommand."""
    names = subcommands()
    parts = [
        "# Command line",
        "",
        f"The `sacam` command has {len(names)} subcommands: "
        + ", ".join(f"`{n}`" for n in names)
        + ". Exit codes: 0 success, 2 bad arguments "
        "(one line `sacam: error: ...` listing the valid choices, before any work), 3 "
        "unreadable input, 130 a benchmark stopped by Ctrl-C.",
        "",
        "This page is generated from the command's own help when the site is built.",
    ]
    for args in ([], *([n] for n in names)):
        title = " ".join(["sacam", *args])
        parts += ["", f"## {title}", "", "```text", command_help(args), "```"]
    return "\n".join(parts) + "\n"


PAGES: dict[str, Callable[[], str]] = {
    "reference/methods.md": methods_page,
    "reference/metrics.md": metrics_page,
    "reference/cli.md": cli_page,
}


def main() -> None:
    """Write every generated page into the site (through mkdocs-gen-files)."""
    import mkdocs_gen_files

    for path, build in PAGES.items():
        with mkdocs_gen_files.open(path, "w") as f:
            f.write(build())


if __name__ in ("__main__", "<run_path>"):
    main()
