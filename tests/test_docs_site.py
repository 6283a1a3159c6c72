"""The documentation site stays true: its code runs, its reference pages cover the registries.

Every ```python and ```bash block of ``docs/getting-started.md`` and ``docs/tutorials/*.md``
runs here, in page order, in a fresh working folder: python blocks share one namespace
per page; each ``sacam ...`` line of a bash block runs through ``sacam.cli.main`` in this
process (``VAR=value`` prefixes set the environment, ``PYTHONPATH`` the import path) and
must exit 0. A block that cannot run here is preceded by ``<!-- no-test: REASON -->``
with one of :data:`SKIP_REASONS`; nothing else is skipped.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

import sacam
from sacam.cli import main as cli_main
from sacam.evaluation.registry import list_metrics, metric_info

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(
    [DOCS / "getting-started.md", *(DOCS / "tutorials").glob("*.md")],
    key=lambda p: p.relative_to(DOCS).as_posix(),
)

# The only reasons a block may give for not running here.
SKIP_REASONS = {
    "installs packages",
    "needs torchvision",
    "needs timm",
    "starts a server",
    "needs a running server",
    "needs a Ray cluster",
    "runs for hours",
    "needs your own detector and dataset",
}

# What each page must have written (files, relative to its working folder) and printed.
EXPECTED_FILES = {
    "getting-started.md": [
        "sacam-out/chelsea_sa-cam.png",
        "sacam-out/rocket_sa-cam.png",
        "compare/comparison.png",
        "tiger/chelsea_sa-cam_tiger-cat_blocks.15.png",
        "chelsea_sa-cam.png",
        "grid.png",
        "attention.png",
    ],
    "tutorials/own-model.md": [
        "mynet.py",
        "mynet.pth",
        "mynet.pt2",
        "own/photo_grad-cam.png",
        "exported/photo_grad-cam.png",
    ],
    "tutorials/benchmark.md": [
        "runs/first/results.csv",
        "runs/first/summary.md",
        "runs/first/report.html",
        "runs/maps/maps/sa-cam",
        "runs/rescored/results.csv",
        "runs/python/summary.md",
        "runs/stability/results.csv",
    ],
    "tutorials/detection.md": ["found/scene_detections_grad-cam.png"],
    "tutorials/ray.md": [
        "runs/ray/results.csv",
        "runs/ray/report.html",
        "ray-maps/cat_grad-cam.png",
        "ray-maps/cat_grad-cam.npy",
    ],
}
EXPECTED_OUTPUT = {
    "getting-started.md": [
        "Egyptian cat",
        "torch.Size([1, 224, 224])",
        "(1, 320, 7, 7)",
        "(did you mean gamma?)",
    ],
    "tutorials/transformers.md": ["torch.Size([2, 32, 32])", "torch.Size([2, 4, 4])"],
    "tutorials/own-model.md": ["torch.Size([2, 224, 224])", "features.0 (2, 16, 112, 112)", "True"],
    "tutorials/segmentation.md": ["torch.Size([1, 64, 64])", "None tensor(["],
    "tutorials/multi-label.md": ["2 (20, 16)", "0 (4, 4)"],
    "tutorials/web-app.md": ["espresso ['grad-cam']"],
    "tutorials/detection.md": ["(torchvision detections)", "grad-cam at backbone"],
}

FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```\s*$", re.S | re.M)
TITLE = re.compile(r'title="([^"]+)"')
MARKER = re.compile(r"<!--\s*no-test:\s*(.*?)\s*-->\s*\n\Z")


@dataclass
class Block:
    """One fenced code block of a page."""

    lang: str
    code: str
    line: int
    skip: str | None
    title: str | None = None


def blocks(page: Path) -> list[Block]:
    """The page's python and bash blocks, in order, with their no-test reasons."""
    text = page.read_text("utf-8")
    found = []
    for m in FENCE.finditer(text):
        if m.group(1) not in ("python", "bash"):
            continue
        before = text[: m.start()]
        marker = MARKER.search(before)
        line = before.count("\n") + 1
        title = TITLE.search(m.group(2))
        found.append(
            Block(
                m.group(1),
                m.group(3),
                line,
                marker.group(1) if marker else None,
                title.group(1) if title else None,
            )
        )
    return found


