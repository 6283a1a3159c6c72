"""Parity of sacam's methods with pytorch-grad-cam 1.5.7 on real images (docs/parity.md).

For each image of a folder (preprocessed for the default model, EfficientNet-Lite0) and
each target layer, compares sacam's map with pytorch-grad-cam's for the same class (the
top-1 class) by the Pearson correlation over the 224×224 pixels, and prints the mean,
the minimum and the share of images with r > 0.99.

Needs pytorch-grad-cam, which needs torchvision, which cannot share a venv with
sacam's torch 2.13 test environment: run it in a side venv::

    python3 -m venv /work/peers-venv
    /work/peers-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 grad-cam==1.5.7
    /work/peers-venv/bin/pip install -e .
    /work/peers-venv/bin/python benchmarks/experiments/parity_pytorch_grad_cam.py \
        /work/shared/data/imagenet-dev

Layers: ``_blocks.15`` (the last MBConv block) and ``_bn1`` (the head's batch norm, the
last layer that runs once per forward pass: the head's ReLU6 module also runs at the
stem, and pytorch-grad-cam takes modules, not calls). ``--json`` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import sacam
from sacam.images import load_image
from sacam.models import load_model

LAYERS = ("_blocks.15", "_bn1")
SESS_SCALES = 4  # 13 windows per image instead of the default 12 scales' 155


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two maps (NaN if either is constant)."""
    a = a.ravel().astype(np.float64)
    b = b.ravel().astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def load_batch(folder: Path, limit: int | None) -> tuple[list[str], torch.Tensor]:
    """The folder's images (sorted), preprocessed for the default model."""
    pre = load_model().preprocess
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))[
        :limit
    ]
    return [p.name for p in paths], torch.stack([pre(load_image(p)) for p in paths])


def peer_maps(
    name: str,
    net: torch.nn.Module,
    layer: torch.nn.Module | list[torch.nn.Module],
    x: torch.Tensor,
    cls: int,
    options: dict | None = None,
) -> np.ndarray:
    """pytorch-grad-cam 1.5.7's map of one image ``(1, 3, H, W)`` for class ``cls``."""
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    targets = [ClassifierOutputTarget(cls)]
    if isinstance(layer, list):  # refine-cam: several layers
        base = pgc.GradCAM if (options or {}).get("base") == "grad-cam" else pgc.GradCAMPlusPlus
        return pgc.RefineCAM(net, layer, base_method=base)(x, targets)[0]
    if name == "fem":
        with pgc.FEM(net, [layer]) as cam:
            return cam(x, targets)[0]
    if name == "kpca-cam":
        with pgc.KPCA_CAM(net, [layer]) as cam:
            return cam(x, targets)[0]
    if name == "shapley-cam":
        with pgc.ShapleyCAM(net, [layer]) as cam:
            return cam(x, targets)[0]
    if name == "finer-cam":
        with pgc.FinerCAM(net, [layer], base_method=pgc.GradCAM) as cam:
            return cam(x, targets=None)[0]  # its default: top-1 against 3 nearest logits
    if name == "fullgrad":
        with pgc.FullGrad(net, []) as cam:  # every Conv2d/BatchNorm2d with a bias
            return cam(x, targets)[0]
    if name == "seg-eigen-cam":
        with pgc.SegEigenCAM(net, [layer]) as cam:
            return cam(x, targets)[0]
    if name == "sess":
        with pgc.SESS(net, [layer], num_scales=SESS_SCALES, batch_size=16) as cam:
            return cam(x, targets)[0]
    if name == "guided-grad-cam":
        with pgc.GradCAM(net, [layer]) as cam:
            mask = cam(x, targets)[0]
        gb = pgc.GuidedBackpropReLUModel(net, device=x.device)(x, target_category=cls)
        return np.abs(mask[:, :, None] * gb).max(axis=2)  # sacam's channels="max-abs"
    raise ValueError(name)


# (method, sacam options, label); the first of each method is the one meant to match
COMPARISONS: list[tuple[str, dict, str]] = [
    ("fem", {}, "default"),
    ("kpca-cam", {}, "default (scikit-learn's sign)"),
    ("kpca-cam", {"sign": "activation"}, 'sign="activation"'),
    ("shapley-cam", {}, "default"),
    ("finer-cam", {}, "default"),
    ("guided-grad-cam", {"variant": "pytorch-grad-cam"}, 'variant="pytorch-grad-cam"'),
    ("guided-grad-cam", {}, "default (ReLU6 guided too)"),
    ("fullgrad", {"variant": "pytorch-grad-cam"}, 'variant="pytorch-grad-cam"'),
    ("fullgrad", {}, "default (authors' code)"),
    ("refine-cam", {"variant": "pytorch-grad-cam"}, 'variant="pytorch-grad-cam"'),
    ("refine-cam", {"base": "grad-cam"}, 'base="grad-cam" (both)'),
    ("refine-cam", {}, "default (Grad-CAM++ of its paper)"),
    ("seg-eigen-cam", {}, "default"),
    ("sess", {"num_scales": SESS_SCALES}, f"num_scales={SESS_SCALES} (both libraries)"),
]
# refine-cam multiplies the maps of several layers (14 × 14 and 7 × 7; 28, 14 and 7)
REFINE_LAYERS = (("_blocks.10", "_blocks.15"), ("_blocks.4", "_blocks.10", "_blocks.15"))


