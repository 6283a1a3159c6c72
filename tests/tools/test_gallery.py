"""Smoke test of tools/gallery.py, the generator of docs/gallery.md's figures and table."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from PIL import Image

from tests.support.tools import ROOT

pytestmark = pytest.mark.script


def test_the_gallery_script_draws_every_tile_and_fills_the_page(tmp_path) -> None:
    page = tmp_path / "gallery.md"
    shutil.copy(ROOT / "docs" / "gallery.md", page)
    out = tmp_path / "images"
    args = ["--methods", "grad-cam", "sa-cam", "--photos", "1", "--threads", "1"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gallery.py"), *args, "--out", str(out)]
        + ["--page", str(page)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # SA-CAM first; one row per layer: the photo and 2 tiles, 1.45 in at 80 dpi each
    assert done.stdout.index("default sa-cam") < done.stdout.index("default grad-cam")
    for name in ("gallery.png", "gallery-default.png", "gallery-blocks10.png"):
        with Image.open(out / name) as image:
            assert image.size == (round(3 * 1.45 * 80), round((1.45 + 0.5) * 80))
            assert image.mode == "P"  # palette: small files
    text = page.read_text()
    assert "(filled in by the script)" not in text
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    table = [r for r in rows if "gradient" in r or "attention" in r]
    assert [r.split("|")[1].strip() for r in table] == ["`sa-cam`", "`grad-cam`"]
    assert all("`_blocks.10`" in r and "`_swish@1`" in r for r in table)
    assert "threads" in text and "torch" in text
