"""--save-maps / --from-maps: every map kept as float16 shards, scored later without recomputing."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

import sacam
from sacam.cli import main
from sacam.evaluation import complexity, faithfulness, run_benchmark
from sacam.evaluation.runner import state
from sacam.evaluation.runner.maps import MapReader
from tests.support.runs import colour_folder, run_config


def _values(out) -> dict[tuple[str, str, str], float]:
    with (out / "results.csv").open() as f:
        return {
            (r["image"], r["method"], r["metric"]): float(r["value"]) for r in csv.DictReader(f)
        }


def test_saved_maps_are_float16_shards_keyed_by_image_and_method(tmp_path) -> None:
    data = colour_folder(tmp_path, n=5)
    out = tmp_path / "a"
    run_benchmark(
        run_config(data, out, metrics=["deletion"], images_per_step=2, save_maps=True),
        progress=False,
    )
    shards = sorted((out / "maps" / "grad-cam").glob("shard-*.npz"))
    assert len(shards) == 3  # batches of 2, 2 and 1
    with np.load(shards[0]) as z:
        assert z["maps"].dtype == np.float16 and z["maps"].shape == (2, 32, 32)
        assert z["images"].tolist() == ["img0.png", "img1.png"]
    lm = sacam.models.with_preprocess(
        sacam.models.load_model("tests.support.nets:colour_net"), size=32
    )
    x = torch.stack(
        [lm.preprocess(sacam.images.load_image(data / f"img{i}.png")) for i in range(5)]
    )
    expected = sacam.explain(lm.model, x, method="grad-cam")
    maps, classes, _ = MapReader(out / "maps").load("grad-cam", [f"img{i}.png" for i in range(5)])
    torch.testing.assert_close(maps, expected, atol=2**-11, rtol=0)  # float16 rounding of [0, 1]
    assert classes.tolist() == lm.model(x).argmax(1).tolist()


def test_from_maps_scores_new_metrics_without_recomputing(tmp_path, monkeypatch) -> None:
    data = colour_folder(tmp_path, n=3)
    first = tmp_path / "a"
    run_benchmark(run_config(data, first, metrics=["deletion"], save_maps=True), progress=False)

    def no_recompute(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a map was recomputed")

    monkeypatch.setattr(state, "build_method", no_recompute)
    second = tmp_path / "b"
    cfg = run_config(data, second, metrics=["complexity", "deletion"], from_maps=first / "maps")
    run_benchmark(cfg, progress=False)
    values = _values(second)
    reader = MapReader(first / "maps")
    lm = sacam.models.with_preprocess(
        sacam.models.load_model("tests.support.nets:colour_net"), size=32
    )
    for method in ("grad-cam", "random"):
        names = [f"img{i}.png" for i in range(3)]
        maps, classes, _ = reader.load(method, names)
        x = torch.stack([lm.preprocess(sacam.images.load_image(data / n)) for n in names])
        gini = complexity.gini(maps)
        auc = faithfulness.deletion(lm.model, x, maps, classes, steps=8).auc
        for i, name in enumerate(names):
            assert values[(name, method, "sparsity")] == pytest.approx(float(gini[i]), rel=1e-6)
            assert values[(name, method, "deletion")] == pytest.approx(float(auc[i]), rel=1e-5)


def test_cli_from_maps_takes_the_saved_methods_and_reports_missing_maps(tmp_path, capsys) -> None:
    data = colour_folder(tmp_path, n=2)
    base = ["benchmark", str(data), "--model", "tests.support.nets:colour_net", "--steps", "4"]
    assert (
        main(
            [
                *base,
                "--out",
                str(tmp_path / "a"),
                "--methods",
                "random",
                "cam",
                "--save-maps",
                "--limit",
                "1",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main([*base, "--out", str(tmp_path / "b"), "--from-maps", str(tmp_path / "a" / "maps")])
        == 0
    )
    summary = (tmp_path / "b" / "summary.md").read_text()
    assert "| cam |" in summary and "| random |" in summary and "grad-cam" not in summary
    with (tmp_path / "b" / "failures.csv").open() as f:
        failures = list(csv.DictReader(f))
    assert {(r["image"], r["method"]) for r in failures} == {
        ("img1.png", "cam"),
        ("img1.png", "random"),
    }
    assert all("no saved map of 'img1.png'" in r["error"] for r in failures)


def test_layer_and_method_options_reach_every_map(tmp_path) -> None:
    data = colour_folder(tmp_path, n=3)
    out = tmp_path / "a"
    code = main(
        ["benchmark", str(data), "--out", str(out), "--model", "tests.support.nets:small_cnn",
         "--methods", "grad-cam", "random", "--metrics", "complexity", "--save-maps",
         "--layer", "0", "--method-option", "random:seed=5"]
    )  # fmt: skip
    assert code == 0
    lm = sacam.models.with_preprocess(sacam.models.load_model("tests.support.nets:small_cnn"))
    names = [f"img{i}.png" for i in range(3)]
    x = torch.stack([lm.preprocess(sacam.images.load_image(data / n)) for n in names])
    reader = MapReader(out / "maps")
    for method, options in (("grad-cam", {}), ("random", {"seed": 5})):
        expected = sacam.explain(lm.model, x, method=method, layer="0", **options)
        maps, _, _ = reader.load(method, names)
        torch.testing.assert_close(maps, expected, atol=2**-11, rtol=0)
    automatic = sacam.explain(lm.model, x, method="grad-cam")  # the last conv block
    assert (automatic - reader.load("grad-cam", names)[0]).abs().max() > 0.1  # the layer counts


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layer", "nope"], "nope"),
        (["--method-option", "sa-cam:nope=1"], "has no option 'nope'"),
        (["--method-option", "grad-cam"], "METHOD:KEY=VALUE"),
        (["--method-option", "nocam:seed=1"], "unknown method 'nocam'"),
    ],
)
def test_bad_layer_or_method_option_exits_2_before_work(tmp_path, capsys, args, message) -> None:
    data = colour_folder(tmp_path, n=2)
    out = tmp_path / "o"
    try:
        code = main(
            ["benchmark", str(data), "--out", str(out), "--model", "tests.support.nets:colour_net",
             "--methods", "grad-cam", "--metrics", "complexity", *args]
        )  # fmt: skip
    except SystemExit as exc:  # argparse's checks exit before main returns
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (out / "results.csv").exists() and not (out / "predictions.csv").exists()
