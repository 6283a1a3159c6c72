"""The command line end to end."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sacam.cli import main


def test_cli_defaults_write_pngs(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code = main(["explain", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "chelsea: top-5 Egyptian cat" in text
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(pngs) == 4 and any(p.startswith("chelsea_") for p in pngs)
    img = Image.open(out / pngs[0])
    assert img.size == (224, 224)
    assert np.asarray(img).std() > 10  # a real picture, not a blank


def test_cli_several_methods_make_a_grid(tmp_path, capsys) -> None:
    src = tmp_path / "cat.png"
    from sacam.images import sample_image

    sample_image("chelsea").save(src)
    out = tmp_path / "out"
    code = main(
        [
            "explain",
            str(src),
            "sample:coffee",
            "--method",
            "grad-cam",
            "--method",
            "cam",
            "--out",
            str(out),
            "--target",
            "285",
        ]
    )
    assert code == 0
    assert (out / "comparison.png").exists()
    # --target 285: the explained class joins the names (runs for other classes keep theirs)
    assert (out / "cat_grad-cam_egyptian-cat.png").exists()
    assert (out / "coffee_cam_egyptian-cat.png").exists()
    assert "wrote 5 PNG file(s)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["explain", "missing.jpg"], 3, "image not found"),
        (["explain", "sample:chelsea", "--target", "1000"], 2, "out of range"),
        (["explain", "sample:chelsea", "--target", "unicorn"], 2, "neither a class index"),
        (["explain", "sample:chelsea", "--layer", "_nope"], 2, "no layer named '_nope'.*_swish"),
        (["explain", "sample:chelsea", "--model", "nope-net"], 2, "unknown model"),
    ],
)
def test_cli_errors(args, code, message, capsys, tmp_path) -> None:
    assert main([*args, "--out", str(tmp_path)]) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    import re

    assert re.search(message, err), err


def test_cli_unknown_method_lists_choices(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["explain", "--method", "nope"])
    assert exc.value.code == 2
    assert "grad-cam" in capsys.readouterr().err


@pytest.mark.script
def test_console_script_runs(tmp_path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "sacam.cli", "methods"], capture_output=True, text=True, check=True
    )
    assert "grad-cam++" in res.stdout


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sacam: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["explain", "--cmap", "nocmap"], r"--cmap: unknown colour map 'nocmap'.*viridis"),
        (["explain", "--device", "nonsense"], r"--device: .*cpu, cuda, cuda:N or mps"),
        (["explain", "--alpha", "1.5"], r"--alpha: 1.5 is outside \[0, 1\]"),
        (["explain", "--alpha", "nan"], r"--alpha: nan is outside"),
        (["explain", "--images-per-step", "0"], r"--images-per-step: 0 is below the minimum of 1"),
        (["explain", "--images-per-step", "x"], r"--images-per-step: 'x' is not a whole number"),
        (["explain", "--weights", "no-such.pth"], r"--weights: no such file"),
        (["explain", "--method", "nope"], r"--method: invalid choice.*grad-cam"),
        (["benchmark"], r"the following arguments are required: data_dir"),
        (["benchmark", "no-such-folder"], r"data_dir: no such folder"),
        (["benchmark", ".", "--limit", "0"], r"--limit: 0 is below the minimum of 1"),
        (["benchmark", ".", "--iterations", "-3"], r"--iterations: -3 is below"),
        (["benchmark", ".", "--steps", "0"], r"--steps: 0 is below"),
        (["benchmark", ".", "--grid-threshold", "2"], r"--grid-threshold: 2 is outside"),
        (["benchmark", ".", "--annotations", "none.csv"], r"--annotations: no such file"),
        (["methods", "--bogus"], r"unrecognized arguments: --bogus"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, message, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    import re

    line = _one_error_line(capsys.readouterr().err)
    assert re.search(message, line), line
    assert not (tmp_path / "sacam-out").exists()  # nothing was done


def test_cuda_device_without_cuda_is_a_bad_argument(capsys, monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exc:
        main(["explain", "--device", "cuda"])
    assert exc.value.code == 2
    assert "CUDA is not available" in _one_error_line(capsys.readouterr().err)


def test_out_must_be_a_usable_folder(tmp_path, capsys) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out, message in ((afile, "is a file"), (afile / "sub", "lies under the file")):
        for command in (["explain", "sample:chelsea"], ["benchmark", str(tmp_path)]):
            with pytest.raises(SystemExit) as exc:
                main([*command, "--out", str(out)])
            assert exc.value.code == 2
            assert message in _one_error_line(capsys.readouterr().err)


def test_unreadable_images_are_reported_and_the_rest_explained(tmp_path, capsys) -> None:
    from tests.support.files import blank_1bit_png

    huge = tmp_path / "huge.png"
    blank_1bit_png(huge, 30000, 30000)
    out = tmp_path / "out"
    args = ["explain", str(huge), "sample:chelsea", str(tmp_path / "missing.jpg")]
    code = main([*args, "--method", "grad-cam", "--out", str(out)])
    assert code == 3
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("sacam: error: ") for line in lines)
    assert "huge.png is too large" in lines[0] and "image not found" in lines[1]
    assert sorted(p.name for p in out.iterdir()) == ["chelsea_grad-cam.png"]


def test_explain_refuses_a_model_file_that_runs_code(tmp_path, capsys) -> None:
    from tests.support.files import exported_cnn, pickled_weight, rewrite_archive

    marker = tmp_path / "marker"
    evil = exported_cnn(tmp_path / "evil.pt2")
    rewrite_archive(evil, pickled_weight(marker))
    code = main(["explain", "sample:chelsea", "--model", str(evil), "--out", str(tmp_path)])
    assert code == 2
    assert "--trust-model-file" in _one_error_line(capsys.readouterr().err)
    assert not marker.exists()


def test_resize_squash_reaches_the_model_in_both_explain_modes(tmp_path, capsys) -> None:
    """``--resize squash`` feeds the whole image, squashed, not the centre crop."""
    import torch

    from sacam.api import build_method
    from sacam.images import sample_image
    from sacam.models import load_model
    from sacam.preprocess import TF_LITE_MEAN, TF_LITE_STD, Preprocess

    img = sample_image("chelsea")  # 451 x 300: crop and squash differ
    lm = load_model()
    probs = {}
    for mode in ("crop", "squash"):
        pre = Preprocess(224, mode, TF_LITE_MEAN, TF_LITE_STD)  # built here, independently
        x = pre.normalize(pre.pixels(img))[None]
        with torch.no_grad():
            probs[mode] = torch.softmax(lm.model(x), 1)[0].max().item()
        if mode == "squash":
            want = build_method(lm.model, "grad-cam")(x, None)[0].detach().numpy()
    assert f"{probs['crop']:.3f}" != f"{probs['squash']:.3f}"
    for mode, extra in (("crop", []), ("squash", ["--resize", "squash"])):
        assert (
            main(
                [
                    "explain",
                    "sample:chelsea",
                    "--method",
                    "grad-cam",
                    "--out",
                    str(tmp_path / mode),
                    *extra,
                ]
            )
            == 0
        )
        assert f"Egyptian cat ({probs[mode]:.3f})" in capsys.readouterr().out
    folder = tmp_path / "in"
    folder.mkdir()
    img.save(folder / "cat.png")
    args = ["explain", str(folder), "--method", "grad-cam", "--save-maps", "--resize", "squash"]
    assert main([*args, "--out", str(tmp_path / "folder")]) == 0
    got = np.load(tmp_path / "folder" / "cat_grad-cam.npy").astype(np.float32)
    assert got.shape == want.shape and np.abs(got - want).max() < 2e-3  # float16 on disk
