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
    from sacam.models import sample_image

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
    assert (out / "cat_grad-cam.png").exists() and (out / "coffee_cam.png").exists()
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


def test_console_script_runs(tmp_path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "sacam.cli", "methods"], capture_output=True, text=True, check=True
    )
    assert "grad-cam++" in res.stdout
