"""The command line as a new user meets it: one dialect, names they type, their own model."""

from __future__ import annotations

import csv
import re

import pytest
import torch
from PIL import Image

import sacam
from sacam.cli import _parser, main
from sacam.cli._args import install_hint


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sacam: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("command", [["explain"], ["benchmark", "."]])
@pytest.mark.parametrize(
    "spelling",
    [
        ["--method", "grad-cam", "--method", "cam"],
        ["--methods", "grad-cam", "cam"],
        ["--method", "grad-cam", "--methods", "cam"],
    ],
)
def test_methods_are_one_option_with_two_forms_in_every_subcommand(command, spelling) -> None:
    args = _parser().parse_args([*command, *spelling, "--method-option", "cam:fusion=mean"])
    assert args.methods == ["grad-cam", "cam"]
    assert args.method_option == [("cam", "fusion", "mean")]


@pytest.mark.parametrize("command", [["explain"], ["benchmark", "."]])
def test_layers_are_one_option_with_two_forms(command) -> None:
    args = _parser().parse_args([*command, "--layer", "a", "--layers", "b", "c"])
    assert args.layers == ["a", "b", "c"]


def test_metrics_take_both_forms() -> None:
    args = _parser().parse_args(["benchmark", ".", "--metric", "deletion", "--metrics", "all"])
    assert args.metrics == ["deletion", "all"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["benchmark", ".", "--meth", "grad-cam"], "unrecognized arguments: --meth"),
        (["explain", "--metho", "cam"], "unrecognized arguments: --metho"),
        (["explain", "--method-opt", "cam:fusion=mean"], "unrecognized arguments"),
    ],
)
def test_prefixes_are_never_ambiguous_only_unknown(args, message, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert message in line and "ambiguous" not in line


def test_methods_name_prints_options_with_defaults(capsys) -> None:
    assert main(["methods", "sa-cam"]) == 0
    out = capsys.readouterr().out
    for option, default in (("temperature", "10.0"), ("gamma", "2.0"), ("operator", "'class'")):
        assert re.search(rf"^\s+{option}\s+= {re.escape(default)}\s+\S", out, re.M), out
    assert "--method-option sa-cam:KEY=VALUE" in out
    with pytest.raises(SystemExit) as exc:
        main(["methods", "no-such-cam"])
    assert exc.value.code == 2


def test_sa_cam_is_the_default_of_the_cli_and_the_python_api(tmp_path, capsys) -> None:
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(4, 3),
    )  # fmt: skip
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 16)
    want = sacam.explain(net, x, method="sa-cam", targets=1)
    assert torch.equal(sacam.explain(net, x, targets=1), want)
    assert main(["explain", "sample:coffee", "--out", str(tmp_path)]) == 0
    assert "method(s) sa-cam" in capsys.readouterr().out


def test_install_hint_follows_the_install(monkeypatch) -> None:
    from importlib import metadata

    class Dist:
        def __init__(self, text: str | None) -> None:
            self.text = text

        def read_text(self, name: str) -> str | None:
            return self.text

    for text, want in (
        ('{"url": "file:///src", "dir_info": {"editable": true}}', 'pip install -e ".[serve]"'),
        (None, 'pip install "sacam[serve]"'),
        ('{"url": "file:///w.whl", "archive_info": {}}', 'pip install "sacam[serve]"'),
    ):
        monkeypatch.setattr(metadata, "distribution", lambda name, t=text: Dist(t))
        assert install_hint("serve") == want


@pytest.mark.parametrize(
    ("target", "index"),
    [("tabby cat", 281), ("Egyptian_Cat", 285), ("  egyptian-cat ", 285), ("285", 285)],
)
def test_class_names_match_as_people_type_them(target, index, tmp_path, capsys) -> None:
    args = ["explain", "sample:chelsea", "--method", "cam", "--target", target]
    assert main([*args, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    name = sacam.models.imagenet_class_names()[index]
    assert f"chelsea: {name} ({index})" in out and "cam at _swish@1" in out
    (png,) = tmp_path.glob("*.png")
    assert png.name == f"chelsea_cam_{name.lower().replace(' ', '-')}.png"
    assert f"{name} ({index})" in Image.open(png).text["Title"]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("cat", r"'cat' matches \d+ classes: .*tiger cat \(282\).*Egyptian cat \(285\)"),
        ("egyptain cat", r"did you mean Egyptian cat \(285\)"),
    ],
)
def test_a_vague_or_misspelt_class_gets_candidates(target, message, tmp_path, capsys) -> None:
    args = ["explain", "sample:chelsea", "--target", target, "--out", str(tmp_path)]
    assert main(args) == 2
    assert re.search(message, _one_error_line(capsys.readouterr().err))


