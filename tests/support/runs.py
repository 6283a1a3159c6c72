"""A labelled folder of coloured images for colour_net, and a small benchmark configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sacam.evaluation.config import BenchmarkConfig
from sacam.preprocess import Preprocess

from .nets import colour_net

TINTS = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (0.1, 0.1, 0.1), (1, 1, 1), (1, 0.2, 0.2)]


def colour_folder(tmp_path: Path, n: int = 6) -> Path:
    """n images whose dominant colours give colour_net distinct classes; labels = top-1."""
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    net = colour_net().eval()
    pre = Preprocess(size=32)
    rows = ["file,class_index,name"]
    for i in range(n):
        tint = np.array(TINTS[i % len(TINTS)])
        arr = ((0.5 + 0.5 * rng.random((40, 48, 3))) * tint * 255).astype(np.uint8)
        Image.fromarray(arr).save(data / f"img{i}.png")
        with torch.no_grad():
            top = int(net(pre(Image.fromarray(arr))[None]).argmax())
        rows.append(f"img{i}.png,{top},thing")
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    return data


def run_config(data: Path, out: Path, **kw: Any) -> BenchmarkConfig:
    return BenchmarkConfig(
        data_dir=data,
        out=out,
        model="tests.support.nets:colour_net",
        image_size=32,
        methods=["grad-cam", "random"],
        metrics=kw.pop("metrics", ["confidence", "deletion", "insertion", "complexity"]),
        steps=kw.pop("steps", 8),
        **kw,
    )
