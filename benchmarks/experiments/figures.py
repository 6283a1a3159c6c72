"""Figures of docs/sa-cam.md: SA-CAM beside its base on the sample photos, and its attention.

Usage: python benchmarks/experiments/figures.py --out docs/images
"""

from __future__ import annotations

import argparse
from pathlib import Path

import sacam
from sacam.images import SAMPLE_IMAGES, sample_image
from sacam.models import load_model
from sacam.viz import save_attention, save_grid


def main() -> int:
    """Write sa-cam-vs-base.png and sa-cam-attention.png."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/images"))
    args = ap.parse_args()
    lm = load_model()
    pics = [sample_image(n) for n in SAMPLE_IMAGES]
    x = lm.preprocess.batch(pics)
    pixels = [lm.preprocess.pixels(p) for p in pics]
    full = sacam.explain_full(lm.model, x, method="sa-cam")
    maps = {
        "grad-cam (base)": sacam.explain(lm.model, x, method="grad-cam"),
        "sa-cam (default)": full.maps,
        "grad-cam++": sacam.explain(lm.model, x, method="grad-cam++"),
    }
    assert full.class_idx is not None and full.probabilities is not None  # a classifier
    titles = [
        f"{n}: {lm.class_name(int(c))} {float(p):.2f}"
        for n, c, p in zip(SAMPLE_IMAGES, full.class_idx, full.probabilities, strict=True)
    ]
    save_grid(pixels, maps, args.out / "sa-cam-vs-base.png", titles=titles)
    info = full.extras["sa-cam"][full.layers[0]]
    save_attention(
        pixels[0],
        full.maps[0],
        info.attention_row(0, 3, 3),
        (3, 3),
        args.out / "sa-cam-attention.png",
        title=titles[0],
    )
    print(f"wrote {args.out}/sa-cam-vs-base.png and {args.out}/sa-cam-attention.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
