"""The README stays true: its method table is the registry's, its quickstart is CI's."""

from __future__ import annotations

import re
from pathlib import Path

from sacam.registry import methods_table

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def test_readme_method_table_matches_registry() -> None:
    text = README.read_text()
    block = re.search(
        r"<!-- methods-table:start -->\n(.*?)\n<!-- methods-table:end -->", text, re.S
    )
    assert block, "README lacks the methods-table markers"
    assert block.group(1).strip() == methods_table().strip(), (
        "README method table is stale: paste sacam.registry.methods_table()"
    )


def test_ci_runs_the_readme_test_command() -> None:
    text = README.read_text()
    quick = text.split("## Quickstart", 1)[1].split("```", 2)[1]
    commands = [ln for ln in quick.splitlines()[1:] if ln.strip() and not ln.startswith("#")]
    assert len(commands) == 2
    assert commands[1] in (ROOT / ".ci" / "run").read_text()