def commands(code: str) -> list[list[str]]:
    """The shell lines of a bash block, continuations joined, comments dropped, split."""
    joined = re.sub(r"\\\n", " ", code)
    return [words for ln in joined.splitlines() if (words := shlex.split(ln, comments=True))]


def run_command(words: list[str], where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run one ``[VAR=value ...] sacam ARGS`` line in this process; it must exit 0."""
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        key, _, value = words.pop(0).partition("=")
        if key == "PYTHONPATH":
            for entry in reversed(value.split(os.pathsep)):
                monkeypatch.syspath_prepend(str(Path(entry).resolve()))
        else:
            monkeypatch.setenv(key, value)
    assert words[:1] == ["sacam"], (
        f"{where}: a bash block runs only `sacam` commands; mark the block "
        f"<!-- no-test: REASON --> or change {shlex.join(words)!r}"
    )
    code = cli_main(words[1:])
    assert code == 0, f"{where}: `{shlex.join(words)}` exited {code}"


def _drop_modules_under(folder: Path) -> None:
    """Forget modules a page imported from its working folder (``mynet``, say)."""
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve().is_relative_to(folder.resolve()):
            del sys.modules[name]


def test_every_page_has_runnable_code() -> None:
    assert [p.relative_to(DOCS).as_posix() for p in PAGES][:1] == ["getting-started.md"]
    assert len(PAGES) >= 7, "getting-started and the six tutorials"
    for page in PAGES:
        found = blocks(page)
        assert any(b.skip is None for b in found), f"{page.name} has no block that runs"
        for b in found:
            assert b.skip is None or b.skip in SKIP_REASONS, (
                f"{page.name}:{b.line}: unknown no-test reason {b.skip!r}; "
                f"allowed: {sorted(SKIP_REASONS)}"
            )


def test_block_extraction_and_markers(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text(
        "text\n\n```python\nx = 1\n```\n\n<!-- no-test: needs timm -->\n```python\n"
        "import timm\n```\n\n```bash\nsacam methods \\\n  --markdown  # the table\n```\n"
        "```text\nnot code\n```\n",
        "utf-8",
    )
    found = blocks(page)
    assert [(b.lang, b.skip) for b in found] == [
        ("python", None),
        ("python", "needs timm"),
        ("bash", None),
    ]
    assert commands(found[2].code) == [["sacam", "methods", "--markdown"]]


# pages whose code starts other processes (Ray's)
SCRIPT_PAGES = {"tutorials/ray.md"}


def _page_param(page: Path) -> object:
    name = page.relative_to(DOCS).as_posix()
    marks = [pytest.mark.script] if name in SCRIPT_PAGES else []
    return pytest.param(page, id=name, marks=marks)


@pytest.mark.parametrize("page", [_page_param(p) for p in PAGES])
def test_page_code_runs(
    page: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = page.relative_to(DOCS).as_posix()
    if name == "tutorials/ray.md" and not os.environ.get("CI"):
        # as tests/evaluation/test_ray.py: CI installs the extra, so a missing Ray fails
        # there instead of hiding the page
        pytest.importorskip("ray", reason='the Ray tutorial needs pip install -e ".[ray]"')
    if name == "tutorials/web-app.md" and not os.environ.get("CI"):
        pytest.importorskip("fastapi", reason='the web app needs pip install -e ".[serve]"')
        pytest.importorskip("httpx", reason="the test client needs httpx")
    monkeypatch.chdir(tmp_path)
    # a page's imports come from the installed packages or from PYTHONPATH it sets itself,
    # never from the folder the test happens to run in
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])
    namespace: dict[str, object] = {"__name__": "__docs__"}
    try:
        for block in blocks(page):
            if block.skip is not None:
                continue
            where = f"{name}:{block.line}"
            if block.lang == "python" and block.title:
                # a file the reader creates (```python title="mynet.py"```)
                (tmp_path / block.title).write_text(block.code, "utf-8")
            elif block.lang == "python":
                # as in a script or a REPL run in the working folder, which is on the
                # import path during the block (and not for the `sacam` command)
                sys.path.insert(0, str(tmp_path))
                try:
                    exec(compile(block.code, where, "exec"), namespace)  # noqa: S102
                finally:
                    sys.path.remove(str(tmp_path))
                    _drop_modules_under(tmp_path)
            else:
                for words in commands(block.code):
                    run_command(words, where, monkeypatch)
    finally:
        _drop_modules_under(tmp_path)
    printed = capsys.readouterr().out
    for rel in EXPECTED_FILES.get(name, []):
        assert (tmp_path / rel).exists(), f"{name} did not write {rel}"
    for text in EXPECTED_OUTPUT.get(name, []):
        assert text in printed, f"{name} did not print {text!r}"


# ----------------------------------------------------------------- generated reference


def _gen_reference() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_methods_page_lists_every_method_with_its_options() -> None:
    gen = _gen_reference()
    page = gen.methods_page()
    for name in sacam.list_methods():
        info = sacam.method_info(name)
        assert f"\n## {name}\n" in page
        assert info.url in page and info.description in page
    section = page.split("\n## sa-cam\n", 1)[1]
    assert "| `gamma` |" in section and "| `base` | `'grad'` |" in section
    assert float(gen.option_defaults(sacam.get_method("score-cam"))["max_memory_mb"]) == 1024
    assert gen.option_defaults(sacam.get_method("grad-cam"))["fusion"] == "'max'"


def test_metrics_page_lists_every_metric_and_value() -> None:
    page = _gen_reference().metrics_page()
    for name in list_metrics():
        assert f"\n## {name}\n" in page
        for v in metric_info(name).values:
            arrow = "↑" if v.higher_is_better else "↓"
            assert f"| `{v.name}{'@ε' if v.swept else ''}` | {arrow}" in page


def test_docstring_markdown() -> None:
    gen = _gen_reference()
    doc = """Title.

        See :func:`sacam.explain` and :class:`~sacam.core.BaseCAM`.

        .. math:: w_k = \\sum A

        Example:
            >>> 1 + 1
            2
        """
    assert gen.docstring_markdown(doc).splitlines() == [
        "Title.",
        "",
        "See `sacam.explain` and `BaseCAM`.",
        "",
        "",
        "```text",
        "w_k = \\sum A",
        "```",
        "",
        "**Example**",
        "",
        "```pycon",
        ">>> 1 + 1",
        "2",
        "```",
    ]


def test_cli_page_has_every_subcommand() -> None:
    gen = _gen_reference()
    page = gen.cli_page()
    assert {"explain", "benchmark", "serve", "methods"} <= set(gen.subcommands())
    for command in gen.subcommands():
        assert f"## sacam {command}\n" in page
        assert f"usage: sacam {command}" in page
    assert "--images-per-step" in page


def test_landing_page_counts_match_the_registries() -> None:
    text = " ".join((DOCS / "index.md").read_text("utf-8").split())
    assert f"**{len(sacam.list_methods())} methods in one registry**" in text
    assert f"with {len(list_metrics())} metrics" in text


def test_changelog_page_includes_the_changelog() -> None:
    assert (ROOT / "CHANGELOG.md").read_text("utf-8").startswith("# Changelog")
    assert '--8<-- "CHANGELOG.md"' in (DOCS / "changelog.md").read_text("utf-8")


def test_nav_lists_every_page_of_the_site() -> None:
    nav = (ROOT / "mkdocs.yml").read_text("utf-8")
    for page in [*PAGES, DOCS / "index.md", DOCS / "changelog.md"]:
        assert f": {page.relative_to(DOCS).as_posix()}\n" in nav, f"{page} is not in the nav"
    for page in (DOCS / "reference" / "api").glob("*.md"):
        assert f": {page.relative_to(DOCS).as_posix()}\n" in nav, f"{page} is not in the nav"
    for generated in _gen_reference().PAGES:
        assert f": {generated}\n" in nav, f"the generated {generated} is not in the nav"


def test_no_two_pages_share_an_address() -> None:
    # mkdocs serves both NAME.md and NAME/README.md (or NAME/index.md) at NAME/: one would
    # hide the other, so the folder's index must be excluded from the site
    config = (ROOT / "mkdocs.yml").read_text("utf-8")
    for index in [*DOCS.rglob("README.md"), *DOCS.rglob("index.md")]:
        folder = index.parent
        if folder == DOCS or not folder.with_suffix(".md").exists():
            continue
        assert f"  /{index.relative_to(DOCS).as_posix()}\n" in config, (
            f"{index.relative_to(DOCS)} and {folder.with_suffix('.md').relative_to(DOCS)} "
            "would share an address: exclude the former in mkdocs.yml's exclude_docs"
        )
