"""Recipro-CAM (Byun & Lee, 2022/2024): gradient-free, one tail pass per layer position."""

from __future__ import annotations

import functools
import math
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ..errors import MethodError
from ..explanation import CallContext, LayerData
from ..registry import register_method
from ._perturb import PerturbationCAM
from ._tail import LayerTail, Strategy, check_strategy

__all__ = ["ReciproCAM", "spatial_masks"]

GAUSSIAN_3X3 = ((1 / 16, 1 / 8, 1 / 16), (1 / 8, 1 / 4, 1 / 8), (1 / 16, 1 / 8, 1 / 16))


def spatial_masks(
    acts: torch.Tensor, positions: torch.Tensor, kernel: Literal["point", "gaussian"]
) -> torch.Tensor:
    r"""Recipro-CAM's masked feature maps of one image: ``(K, h, w)`` -> ``(m, K, h, w)``.

    Row ``i`` keeps the feature vector ``A_{:, p}`` of position ``p = positions[i]``
    (row-major index) and is 0 elsewhere (``"point"``), or spreads that same vector over
    the 3×3 neighbourhood of ``p`` with the weights
    ``[[1/16, 1/8, 1/16], [1/8, 1/4, 1/8], [1/16, 1/8, 1/16]]``, cut at the borders
    (``"gaussian"``, the authors' code: the neighbours get ``p``'s vector, not their own).

    Example:
        >>> a = torch.arange(4.0).view(1, 2, 2)
        >>> spatial_masks(a, torch.tensor([3]), "point").tolist()
        [[[[0.0, 0.0], [0.0, 3.0]]]]
        >>> spatial_masks(a, torch.tensor([3]), "gaussian").tolist()  # 3·(1/16, 1/8; 1/8, 1/4)
        [[[[0.1875, 0.375], [0.375, 0.75]]]]
    """
    k, h, w = acts.shape
    onehot = F.one_hot(positions, h * w).to(acts.dtype).view(-1, 1, h, w)
    if kernel == "point":
        return onehot * acts[None]
    weights = torch.tensor(GAUSSIAN_3X3, dtype=acts.dtype, device=acts.device).view(1, 1, 3, 3)
    spread = F.conv2d(onehot, weights, padding=1)  # (m, 1, h, w): the kernel placed at p
    vectors = acts.flatten(1)[:, positions].T  # (m, K)
    return spread * vectors[:, :, None, None]


def _masked_rows(
    acts: torch.Tensor, kernel: Literal["point", "gaussian"], start: int, stop: int
) -> torch.Tensor:
    """:func:`spatial_masks` of positions ``start..stop-1``."""
    return spatial_masks(acts, torch.arange(start, stop, device=acts.device), kernel)


@register_method(
    "recipro-cam",
    paper="Byun & Lee, CVPR-W 2024 (arXiv 2209.14074)",
    url="https://arxiv.org/abs/2209.14074",
    description="Gradient-free: the class probability when the network after the layer sees "
    "only one position's activations, for every position.",
    family="perturbation",
)
class ReciproCAM(PerturbationCAM):
    r"""Recipro-CAM (Byun & Lee, CVPR-W 2024, https://arxiv.org/abs/2209.14074).

    For each position ``p = (i, j)`` of the layer, the masked feature map ``M^p`` keeps
    the activations at ``p`` only (:func:`spatial_masks`; ``kernel="gaussian"`` spreads
    them over a 3×3 Gaussian neighbourhood), the network after the layer (its "tail")
    runs on it, and

    .. math:: L^c_{ij} = \mathrm{softmax}\big(f_{tail}(M^{(i,j)})\big)_c

    (for callable targets, the callable's score). Gradient-free; the engine then
    min-max normalises the ``h × w`` map, as the authors' code does.

    How the tail runs (``strategy``, as in FD-CAM and Ablation-CAM): a forward hook on
    the target layer replaces its output with a batch of masked maps. ``"expand"`` (as
    the authors' code does) feeds the image once per batch, so ``h·w`` positions cost
    ``⌈h·w / inputs_per_pass⌉`` passes of the layers before the target plus ``h·w`` rows of
    the tail (49 at 7×7); it needs a network that takes its batch size from the tensors
    it computes, not from its input. ``"repeat"`` feeds the image repeated (``h·w``
    whole passes; any network). ``"auto"`` (default) tries ``"expand"`` and switches to
    ``"repeat"`` for the rest of the call if a pass fails or returns the wrong number of
    rows. All give the same maps.

    Options of the perturbation methods (``inputs_per_pass``, ``max_memory_mb``, ``bf16``)
    apply. Needs the layer's own ``(B, K, h, w)`` output (no ``reshape_transform``). The
    hook exists only during these passes (removed in a ``finally``); they run under
    ``torch.inference_mode()``. No library implements it (the authors' code and
    OpenVINO XAI aside).

    Example:
        >>> import torch, sacam
        >>> from sacam.examples import tiny_cnn
        >>> net = tiny_cnn()
        >>> sacam.explain(net, torch.rand(2, 3, 16, 16), method="recipro-cam", layer="1").shape
        torch.Size([2, 16, 16])
    """

    def __init__(
        self,
        *args: Any,
        kernel: Literal["point", "gaussian"] = "point",
        strategy: Strategy = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if kernel not in ("point", "gaussian"):
            raise MethodError(f"recipro-cam kernel must be 'point' or 'gaussian', got {kernel!r}")
        if self.reshape_transform is not None:
            raise MethodError(
                "recipro-cam replaces the layer's own output, so it cannot use a "
                "reshape_transform: pick a layer with a (B, K, h, w) output"
            )
        self.kernel: Literal["point", "gaussian"] = kernel
        self.strategy = check_strategy("recipro-cam", strategy)

    def expected_rows(self, shape: tuple[int, ...], image_size: tuple[int, int]) -> int:
        """The probe and clean passes, and one edited row per position of the layer."""
        return 2 + math.prod(shape[2:])

    def layer_map(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """Class score of each position's masked map, ``(B, h, w)``."""
        acts = layer.activations
        b_count, _, h, w = acts.shape
        n = h * w
        batches = self.tail_batches(
            ctx, layer.ref, n, self.strategy
        )  # measured before the hook exists
        out = torch.zeros(b_count, n, dtype=torch.float32, device=acts.device)
        tail = LayerTail(
            "recipro-cam", layer.ref, ctx, self.strategy, batches=batches, bf16=self.bf16
        )
        with tail:
            for b in range(b_count):
                build = functools.partial(_masked_rows, acts[b], self.kernel)
                out[b] = tail.scores(b, n, build, "probability").float()
        return out.view(b_count, h, w).to(acts.dtype)
