"""Hugging Face vision models, built from small configs (no download), explained without glue."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import sacam
from tests.support.serve import require

transformers = require("transformers", extras="test")  # CI fails, never skips, without it


def vit() -> nn.Module:
    config = transformers.ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
    )
    return transformers.ViTForImageClassification(config)


def swin() -> nn.Module:
    config = transformers.SwinConfig(
        image_size=32,
        patch_size=4,
        embed_dim=8,
        depths=[1, 1],
        num_heads=[1, 2],
        window_size=4,
        num_labels=3,
    )
    return transformers.SwinForImageClassification(config)


def convnext() -> nn.Module:
    config = transformers.ConvNextConfig(
        num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, num_labels=3
    )
    return transformers.ConvNextForImageClassification(config)


# the layer a user would pick: the last grid whose patches reach the logits
EXPECTED_LAYER = {
    "vit": "vit.layers.1.layernorm_before",  # the input of the last attention
    "swin": "swin.layernorm",  # its tokens are mean-pooled, no class token
    "convnext": "convnext.encoder.stages.1",  # (B, C, h, w) between blocks
}


@pytest.fixture(scope="module", params=[vit, swin, convnext], ids=lambda f: f.__name__)
def model(request: pytest.FixtureRequest) -> tuple[str, nn.Module]:
    build: Callable[[], nn.Module] = request.param
    # random weights: seed 0 happens to give a ViT whose Ablation-CAM sum is negative
    # everywhere (a constant map after ReLU), which says nothing about the layout
    torch.manual_seed(1)
    return build.__name__, build().eval()


@pytest.mark.parametrize("method", ["grad-cam", "sa-cam", "recipro-cam", "ablation-cam"])
def test_hf_models_run_without_glue(model: tuple[str, nn.Module], method: str) -> None:
    name, net = model
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = sacam.explain_full(net, x, method=method)
    assert out.layers == [EXPECTED_LAYER[name]]
    assert out.maps.shape == (2, 32, 32) and torch.isfinite(out.maps).all()
    assert all(float(m.max() - m.min()) > 0.5 for m in out.maps)  # not a constant map
    logits = net(x).logits
    assert torch.equal(out.class_idx, logits.argmax(1))


def test_swin_skips_its_relative_position_bias_and_windows() -> None:
    torch.manual_seed(0)
    net = swin().eval()
    layers = dict(sacam.list_layers(net, torch.rand(1, 3, 32, 32)))
    # a batch-1 bias table of 4-D shape and window batches: neither is chosen
    bias = "swin.encoder.layers.1.blocks.0.attention.relative_position_bias"
    assert layers[bias] == (1, 2, 16, 16)
    out = sacam.explain_full(net, torch.rand(1, 3, 32, 32), method="grad-cam")
    assert out.layers == ["swin.layernorm"]
