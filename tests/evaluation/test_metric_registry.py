"""The metric registry: directions, CLI choices, docs table, one-function metrics, old imports."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import torch

import sacam
from sacam.cli import main
from sacam.evaluation import registry
from sacam.evaluation.registry import MetricOutput, register_metric
from tests.support.runs import colour_folder, run_config

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guide.md"


def test_directions_follow_the_protocols() -> None:
    d = {k: v.higher_is_better for k, v in registry.value_directions().items()}
    # lower is better for the drop, deletion AUC and MoRF; higher for the rest listed
    assert (d["average_drop"], d["deletion"], d["road_morf"]) == (False, False, False)
    assert (d["insertion"], d["road_gap"], d["pointing_game"], d["average_gain"]) == (
        True,
        True,
        True,
        True,
    )
    assert registry.arrow("deletion") == "↓" and registry.arrow("insertion") == "↑"
    assert registry.metric_info("pointing").needs == {"annotations"}
    assert registry.default_metrics() == ["confidence", "deletion", "insertion", "complexity"]


def test_guide_metric_table_matches_registry() -> None:
    block = re.search(
        r"<!-- metrics-table:start -->\n(.*?)\n<!-- metrics-table:end -->", GUIDE.read_text(), re.S
    )
    assert block, "docs/guide.md lacks the metrics-table markers"
    assert block.group(1).strip() == registry.metrics_table().strip(), (
        "docs/guide.md's metric table is stale: paste sacam.evaluation.metrics_table()"
    )


def test_cli_metric_choices_are_the_registry(capsys, tmp_path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["benchmark", str(tmp_path), "--metrics", "nope"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    for name in registry.list_metrics():
        assert name in err


def test_names_are_checked_and_unique() -> None:
    with pytest.raises(sacam.SacamError, match="lower case"):
        register_metric("Bad-Name", values=[], source="")
    with pytest.raises(sacam.SacamError, match="already registered"):
        register_metric("deletion", values=[], source="")(lambda b: MetricOutput({}))
    with pytest.raises(sacam.SacamError, match="unknown metric 'nope'; valid: confidence"):
        registry.metric_info("nope")


def test_a_new_metric_is_one_decorated_function(tmp_path) -> None:
    @register_metric(
        "peak_share", values=[("peak_share", True, "max / sum of the map")], source="a test"
    )
    def _peak(batch):  # noqa: ANN001, ANN202
        m = batch.maps.flatten(1)
        return MetricOutput({"peak_share": m.max(1).values / m.sum(1)})

    try:
        data = colour_folder(tmp_path, n=3)
        out = tmp_path / "out"
        summary = sacam.evaluation.run_benchmark(
            run_config(data, out, metrics=["peak_share"]), progress=False
        )
        rows = [
            r for r in csv.DictReader((out / "results.csv").open()) if r["metric"] == "peak_share"
        ]
        assert len(rows) == 3 * 2  # images × methods
        lm = sacam.models.load_model("tests.support.nets:colour_net")
        pre = sacam.models.with_preprocess(lm, size=32).preprocess
        r = next(r for r in rows if r["method"] == "grad-cam" and r["image"] == "img0.png")
        x = pre(sacam.images.load_image(data / "img0.png"))[None]
        maps = sacam.explain(lm.model, x, method="grad-cam")
        expected = float(maps.max() / maps.sum())
        assert float(r["value"]) == pytest.approx(expected, rel=1e-4)
        assert summary["table"]["grad-cam"]["peak_share"]["higher_is_better"] is True
        assert "peak_share ↑" in (out / "summary.md").read_text()
    finally:
        registry._METRICS.pop("peak_share")


def test_values_carry_their_direction() -> None:
    from sacam.evaluation.registry import value_directions
    from sacam.evaluation.stats import MeanAccumulator

    assert value_directions()["deletion"].higher_is_better is False
    assert value_directions()["insertion"].higher_is_better is True
    acc = MeanAccumulator("deletion")
    acc.update(torch.tensor([0.2, 0.4]))
    assert acc.compute()["mean"] == pytest.approx(0.3) and acc.higher_is_better is False
