"""The README stays true: a short landing page whose examples run and whose test command is CI's.

The method table lives in the user guide (docs/guide.md) and is the registry's.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

import sacam
from sacam.cli import main as cli_main
from sacam.evaluation.registry import list_metrics
from sacam.registry import methods_table

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
GUIDE = ROOT / "docs" / "guide.md"


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def test_guide_method_table_matches_registry() -> None:
    block = re.search(
        r"<!-- methods-table:start -->\n(.*?)\n<!-- methods-table:end -->", GUIDE.read_text(), re.S
    )
    assert block, "docs/guide.md lacks the methods-table markers"
    assert block.group(1).strip() == methods_table().strip(), (
        "docs/guide.md's method table is stale: paste sacam.registry.methods_table()"
    )


def test_ci_runs_the_readme_test_command() -> None:
    text = README.read_text()
    quick = text.split("## Quickstart", 1)[1].split("```", 2)[1]
    commands = [ln for ln in quick.splitlines()[1:] if ln.strip() and not ln.startswith("#")]
    assert len(commands) == 2
    assert commands[1] in (ROOT / ".ci" / "run").read_text()


def test_readme_is_a_landing_page_whose_counts_hold() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    assert f"**{len(sacam.list_methods())} methods in one registry**" in text
    assert f"{len(list_metrics())} metrics" in text
    for link in re.findall(r"\]\(([^)#]+)\)", text):
        if not link.startswith("http"):
            assert (ROOT / link).exists(), f"README links to a missing file: {link}"


@pytest.mark.script
def test_readme_examples_run_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every ``sacam`` line of the README's Command line and Benchmark blocks, then its Python."""
    monkeypatch.chdir(tmp_path)
    text = README.read_text()
    lines = [
        ln.split("  #", 1)[0].strip()
        for section in ("## Command line", "## Benchmark")
        for ln in _blocks(text.split(section, 1)[1], "bash")[0].splitlines()
        if ln.strip().startswith("sacam ")
    ]
    assert len(lines) >= 5
    for line in lines:
        assert cli_main(shlex.split(line)[1:]) == 0, line
    out = capsys.readouterr().out
    assert "tabby (281)" in out and "sa-cam at _blocks.15" in out
    assert (tmp_path / "runs" / "demo" / "report.html").exists()
    (python,) = _blocks(text.split("## Python", 1)[1].split("## ", 1)[0], "python")
    exec(compile(python, "README.md", "exec"), {})  # noqa: S102
    assert (tmp_path / "cat.png").stat().st_size > 0
