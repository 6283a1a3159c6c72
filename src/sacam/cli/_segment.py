"""``sacam explain --task segmentation``: each class present in the predicted mask explained.

A class's map explains its score summed over its pixels of the predicted mask
(:class:`sacam.targets.SemanticSegmentationTarget`); each map is written as an overlay and
a ``.npy`` file named after the image, the class and the method.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ..api import explain_full
from ..errors import SacamError
from ..models import LoadedModel
from ..targets import SemanticSegmentationTarget
from ..viz import overlay
from ._args import EXIT_IMAGE
from ._model import cli_model
from ._tasks import (
    class_name,
    describe_output,
    file_safe,
    layer_of,
    load_images,
    options_of,
    out_folder,
    task_label,
)


def segmentation_command(args: argparse.Namespace, methods: list[str]) -> int:
    """``sacam explain --task segmentation``: each class present in the predicted mask."""
    loaded = cli_model(args)
    label = None if args.target is None else task_label(args.target, loaded)
    images = load_images(args, loaded)
    if not images:
        return EXIT_IMAGE
    out = out_folder(args)
    print(f"model {loaded.name} (segmentation), method(s) {', '.join(methods)}")
    written = 0
    for name, pixels in images:
        x = loaded.preprocess.normalize(pixels)[None].to(args.device)
        with torch.inference_mode():
            scores = loaded.model(x)
        if not (isinstance(scores, torch.Tensor) and scores.ndim == 4):
            raise SacamError(
                f"--task segmentation needs a model whose output is a (B, classes, H, W) "
                f"score map; the model returned {describe_output(scores)}"
            )
        mask = scores[0].argmax(0)
        present = [c for c in mask.unique().tolist() if label is None or c == label]
        if not present:
            print(f"{name}: class {label} is not in the predicted mask")
        for method in methods:
            for cls in present:
                written += _explain_class(args, loaded, x, pixels, name, method, cls, mask)
    print(f"wrote {written} file(s) to {out}/")
    return EXIT_IMAGE if len(images) < len(args.images) else 0


def _explain_class(
    args: argparse.Namespace,
    loaded: LoadedModel,
    x: torch.Tensor,
    pixels: torch.Tensor,
    name: str,
    method: str,
    cls: int,
    mask: torch.Tensor,
) -> int:
    """One class's map of a segmentation (its pixels of the predicted mask); files written."""
    target = SemanticSegmentationTarget(cls, (mask == cls).float())
    options = options_of(args).get(method, {})
    start = time.perf_counter()
    ex = explain_full(loaded.model, x, method, layer_of(args), target, **options)
    elapsed = time.perf_counter() - start
    cam = ex.maps[0].detach().float().cpu()
    label = class_name(loaded, cls)
    stem = f"{name}_{file_safe(label.split(' (')[0])}_{method}"
    overlay(pixels, cam, cmap=args.cmap, alpha=args.alpha).save(args.out / f"{stem}.png")
    np.save(args.out / f"{stem}.npy", cam.numpy().astype(np.float16))
    share = float((mask == cls).float().mean())
    print(
        f"{name}: {label} {share:.1%} of the pixels, {method} at "
        f"{'+'.join(ex.layers)}, {elapsed:.2f} s -> {args.out / stem}.png"
    )
    return 2
