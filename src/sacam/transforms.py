"""Reshape transforms: turn a token layer's output into ``(B, C, h, w)`` maps.

Pass one as ``reshape_transform=`` (a method option) to explain a transformer block.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .errors import LayerError, MethodError

__all__ = ["vit_reshape_transform"]


def vit_reshape_transform(
    height: int, width: int, skip_tokens: int = 1
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Transform for ViT-style tokens ``(B, N, C)``: drop the leading tokens, grid the rest.

    The first ``skip_tokens`` tokens (the class token, distillation or register tokens)
    are dropped and the remaining ``height · width`` patch tokens, in row-major patch order,
    become a ``(B, C, height, width)`` map.

    Args:
        height: rows of the patch grid (image height / patch size).
        width: columns of the patch grid.
        skip_tokens: leading non-patch tokens (1 for a class token, 0 for none).

    Returns:
        A callable for ``reshape_transform=``.

    Example:
        >>> import torch
        >>> t = vit_reshape_transform(2, 3)
        >>> t(torch.zeros(4, 1 + 6, 8)).shape
        torch.Size([4, 8, 2, 3])
    """
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise MethodError(f"{name} must be a positive int, got {value!r}")
    if not isinstance(skip_tokens, int) or isinstance(skip_tokens, bool) or skip_tokens < 0:
        raise MethodError(f"skip_tokens must be an int >= 0, got {skip_tokens!r}")

    def transform(tokens: torch.Tensor) -> torch.Tensor:
        if tokens.ndim != 3:
            raise LayerError(
                f"vit_reshape_transform expects tokens (B, N, C), got shape {tuple(tokens.shape)}"
                " (is the layer batch_first?)"
            )
        b, n, c = tokens.shape
        if n - skip_tokens != height * width:
            raise LayerError(
                f"the layer has {n} tokens; {skip_tokens} skipped leaves {n - skip_tokens}, "
                f"not height·width = {height}·{width} = {height * width}"
            )
        grid = tokens[:, skip_tokens:, :].reshape(b, height, width, c)
        return grid.permute(0, 3, 1, 2)

    return transform
