"""LeGrad on small vision transformers built here from torch modules; the shared checks of
the token-model methods (registry family "transformer", kept out of tests/test_shared.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sacam
from sacam.errors import LayerError, MethodError
from tests.support.nets import F64_ATOL

TOKEN_METHODS = [m for m in sacam.list_methods() if sacam.method_info(m).family == "transformer"]


class Block(nn.Module):
    """Pre-norm transformer block; ``plain=True``: attention and residual only."""

    def __init__(self, dim: int, heads: int, plain: bool = False, batch_first: bool = True):
        super().__init__()
        self.plain, self.batch_first = plain, batch_first
        self.norm = nn.Identity() if plain else nn.LayerNorm(dim)
        self.self_attention = nn.MultiheadAttention(dim, heads, batch_first=batch_first)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.seen: tuple[int, ...] = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        if not self.batch_first:
            y = y.transpose(0, 1)
        a, w = self.self_attention(y, y, y)  # default need_weights=True, averaged
        self.seen = tuple(w.shape)
        x = x + (a if self.batch_first else a.transpose(0, 1))
        return x if self.plain else x + self.mlp(x)


class TinyViT(nn.Module):
    """4×4 patches of a 16×16 image (16 tokens), optional class token, blocks, norm, head."""

    def __init__(
        self,
        depth: int = 2,
        heads: int = 2,
        cls: bool = True,
        plain: bool = False,
        batch_first: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        torch.manual_seed(seed)
        dim = 8
        self.embed = nn.Conv2d(3, dim, 4, 4)
        self.cls = nn.Parameter(torch.randn(1, 1, dim)) if cls else None
        self.blocks = nn.Sequential(*[Block(dim, heads, plain, batch_first) for _ in range(depth)])
        self.norm = nn.Identity() if plain else nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 5)
        self.drop = nn.Dropout(0.5)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)
        if self.cls is not None:
            t = torch.cat([self.cls.expand(len(t), -1, -1), t], dim=1)
        return t

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(tokens.mean(dim=1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.norm(self.blocks(self.tokens(x)).mean(dim=1))))


def _explain(vit: TinyViT, x: torch.Tensor, **kw: object) -> sacam.Explanation:
    opts = {"score_projection": vit.project, "prefix_tokens": 1 if vit.cls is not None else 0}
    return sacam.explain_full(vit, x, method="legrad", **{**opts, **kw})


def _minmax(m: torch.Tensor) -> torch.Tensor:
    return (m - m.min()) / (m.max() - m.min())


def _by_hand(vit: TinyViT, block: Block, y: torch.Tensor, c: int) -> torch.Tensor:
    """R_j = mean_h ReLU(w_cᵀ W_o[:, h] V^h_j / N) for a plain block (no norm, no MLP).

    s = w_c · mean_i(x_i + W_o Σ_j P_ij V_j + b_o) + b is linear in P, so ∂s/∂P_{h,i,j} =
    w_cᵀ W_o[:, h-th slice] V^h_j / N, the same for every query i.
    """
    mha = block.self_attention
    e, heads = mha.embed_dim, mha.num_heads
    d = e // heads
    v = y @ mha.in_proj_weight[2 * e :].T + mha.in_proj_bias[2 * e :]  # (N, E)
    u = mha.out_proj.weight.T @ vit.head.weight[c]  # (E,): w_cᵀ W_o
    n = y.shape[0]
    per_head = torch.stack(
        [(v[:, h * d : (h + 1) * d] @ u[h * d : (h + 1) * d]) / n for h in range(heads)]
    )
    return per_head.clamp_min(0).mean(0)


@pytest.mark.parametrize("heads", [1, 2])
def test_legrad_by_hand_on_one_plain_block(heads: int) -> None:
    vit = TinyViT(depth=1, heads=heads, cls=False, plain=True).eval()
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        y = vit.tokens(x)[0]
        expected = _by_hand(vit, vit.blocks[0], y, 3).view(4, 4)
    out = _explain(vit, x, targets=3, layer="blocks.0", upsample=False)
    assert torch.allclose(out.maps[0], _minmax(expected), atol=1e-5)
    assert out.class_idx.tolist() == [3]


def test_legrad_averages_the_blocks_raw_maps() -> None:
    vit = TinyViT(depth=2, heads=2, cls=False, plain=True).eval()
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        y = vit.tokens(x)
        z = vit.blocks[0](y)  # the second block's input
        r0 = _by_hand(vit, vit.blocks[0], y[0], 1)
        r1 = _by_hand(vit, vit.blocks[1], z[0], 1)
    out = _explain(vit, x, targets=1, layer=["blocks.0", "blocks.1"], upsample=False)
    assert torch.allclose(out.maps[0], _minmax((r0 + r1).view(4, 4) / 2), atol=1e-5)
    assert torch.allclose(out.layer_maps["blocks.1"][0], _minmax(r1.view(4, 4)), atol=1e-5)


def test_legrad_leaves_what_the_model_sees_unchanged() -> None:
    vit = TinyViT().eval()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = vit(x)
    out = _explain(vit, x, targets=[0, 4])
    # the replayed attention output equals the module's own: the same scores
    assert torch.allclose(out.scores, logits[[0, 1], [0, 4]], atol=1e-5)
    assert vit.blocks[1].seen == (2, 17, 17)  # the averaged weights it asked for
    # batch-first or not: the same map
    seq = TinyViT(batch_first=False).eval()
    seq.load_state_dict(vit.state_dict())
    assert torch.allclose(_explain(seq, x, targets=[0, 4]).maps, out.maps, atol=1e-5)


def test_legrad_default_layer_is_the_last_block() -> None:
    vit = TinyViT()
    x = torch.rand(1, 3, 16, 16)
    assert _explain(vit, x).layers == ["blocks.1"]


def test_legrad_errors() -> None:
    vit = TinyViT()
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(MethodError, match="score_projection"):
        sacam.build_method(vit, "legrad")
    with pytest.raises(LayerError, match="nn.MultiheadAttention"):
        _explain(vit, x, layer="embed")
    with pytest.raises(LayerError, match="grid"):
        _explain(vit, x, prefix_tokens=0)  # 17 tokens
    with pytest.raises(LayerError, match="no block named"):
        _explain(vit, x, layer="blocks.7")
    with pytest.raises(MethodError, match="prefix_tokens"):
        _explain(vit, x, prefix_tokens=-1)
    with pytest.raises(MethodError, match="grid_shape"):
        _explain(vit, x, grid_shape=(4,))
    assert _explain(vit, x, grid_shape=(2, 8)).maps.shape == (1, 16, 16)


# ---------------------------------------------------- shared checks for token models


def _hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


def _run(method: str, vit: TinyViT, x: torch.Tensor, **kw: object) -> sacam.Explanation:
    return sacam.explain_full(vit, x, method=method, score_projection=vit.project, **kw)


@pytest.mark.parametrize("method", TOKEN_METHODS)
def test_token_method_shape_range_state_and_hooks(method: str) -> None:
    vit = TinyViT().train()
    vit.blocks[0].eval()  # a mixed state must come back exactly
    vit.embed.weight.requires_grad_(False)
    modes = [m.training for m in vit.modules()]
    grads = [p.requires_grad for p in vit.parameters()]
    state = {k: v.clone() for k, v in vit.state_dict().items()}
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    out = _run(method, vit, x)
    assert out.maps.shape == (3, 16, 16) and torch.isfinite(out.maps).all()
    assert out.maps.min() >= 0 and out.maps.max() <= 1
    assert _run(method, vit, x, upsample=False).maps.shape == (3, 4, 4)
    assert [m.training for m in vit.modules()] == modes
    assert [p.requires_grad for p in vit.parameters()] == grads
    assert _hooks(vit) == 0 and all(p.grad is None for p in vit.parameters())
    assert all(torch.equal(v, state[k]) for k, v in vit.state_dict().items())


@pytest.mark.parametrize("method", TOKEN_METHODS)
def test_token_method_restores_the_model_after_an_exception(method: str) -> None:
    vit = TinyViT().train()
    modes = [m.training for m in vit.modules()]

    def boom(*_: object) -> None:
        raise RuntimeError("inside the forward pass")

    handle = vit.head.register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="inside the forward pass"):
            _run(method, vit, torch.rand(1, 3, 16, 16))
    finally:
        handle.remove()
    assert [m.training for m in vit.modules()] == modes
    assert all(p.requires_grad for p in vit.parameters()) and _hooks(vit) == 0


@pytest.mark.parametrize("method", TOKEN_METHODS)
def test_token_method_batch_equals_single_calls_and_keeps_nothing(method: str) -> None:
    vit = TinyViT().double()
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(3)).double()
    cam = sacam.build_method(vit, method, score_projection=vit.project)
    batch = cam(x, [0, 1, 2])
    singles = torch.cat([cam(x[i : i + 1], [i]) for i in range(3)])
    torch.testing.assert_close(batch, singles, rtol=0, atol=F64_ATOL)
    assert [k for k, v in vars(cam).items() if isinstance(v, torch.Tensor)] == []
    a = _run(method, vit, x, targets=[0, 1, 2])
    assert a.class_idx.tolist() == [0, 1, 2]
    b = _run(method, vit, x, targets=torch.tensor([0, 1, 2]))
    assert torch.allclose(a.maps, b.maps, atol=1e-6)


@pytest.mark.parametrize("method", TOKEN_METHODS)
def test_token_method_registry_entry_is_documented(method: str) -> None:
    info = sacam.method_info(method)
    assert info.paper and info.url.startswith("https://") and info.description
    assert info.cls.__doc__ and info.url in info.cls.__doc__


class DictViT(TinyViT):
    """The same ViT returning a Hugging Face style dict."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return {"logits": super().forward(x), "hidden": x}


def test_legrad_reads_a_dict_output() -> None:
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    plain, wrapped = TinyViT(seed=3), DictViT(seed=3)
    torch.testing.assert_close(_explain(wrapped, x).maps, _explain(plain, x).maps, atol=0, rtol=0)
