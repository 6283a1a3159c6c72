"""Parity with torchcam 0.5.0 of refine-cam (torchcam's grid) and legrad.

Used by parity_pytorch_grad_cam.py.

torchcam's maps stay at the layer grid, so both libraries' maps are compared there
(sacam with ``upsample=False``). LeGrad needs a vision transformer: a torchvision
``VisionTransformer`` (224 × 224, 16 × 16 patches, 4 blocks of 4 heads, width 128) with
seeded random weights (nothing is downloaded), its head re-initialised with N(0, 0.02)
(torchvision initialises it to zeros, which makes every score and gradient 0). Random
weights test that the two implementations compute the same map, not what the map
shows. torchcam is imported from its wheel (``pip download torchcam==0.5.0``, unzip,
``PYTHONPATH``) or an install.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import sacam

REFINE_LAYERS = (("_blocks.10", "_blocks.15"), ("_blocks.4", "_blocks.10", "_blocks.15"))
VIT_BLOCKS = (
    ("encoder.layers.encoder_layer_3",),
    ("encoder.layers.encoder_layer_2", "encoder.layers.encoder_layer_3"),
)


def small_vit(seed: int = 0) -> torch.nn.Module:
    """A seeded torchvision ViT (4 blocks, width 128) with a non-zero head."""
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    vit = VisionTransformer(224, 16, num_layers=4, num_heads=4, hidden_dim=128, mlp_dim=256)
    with torch.no_grad():
        torch.nn.init.normal_(vit.heads.head.weight, std=0.02)
    return vit.eval()


def _refine(
    net: torch.nn.Module, xi: torch.Tensor, c: int, layers: tuple[str, ...], base: str
) -> tuple:
    from torchcam.methods import GradCAM, GradCAMpp, RefineCAM

    # grad-cam++: its torchcam variant
    options: dict[str, Any] = {"base": base, "variant": "torchcam"}
    ours = sacam.explain(
        net, xi, method="refine-cam", layer=list(layers), targets=c, upsample=False, **options
    )[0]
    base_method = GradCAM if base == "grad-cam" else GradCAMpp
    with RefineCAM(net, list(layers), base_method=base_method) as extractor:
        theirs = extractor(class_idx=c, scores=net(xi))[0][0]
    return ours.numpy(), theirs.detach().numpy()


def _legrad(vit: torch.nn.Module, xi: torch.Tensor, c: int, blocks: tuple[str, ...]) -> tuple:
    from torchcam.methods import LeGrad

    ours = sacam.explain(vit, xi, method="legrad", layer=list(blocks), targets=c, upsample=False)
    with LeGrad(vit, list(blocks)) as extractor:
        theirs = extractor(class_idx=c, scores=vit(xi))[0][0]
    return ours[0].numpy(), theirs.detach().numpy()


def torchcam_rows(
    net: torch.nn.Module,
    x: torch.Tensor,
    top: torch.Tensor,
    methods: list[str] | None,
    summarise: Callable[..., dict],
    pearson: Callable[[np.ndarray, np.ndarray], float],
) -> list[dict]:
    """Rows for refine-cam (torchcam variant, torchcam's Grad-CAM++ base) and legrad."""
    rows = []
    if not methods or "refine-cam" in methods:
        for base in ("grad-cam", "grad-cam++"):
            for layers in REFINE_LAYERS:
                t0 = time.perf_counter()
                rs = [
                    pearson(*_refine(net, x[i : i + 1], int(top[i]), layers, base))
                    for i in range(len(x))
                ]
                label = f'variant="torchcam", base="{base}" (vs torchcam)'
                rows.append(summarise("refine-cam", label, "+".join(layers), rs, t0))
    if not methods or "legrad" in methods:
        vit = small_vit()
        with torch.no_grad():
            vit_top = vit(x).argmax(1)
        for blocks in VIT_BLOCKS:
            t0 = time.perf_counter()
            rs = [
                pearson(*_legrad(vit, x[i : i + 1], int(vit_top[i]), blocks)) for i in range(len(x))
            ]
            shown = "+".join(b.rsplit("_", 1)[-1] for b in blocks)
            rows.append(
                summarise("legrad", "default (vs torchcam, random ViT)", f"blocks {shown}", rs, t0)
            )
    return rows