def test_runs_for_two_classes_or_layers_keep_their_files(tmp_path, capsys) -> None:
    for extra in (["--target", "285"], ["--target", "281"], ["--layer", "_blocks.15"], []):
        args = ["explain", "sample:chelsea", "--method", "grad-cam", *extra]
        assert main([*args, "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "chelsea_grad-cam.png",
        "chelsea_grad-cam_blocks.15.png",
        "chelsea_grad-cam_egyptian-cat.png",
        "chelsea_grad-cam_tabby.png",
    ]
    out = capsys.readouterr().out
    assert "chelsea: Egyptian cat (285) 0.38, grad-cam at _blocks.15 -> " in out


def test_folder_mode_names_a_chosen_class_and_layer(tmp_path, capsys) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    sacam.images.sample_image("chelsea").save(folder / "cat.png")
    args = ["explain", str(folder), "--method", "grad-cam", "--target", "tiger cat"]
    assert main([*args, "--layer", "_blocks.15", "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "cat_grad-cam_tiger-cat_blocks.15.png").is_file()
    assert "explaining class 282 (tiger cat) in every image" in capsys.readouterr().out


def test_folder_mode_writes_predictions_and_leaves_no_lock(tmp_path, capsys) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    sacam.images.sample_image("chelsea").save(folder / "cat.png")
    sacam.images.sample_image("coffee").save(folder / "cup.png")
    out = tmp_path / "out"
    assert main(["explain", str(folder), "--method", "cam", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "cat: Egyptian cat (0.383)" in text and "cup: espresso (0.9" in text
    with (out / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["image"], r["class_index"], r["class_name"]) for r in rows] == [
        ("cat", "285", "Egyptian cat"),
        ("cup", "967", "espresso"),
    ]
    assert sorted(p.name for p in out.iterdir()) == [
        "cat_cam.png",
        "cup_cam.png",
        "predictions.csv",
    ]


MODULE = """
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3))
"""


def test_own_model_from_the_working_folder(tmp_path, capsys, monkeypatch) -> None:
    (tmp_path / "mymodels_h7.py").write_text(MODULE)
    (tmp_path / "names.txt").write_text("apple\nbanana split\ncherry\n")
    import importlib

    torch.save(importlib.import_module("torch.nn").Linear(1, 1).state_dict(), tmp_path / "x.pt")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", ".")])
    net = MODULE  # the weights: the factory's own, saved
    del net
    namespace: dict = {}
    exec(MODULE, namespace)
    torch.save(namespace["build"]().state_dict(), tmp_path / "w.pth")
    args = ["explain", "sample:chelsea", "--model", "mymodels_h7:build", "--weights", "w.pth"]
    args += ["--class-names", "names.txt", "--size", "40", "--mean", "0.5", "0.5", "0.5"]
    args += ["--std", "0.25", "0.25", "0.25", "--target", "Banana_Split", "--method", "cam"]
    assert main([*args, "--out", "o"]) == 0
    captured = capsys.readouterr()
    assert "chelsea: banana split (1)" in captured.out and "warning" not in captured.err
    (png,) = (tmp_path / "o").glob("*.png")
    assert Image.open(png).size == (40, 40)


def test_a_module_that_is_nowhere_hints_at_pythonpath(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["explain", "--model", "nowhere_h7:build", "--out", "o"]) == 2
    assert "PYTHONPATH" in _one_error_line(capsys.readouterr().err)


def test_an_architecture_without_weights_warns_on_one_line(tmp_path, capsys, monkeypatch) -> None:
    from sacam import models

    monkeypatch.setattr(models, "_hub_architecture", lambda spec: MODULE_NET())
    assert (
        main(["explain", "sample:coffee", "--model", "torchvision:tiny", "--out", str(tmp_path)])
        == 0
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "sacam: warning: torchvision:tiny has random weights"
    )


def MODULE_NET() -> torch.nn.Module:  # noqa: N802 - a factory, named like the module's
    namespace: dict = {}
    exec(MODULE, namespace)
    return namespace["build"]()


def test_benchmark_samples_runs_with_no_download(tmp_path, capsys) -> None:
    out = tmp_path / "bench"
    args = ["benchmark", "samples", "--methods", "cam", "random", "--metrics", "complexity"]
    assert main([*args, "--out", str(out), "--limit", "2"]) == 0
    text = capsys.readouterr().out
    assert "demo set: 4 labelled sample photos" in text
    with (out / "samples" / "labels.csv").open() as f:
        rows = {r["file"]: r["class_index"] for r in csv.DictReader(f)}
    assert rows == {
        "chelsea.png": "281",
        "coffee.png": "967",
        "rocket.png": "657",
        "camera.png": "872",
    }
    assert (out / "results.csv").is_file() and (out / "report.html").is_file()
    assert "cam" in text and "random" in text
    total, maps, rest = map(
        float, re.findall(r"time: ([\d.]+) s = ([\d.]+) s .* \+ ([\d.]+) s", text)[0]
    )
    assert abs(total - maps - rest) < 0.11 and maps > 0


def test_benchmark_of_a_missing_folder_names_the_demo(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["benchmark", "imagenet-dev/"])
    assert exc.value.code == 2
    assert "'samples' for the built-in demo set" in _one_error_line(capsys.readouterr().err)


def test_the_time_line_adds_up_to_the_wall_time() -> None:
    from sacam.cli._benchmark import time_line

    summary = {
        "settings": {"images": 4},
        "table": {"a": {"time_s": {"mean": 0.5}}, "b": {"time_s": {"mean": 0.25}}},
    }
    line = time_line(summary, 10.0)
    total, maps, rest = map(float, re.findall(r"([\d.]+) s", line)[:3])
    assert (total, maps, rest) == (10.0, 3.0, 7.0) and "2.50 s per image for 2 method(s)" in line
    assert "resumed" in time_line(summary, 1.0)
