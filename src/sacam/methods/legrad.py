"""LeGrad (Bousselham et al., 2024): gradients of each block's score w.r.t. its attention maps."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..core import BaseCAM
from ..errors import LayerError, MethodError
from ..explanation import CallContext, output_map
from ..registry import register_method
from ..targets import TargetsLike, evaluate_scores, resolve_targets
from ._mha import AttentionTap, attention_of
from ._options import check_count

__all__ = ["LeGrad"]

LEGRAD_URL = "https://arxiv.org/abs/2404.03214"
Projection = Callable[[torch.Tensor], torch.Tensor]


def _default_projection(model: nn.Module) -> Projection:
    """The score projection of torchvision's ``VisionTransformer``: ``heads(ln(mean token))``."""
    norm = getattr(getattr(model, "encoder", None), "ln", None)
    heads = getattr(model, "heads", None)
    if not isinstance(norm, nn.Module) or not isinstance(heads, nn.Module):
        raise MethodError(
            "legrad needs score_projection, a function mapping a block's tokens (B, N, D) to "
            "class logits (B, classes), e.g. lambda t: model.head(model.norm(t.mean(1))); "
            "only torchvision's VisionTransformer has a built-in one"
        )
    return lambda tokens: heads(norm(tokens.mean(dim=1)))


def _blocks(model: nn.Module, layer: object) -> list[tuple[str, nn.Module]]:
    """The target blocks: names or modules; ``None`` is the last block holding an attention."""
    names = {m: n for n, m in model.named_modules()}
    if layer is None:
        with_attention = [
            (n, m)
            for n, m in model.named_modules()
            if any(isinstance(c, nn.MultiheadAttention) for c in m.children())
        ]
        if not with_attention:
            raise LayerError("legrad found no block holding an nn.MultiheadAttention in the model")
        return with_attention[-1:]
    items = layer if isinstance(layer, list | tuple) else [layer]
    found = []
    for item in items:
        if isinstance(item, nn.Module) and item in names:
            found.append((names[item], item))
        elif isinstance(item, str):
            try:
                found.append((item, model.get_submodule(item)))
            except AttributeError:
                raise LayerError(f"the model has no block named {item!r}") from None
        else:
            raise LayerError(f"legrad's layer must be block names or modules, got {item!r}")
    return found