def summarise(method: str, label: str, layer: str, rs: list[float], t0: float) -> dict[str, Any]:
    """One row of the table: mean, minimum and share above 0.99 of the r values; printed."""
    r = np.array(rs)
    ok = r[np.isfinite(r)]
    row: dict[str, Any] = {
        "method": method,
        "options": label,
        "layer": layer,
        "images": len(r),
        "constant": int((~np.isfinite(r)).sum()),
        "mean_r": float(ok.mean()) if ok.size else float("nan"),
        "min_r": float(ok.min()) if ok.size else float("nan"),
        "share_above_0.99": float((ok > 0.99).mean()) if ok.size else float("nan"),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(
        f"{method:16s} {label:52s} {layer:16s} n={row['images']:3d} "
        f"mean r={row['mean_r']:.5f} min r={row['min_r']:.5f} "
        f"r>0.99: {100 * row['share_above_0.99']:.0f}%",
        flush=True,
    )
    return row


def grad_cam_rows(
    net: torch.nn.Module, x: torch.Tensor, top: torch.Tensor, methods: list[str] | None
) -> list[dict[str, Any]]:
    """The comparisons with pytorch-grad-cam on the default model."""
    rows = []
    for method, options, label in COMPARISONS:
        if methods and method not in methods:
            continue
        layers: tuple = LAYERS
        if method == "fullgrad":
            layers = (None,)
        elif method == "refine-cam":
            layers = REFINE_LAYERS
        for layer_name in layers:
            t0 = time.perf_counter()
            rs = []
            for i in range(len(x)):
                xi, c = x[i : i + 1], int(top[i])
                lay = list(layer_name) if isinstance(layer_name, tuple) else layer_name or "_bn1"
                ours = sacam.explain(net, xi, method=method, layer=lay, targets=c, **options)
                module = (
                    [net.get_submodule(n) for n in lay]
                    if isinstance(lay, list)
                    else net.get_submodule(lay)
                )
                theirs = peer_maps(method, net, module, xi.clone(), c, options)
                rs.append(pearson(ours[0].numpy(), theirs))
            shown = "+".join(layer_name) if isinstance(layer_name, tuple) else layer_name
            rows.append(summarise(method, label, shown or "all bias layers", rs, t0))
    return rows


def dff_rows(
    net: torch.nn.Module, x: torch.Tensor, methods: list[str] | None, n: int = 5
) -> list[dict[str, Any]]:
    """sacam.concepts against pytorch-grad-cam's DeepFeatureFactorization on the whole batch.

    One factorisation per layer over all images (both: scikit-learn's NMF, seed 0); per
    image and concept, r between the two maps; the share of concepts whose top class
    (the head ``_fc`` on the concept vector) agrees is printed and stored.
    """
    if methods and "concepts" not in methods:
        return []
    from pytorch_grad_cam import DeepFeatureFactorization

    rows = []
    for layer_name in ("_bn1",):  # 1280 channels: the head _fc applies to concept vectors
        t0 = time.perf_counter()
        ours = sacam.concepts(net, x, n, layer=layer_name, classifier=net.get_submodule("_fc"))
        dff = DeepFeatureFactorization(net, net.get_submodule(layer_name), None, net._fc)
        _, maps, logits = dff(x.clone(), n)
        rs = [pearson(ours.maps[i, j].numpy(), maps[i][j]) for i in range(len(x)) for j in range(n)]
        row = summarise("concepts", f"n_components={n} (DFF)", layer_name, rs, t0)
        assert ours.top_classes is not None  # a classifier was given
        same = ours.top_classes[:, 0].numpy() == np.argmax(logits, axis=1)
        row["top_class_agreement"] = float(same.mean())
        print(f"{'':16s} top class of each concept agrees: {100 * same.mean():.0f}%", flush=True)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="folder of images (e.g. imagenet-dev)")
    parser.add_argument("--limit", type=int, default=None, help="use the first N images")
    parser.add_argument("--methods", nargs="*", default=None, help="only these methods")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)

    import pytorch_grad_cam
    from parity_torchcam import torchcam_rows

    torch.manual_seed(0)
    names, x = load_batch(args.folder, args.limit)
    net = load_model().model.eval()
    with torch.no_grad():
        top = net(x).argmax(1)
    rows = grad_cam_rows(net, x, top, args.methods)
    rows += dff_rows(net, x, args.methods)
    rows += torchcam_rows(net, x, top, args.methods, summarise, pearson)
    meta = {
        "sacam": sacam.__version__ if hasattr(sacam, "__version__") else "dev",
        "pytorch_grad_cam": "1.5.7",
        "torch": torch.__version__,
        "folder": str(args.folder),
        "images": len(names),
        "python": sys.version.split()[0],
        "pytorch_grad_cam_path": str(Path(pytorch_grad_cam.__file__).parent),
    }
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
