"""Token and channel-last layers read from the model, without a user-written reshape."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sacam
from sacam.errors import LayerError
from sacam.tokens import Layout, layout_candidates, with_layout
from sacam.transforms import vit_reshape_transform

# the gradient, activation, decomposition and perturbation families, and SA-CAM
MAP_METHODS = ["grad-cam", "grad-cam++", "layer-cam", "sa-cam", "score-cam", "eigen-cam"]
TAIL_METHODS = ["recipro-cam", "ablation-cam"]


class TinyViT(nn.Module):
    """Patch embedding (conv), a class token, two encoder layers, the head on the class token."""

    def __init__(self, dim: int = 16, patch: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        enc = [
            nn.TransformerEncoderLayer(dim, 2, 32, dropout=0.0, batch_first=True) for _ in range(2)
        ]
        self.blocks = nn.Sequential(*enc)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], dim=1)
        return self.head(self.norm(self.blocks(t))[:, 0])


class ToLast(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)


class ToFirst(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)


class MeanLast(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((1, 2))


def channel_pair(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """The same network twice: a channel-last block (Linear on (B, H, W, C)) and a 1×1 conv."""
    torch.manual_seed(seed)
    conv, mix, head = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 8), nn.Linear(8, 3)
    last = nn.Sequential(conv, ToLast(), mix, nn.GELU(), MeanLast(), head).eval()
    pointwise = nn.Conv2d(8, 8, 1)
    with torch.no_grad():
        pointwise.weight.copy_(mix.weight[:, :, None, None])
        pointwise.bias.copy_(mix.bias)
    pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    first = nn.Sequential(conv, pointwise, nn.GELU(), pool, head).eval()
    return last, first


@pytest.fixture(scope="module")
def vit() -> TinyViT:
    torch.manual_seed(0)
    return TinyViT().eval()


def test_candidates_and_grids() -> None:
    assert layout_candidates((2, 197, 768), (224, 224)) == [Layout("tokens", (14, 14), 1)]
    assert layout_candidates((2, 7, 7, 768), (224, 224)) == [Layout("channels_last", (7, 7))]
    assert layout_candidates((2, 768, 7, 7), (224, 224)) == [Layout("channels_first", (7, 7))]
    # a 20×30 grid for a 160×240 input (stride 8); a 30×20 grid does not fit
    assert layout_candidates((1, 600, 4), (160, 240)) == [Layout("tokens", (20, 30), 0)]


@pytest.mark.parametrize("method", MAP_METHODS)
def test_vit_tokens_equal_the_explicit_reshape(vit: TinyViT, method: str) -> None:
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    auto = sacam.explain_full(vit, x, method=method, layer="blocks.0")
    explicit = sacam.explain(
        vit, x, method=method, layer="blocks.0", reshape_transform=vit_reshape_transform(4, 4)
    )
    assert auto.layers == ["blocks.0"]
    torch.testing.assert_close(auto.maps, explicit, atol=1e-6, rtol=0)
    assert float(auto.maps.std()) > 0.01  # not a constant map


def test_vit_automatic_layer_is_the_last_grid_that_reaches_the_class_token(vit: TinyViT) -> None:
    # after the last attention only the class token reaches the head: the last block's
    # output, its norms and the final norm have no gradient on the patch tokens
    x = torch.rand(1, 3, 16, 16)
    assert sacam.explain_full(vit, x, method="grad-cam").layers == ["blocks.0"]


@pytest.mark.parametrize("method", TAIL_METHODS)
def test_vit_tail_methods_run_on_tokens(vit: TinyViT, method: str) -> None:
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    maps = sacam.explain(vit, x, method=method, layer="blocks.0")
    assert maps.shape == (2, 16, 16) and torch.isfinite(maps).all()
    assert float(maps.std()) > 0.01


@pytest.mark.parametrize("method", MAP_METHODS + TAIL_METHODS)
def test_channel_last_maps_match_the_channel_first_model(method: str) -> None:
    last, first = channel_pair()
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(last(x), first(x), atol=1e-5, rtol=0)
    got = sacam.explain_full(last, x, method=method)
    want = sacam.explain(first, x, method=method, layer="2")
    assert got.layers == ["3"]  # the GELU on (B, 12, 12, 8), read as channel-last
    for a, b in zip(got.maps, want, strict=True):
        corr = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]
        assert float(corr) > 0.999 or torch.allclose(a, b, atol=1e-5)


def test_a_user_reshape_transform_wins() -> None:
    last, _ = channel_pair()
    x = torch.rand(1, 3, 12, 12)
    auto = sacam.explain(last, x, method="grad-cam", layer="3")
    swapped = sacam.explain(
        last, x, method="grad-cam", layer="3", reshape_transform=lambda t: t.permute(0, 3, 2, 1)
    )
    torch.testing.assert_close(swapped[0], auto[0].T, atol=1e-6, rtol=0)


class Unmarked(nn.Module):
    """A channel-last model whose layer gives no hint: (B, 8, 8, 8) for an 8×8 input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.last = ToLast()
        self.act = nn.Tanh()
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.last(self.conv(x))).mean((1, 2)))


def test_an_ambiguous_layout_is_refused_and_with_layout_settles_it() -> None:
    torch.manual_seed(0)
    net = Unmarked().eval()
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(LayerError, match="several layouts") as err:
        sacam.explain(net, x, method="grad-cam", layer="act")
    text = str(err.value)
    assert "channels_last (B, 8, 8, C)" in text and "channels_first (B, C, 8, 8)" in text
    assert "with_layout('act', 'channels_last')" in text
    given = sacam.explain(net, x, method="grad-cam", layer=with_layout("act", "channels_last"))
    explicit = sacam.explain(
        net, x, method="grad-cam", layer="act", reshape_transform=lambda t: t.permute(0, 3, 1, 2)
    )
    assert torch.equal(given, explicit)


class Unfolded(nn.Module):
    """Tokens from unfold (no grid module before them): 1 + 16 tokens fit 1+4·4 and 8+3·3."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3 * 16, 8)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.mix = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = nn.functional.unfold(x, 4, stride=4).transpose(1, 2)
        t = self.embed(patches)
        t = self.mix(torch.cat([self.cls.expand(len(t), -1, -1), t], dim=1))
        return self.head(t.mean(1))


def test_an_ambiguous_prefix_count_is_refused_and_settled() -> None:
    torch.manual_seed(0)
    net = Unfolded().eval()
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(LayerError, match="several layouts") as err:
        sacam.explain(net, x, method="grad-cam", layer="mix")
    assert "tokens (B, 1 + 4·4, C)" in str(err.value) and "tokens (B, 8 + 3·3, C)" in str(err.value)
    given = with_layout("mix", "tokens", prefix_tokens=1)
    got = sacam.explain(net, x, method="grad-cam", layer=given)
    want = sacam.explain(
        net, x, method="grad-cam", layer="mix", reshape_transform=vit_reshape_transform(4, 4)
    )
    assert torch.equal(got, want)


def test_with_layout_checks_its_arguments() -> None:
    with pytest.raises(LayerError, match="layout must be one of"):
        with_layout("a", "rows")  # type: ignore[arg-type]
    with pytest.raises(LayerError, match="prefix_tokens applies"):
        with_layout("a", "channels_last", prefix_tokens=1)
    with pytest.raises(LayerError, match="prefix_tokens must be an int >= 0"):
        with_layout("a", "tokens", prefix_tokens=-1)
