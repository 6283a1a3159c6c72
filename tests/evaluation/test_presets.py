"""``sacam benchmark --preset``: a preset expands to the documented runs, one sub-folder each."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

import sacam
from sacam.cli import main
from sacam.evaluation import presets
from sacam.evaluation.config import BenchmarkConfig
from sacam.evaluation.runner import execution
from tests.support.runs import colour_folder

DOCS = Path(__file__).resolve().parents[2] / "docs" / "evaluation.md"


def _documented_settings() -> list[tuple[str, str, str]]:
    """(setting, model, layer) rows of the preset table in docs/evaluation.md."""
    text = DOCS.read_text()
    block = re.search(r"<!-- preset-paper:start -->\n(.*?)<!-- preset-paper:end -->", text, re.S)
    assert block, "docs/evaluation.md lacks the preset-paper table"
    rows = []
    for line in block.group(1).splitlines()[2:]:
        cells = [c.strip().strip("`") for c in line.strip("|").split("|")]
        rows.append((cells[0], cells[1], cells[2].split(" ")[0].strip("`")))
    return rows


def test_paper_preset_expands_to_the_documented_runs(tmp_path) -> None:
    base = BenchmarkConfig(tmp_path / "data", out=tmp_path / "out", limit=7, device="cpu")
    base.method_options = {"sa-cam": {"gamma": 1.0}}
    runs = presets.expand_preset("paper", base)
    documented = _documented_settings()
    assert [(r.out.name, r.model, r.layer[0] if r.layer else "automatic") for r in runs] == [
        (name, model, layer) for name, model, layer in documented
    ]
    for r in runs:
        assert r.out.parent == tmp_path / "out"
        assert r.methods == sacam.list_methods()  # every registered method
        assert r.metrics == list(presets.PAPER.metrics)
        assert r.limit == 7 and r.method_options == {"sa-cam": {"gamma": 1.0}}
    runs[0].method_options["sa-cam"]["gamma"] = 3.0  # runs do not share mutable options
    assert runs[1].method_options["sa-cam"]["gamma"] == 1.0
    only = presets.expand_preset("paper", base, only=["lite0-blocks15"], methods=["grad-cam"])
    assert [(r.out.name, r.layer, r.methods) for r in only] == [
        ("lite0-blocks15", ["_blocks.15"], ["grad-cam"])
    ]


def test_preset_refuses_what_it_sets(tmp_path) -> None:
    base = BenchmarkConfig(tmp_path, layer=["_blocks.15"])
    with pytest.raises(sacam.SacamError, match="drop --model, --weights and --layer"):
        presets.expand_preset("paper", base)
    with pytest.raises(sacam.SacamError, match="no setting lite9; valid: lite0-head"):
        presets.expand_preset("paper", BenchmarkConfig(tmp_path), only=["lite9"])
    with pytest.raises(sacam.SacamError, match="unknown preset 'nope'"):
        presets.expand_preset("nope", BenchmarkConfig(tmp_path))


def test_cli_preset_runs_each_setting_into_its_sub_folder(tmp_path, monkeypatch, capsys) -> None:
    """A tiny preset (two layers of the colour net), through the real CLI and runner."""
    tiny = presets.Preset(
        "paper",
        (
            presets.Setting("net-auto", "tests.support.nets:colour_net", None, "automatic layer"),
            presets.Setting("net-conv", "tests.support.nets:colour_net", ("0",), "the conv layer"),
        ),
        ("confidence", "adversarial"),
    )
    monkeypatch.setitem(presets.PRESETS, "paper", tiny)
    seen: list[tuple[str, object, list[str]]] = []
    real = execution.run_benchmark

    def spy(config, **kw):  # noqa: ANN001, ANN202
        seen.append((config.out.name, config.layer, config.methods))
        return real(config, **kw)

    monkeypatch.setattr(execution, "run_benchmark", spy)
    monkeypatch.setattr("sacam.evaluation.runner.run_benchmark", spy)
    data = colour_folder(tmp_path, n=2)
    out = tmp_path / "out"
    args = ["benchmark", str(data), "--preset", "paper", "--out", str(out), "--methods"]
    args += ["grad-cam", "random", "--epsilons", "2", "--adv-iterations", "1", "--workers", "0"]
    assert main(args) == 0
    assert seen == [
        ("net-auto", None, ["grad-cam", "random"]),
        ("net-conv", ["0"], ["grad-cam", "random"]),
    ]
    for name in ("net-auto", "net-conv"):
        rows = list(csv.DictReader((out / name / "results.csv").open()))
        assert {r["metric"] for r in rows} >= {"average_drop", "adv_fgsm_topk@2", "time_s"}
        assert len({(r["image"], r["method"]) for r in rows}) == 2 * 2
    printed = capsys.readouterr().out
    assert "== net-auto" in printed and "== net-conv" in printed
    assert main(["benchmark", str(data), "--preset", "paper", "--layer", "0"]) == 2
    assert main(["benchmark", str(data), "--preset-settings", "net-auto"]) == 2
