"""``sacam explain --task segmentation``: each class present in the predicted mask explained.

A class's map explains its score summed over its pixels of the predicted mask
(:class:`sacam.targets.SemanticSegmentationTarget`); each map is written as an overlay and
a ``.npy`` file named after the image, the class and the method.
"""

from __future__ import annotations

import argparse
import time

import torch

from ..api import explain_full
from ..errors import SacamError
from ..models import LoadedModel
from ..targets import SemanticSegmentationTarget
from ._args import EXIT_IMAGE, layer_of, method_options
from ._model import cli_model
from ._tasks import (
    TaskInput,
    class_name,
    describe_output,
    file_safe,
    load_images,
    out_folder,
    save_map,
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
    for image in images:
        with torch.inference_mode():
            scores = loaded.model(image.x)
        if not (isinstance(scores, torch.Tensor) and scores.ndim == 4):
            raise SacamError(
                f"--task segmentation needs a model whose output is a (B, classes, H, W) "
                f"score map; the model returned {describe_output(scores)}"
            )
        mask = scores[0].argmax(0)
        present = [c for c in mask.unique().tolist() if label is None or c == label]
        if not present:
            print(f"{image.name}: class {label} is not in the predicted mask")
        for method in methods:
            for cls in present:
                written += _explain_class(args, loaded, image, method, cls, mask)
    print(f"wrote {written} file(s) to {out}/")
    return EXIT_IMAGE if len(images) < len(args.images) else 0


def _explain_class(
    args: argparse.Namespace,
    loaded: LoadedModel,
    image: TaskInput,
    method: str,
    cls: int,
    mask: torch.Tensor,
) -> int:
    """One class's map of a segmentation (its pixels of the predicted mask); files written."""
    target = SemanticSegmentationTarget(cls, (mask == cls).float())
    options = method_options(args).get(method, {})
    start = time.perf_counter()
    ex = explain_full(loaded.model, image.x, method, layer_of(args), target, **options)
    elapsed = time.perf_counter() - start
    cam = ex.maps[0].detach().float().cpu()
    label = class_name(loaded, cls)
    path = save_map(args, image, cam, f"{image.name}_{file_safe(label)}_{method}")
    share = float((mask == cls).float().mean())
    print(
        f"{image.name}: {label} {share:.1%} of the pixels, {method} at "
        f"{'+'.join(ex.layers)}, {elapsed:.2f} s -> {path}"
    )
    return 2