@register_method(
    "legrad",
    paper="Bousselham et al., arXiv 2024 (torchcam 0.5.0)",
    url=LEGRAD_URL,
    description="Vision transformers: the positive gradient of each block's class score with "
    "respect to its attention maps, averaged over heads, queries and blocks.",
    family="transformer",
)
class LeGrad(BaseCAM):
    r"""LeGrad (Bousselham et al., 2024, https://arxiv.org/abs/2404.03214), for vision transformers.

    For each target block ``l`` (``layer``: transformer blocks, each holding one
    ``nn.MultiheadAttention`` as a direct child; default the last such block), with
    ``P^l`` its attention probabilities ``(heads, queries, keys)`` and ``s^l`` the class
    score read from the block's output tokens by ``score_projection`` (the model's final
    norm and head applied to the tokens' mean for torchvision's ``VisionTransformer``):

    .. math:: R^l_j = \frac{1}{H\,Q}\sum_{h,i} \mathrm{ReLU}\Big(\frac{\partial s^l}
              {\partial P^l_{h,i,j}}\Big),\qquad L = \frac{1}{|l|}\sum_l R^l

    over the key tokens ``j`` after the first ``prefix_tokens`` (the class token),
    reshaped to the patch grid (``grid_shape``, or square), upsampled and normalised.
    The attention values themselves are not multiplied in. Same as torchcam 0.5.0's
    ``LeGrad``; pytorch-grad-cam 1.5.7 has none. Targets: class indices, or callables
    applied to each block's projected logits.

    The block's attention is read through hooks that exist only during the call: a pre-
    hook asks the module for per-head probabilities, and its output is recomputed from
    them (``sacam.methods._mha.replay_attention``; same values) so that gradients reach
    them; the model gets back what it asked for (``need_weights``,
    ``average_attn_weights``).
    Cost: one forward pass and one backward pass per block.

    Example:
        >>> import torch, sacam
        >>> from torch import nn
        >>> class Block(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        ...     def forward(self, x):
        ...         return x + self.attn(x, x, x, need_weights=False)[0]
        >>> class ViT(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.embed, self.block = nn.Conv2d(3, 8, 4, 4), Block()
        ...         self.head = nn.Linear(8, 3)
        ...     def forward(self, x):
        ...         t = self.embed(x).flatten(2).transpose(1, 2)  # 16 patch tokens, no prefix
        ...         return self.head(self.block(t).mean(1))
        >>> vit = ViT()
        >>> sacam.explain(vit, torch.rand(2, 3, 16, 16), method="legrad", layer="block",
        ...               prefix_tokens=0, score_projection=lambda t: vit.head(t.mean(1))).shape
        torch.Size([2, 16, 16])
    """

    def __init__(
        self,
        *args: Any,
        score_projection: Projection | None = None,
        prefix_tokens: int = 1,
        grid_shape: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if self.reshape_transform is not None or self.eigen_smooth:
            raise MethodError(
                "legrad reads attention maps: reshape_transform and eigen_smooth do not apply"
            )
        if score_projection is not None and not callable(score_projection):
            raise MethodError(f"score_projection must be callable, got {score_projection!r}")
        self.score_projection = score_projection or _default_projection(self.model)
        if (
            isinstance(prefix_tokens, bool)
            or not isinstance(prefix_tokens, int)
            or prefix_tokens < 0
        ):
            raise MethodError(f"prefix_tokens must be an int >= 0, got {prefix_tokens!r}")
        self.prefix_tokens = prefix_tokens
        self.grid_shape: tuple[int, int] | None = None
        if grid_shape is not None:
            if (
                isinstance(grid_shape, str)
                or not isinstance(grid_shape, Sequence)
                or len(grid_shape) != 2
            ):
                raise MethodError(f"grid_shape must be (rows, columns), got {grid_shape!r}")
            self.grid_shape = (
                check_count("grid rows", grid_shape[0]),
                check_count("grid columns", grid_shape[1]),
            )

    def raw_maps(
        self, images: torch.Tensor, targets: TargetsLike, keep: bool = False
    ) -> tuple[CallContext, dict[str, torch.Tensor]]:
        """Each block's relevance ``R^l`` on the patch grid, labelled by block."""
        taps = [AttentionTap(m, attention_of(m, n), n) for n, m in _blocks(self.model, self.layer)]
        handles: list[torch.utils.hooks.RemovableHandle] = []
        try:
            for tap in taps:
                handles.extend(tap.register())
            with torch.enable_grad():
                output = self.logits_model(images)
                score_fn, class_idx = resolve_targets(targets, output.detach())
                scores = evaluate_scores(score_fn, output).detach()
                raw = {tap.label: self._relevance(tap, score_fn) for tap in taps}
        finally:
            for h in handles:
                h.remove()
        ctx = CallContext.detached(self.logits_model, images, output, score_fn, class_idx, scores)
        return ctx, raw

    def fuse(
        self, layer_maps: dict[str, torch.Tensor], raw: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """LeGrad averages the blocks' raw maps, then normalises (``L`` in the class doc)."""
        (size,) = {tuple(m.shape[1:]) for m in layer_maps.values()}
        return output_map(torch.stack(list(raw.values())).mean(dim=0), size)

    def _relevance(
        self, tap: AttentionTap, score_fn: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """``R^l`` on the patch grid, ``(B, rows, columns)``."""
        if tap.tokens is None or tap.probs is None:
            raise LayerError(f"block {tap.label!r} did not run its attention in this forward pass")
        logits = self.score_projection(tap.tokens)
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
            raise MethodError("score_projection must return class logits shaped (B, classes)")
        score = evaluate_scores(score_fn, logits)
        (grad,) = torch.autograd.grad(score.sum(), tap.probs, retain_graph=True)
        rel = grad.detach().clamp_min(0).mean(dim=(1, 2))[:, self.prefix_tokens :]
        n = rel.shape[-1]
        rows, cols = self.grid_shape or (math.isqrt(n), math.isqrt(n))
        if n == 0 or rows * cols != n:
            raise LayerError(
                f"{n} patch tokens (after {self.prefix_tokens} prefix tokens) do not fill a "
                f"{rows}×{cols} grid: set prefix_tokens and grid_shape"
            )
        return rel.reshape(-1, rows, cols)
