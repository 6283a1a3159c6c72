"""Attention probabilities of ``nn.MultiheadAttention`` in the autograd graph (for LeGrad)."""

from __future__ import annotations

import threading
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LayerError

__all__ = ["AttentionTap", "attention_of", "replay_attention"]


def replay_attention(
    mha: nn.MultiheadAttention, probs: torch.Tensor, value: torch.Tensor
) -> torch.Tensor:
    """The output of ``mha`` recomputed from its attention probabilities ``(B, heads, L, S)``.

    ``out_proj(concat_h(P_h V_h))`` with ``V = value W_v^T + b_v``: the same values as the
    module's own output, but computed from ``probs``, so that a gradient reaches them
    (the probabilities ``nn.MultiheadAttention`` returns are a copy off its graph).
    ``value`` is laid out as the module takes it (``batch_first`` or not).

    Example:
        >>> mha = nn.MultiheadAttention(4, 2, batch_first=True).eval()
        >>> x = torch.rand(1, 3, 4)
        >>> out, p = mha(x, x, x, average_attn_weights=False)
        >>> bool(torch.allclose(replay_attention(mha, p, x), out, atol=1e-6))
        True
    """
    e, heads = mha.embed_dim, mha.num_heads
    v_in = value if mha.batch_first else value.transpose(0, 1)
    w_v = mha.in_proj_weight[2 * e :] if mha.in_proj_weight is not None else mha.v_proj_weight
    b_v = mha.in_proj_bias[2 * e :] if mha.in_proj_bias is not None else None
    b, s, _ = v_in.shape
    v = F.linear(v_in, w_v, b_v).view(b, s, heads, e // heads).transpose(1, 2)
    out = (probs @ v).transpose(1, 2).reshape(b, probs.shape[-2], e)
    out = mha.out_proj(out)
    return out if mha.batch_first else out.transpose(0, 1)


def attention_of(block: nn.Module, label: str) -> nn.MultiheadAttention:
    """The block's one ``nn.MultiheadAttention`` child, checked to be plain self-attention."""
    found = [m for m in block.children() if isinstance(m, nn.MultiheadAttention)]
    if len(found) != 1:
        raise LayerError(
            f"legrad needs each target block to hold one nn.MultiheadAttention as a direct "
            f"child; {label!r} has {len(found)}: pass the transformer blocks as layer"
        )
    mha = found[0]
    if mha.bias_k is not None or mha.add_zero_attn or mha.kdim != mha.embed_dim:
        raise LayerError(
            f"the attention of {label!r} adds key tokens or has other key/value sizes: "
            "legrad explains plain self-attention"
        )
    return mha


class AttentionTap:
    """Hooks on one block: its output tokens, and its attention probabilities in the graph."""

    def __init__(self, block: nn.Module, mha: nn.MultiheadAttention, label: str) -> None:
        self.block, self.mha, self.label = block, mha, label
        self.owner = threading.get_ident()
        self.tokens: torch.Tensor | None = None
        self.probs: torch.Tensor | None = None
        self.asked: tuple[bool, bool] = (True, True)

    def register(self) -> list[torch.utils.hooks.RemovableHandle]:
        """Register the three hooks; the caller removes the handles in a ``finally``."""
        return [
            self.mha.register_forward_pre_hook(self._pre, with_kwargs=True),
            self.mha.register_forward_hook(self._post, with_kwargs=True),
            self.block.register_forward_hook(self._tokens),
        ]

    def _pre(
        self, module: nn.Module, inputs: tuple[Any, ...], options: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        if threading.get_ident() != self.owner:
            return None
        args: list[Any] = list(inputs)
        kwargs = dict(options)
        q: Any = args[0] if args else None
        if len(args) < 3 or not (args[0] is args[1] is args[2]):
            raise LayerError(
                f"legrad explains self-attention called as attn(x, x, x); {self.label!r} was "
                "called otherwise"
            )
        if not q.requires_grad:  # parameters are frozen: let the graph start here
            q = q.detach().requires_grad_(True)
            args[:3] = [q, q, q]
        need = args[4] if len(args) > 4 else kwargs.get("need_weights", True)
        avg = args[6] if len(args) > 6 else kwargs.get("average_attn_weights", True)
        self.asked = (bool(need), bool(avg))
        for pos, name, value in ((4, "need_weights", True), (6, "average_attn_weights", False)):
            if len(args) > pos:
                args[pos] = value
            else:
                kwargs[name] = value
        return tuple(args), kwargs

    def _post(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: object
    ) -> object:
        if threading.get_ident() != self.owner:
            return None
        probs = out[1]  # type: ignore[index]
        self.probs = probs
        replayed = replay_attention(self.mha, probs, args[2])
        need, avg = self.asked
        weights = (probs.mean(dim=1) if avg else probs) if need else None
        return replayed, weights

    def _tokens(self, module: nn.Module, _inp: object, out: object) -> None:
        if threading.get_ident() != self.owner:
            return
        if not isinstance(out, torch.Tensor) or out.ndim != 3:
            raise LayerError(f"legrad's block {self.label!r} must return (B, tokens, dim) tokens")
        self.tokens = out
