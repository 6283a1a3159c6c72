"""Recipro-CAM (Byun & Lee, 2022/2024): gradient-free, one tail pass per layer position."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F

from .._hooks import Capture
from ..core import CallContext, LayerData
from ..errors import LayerError, MethodError
from ..registry import register_method
from .perturbation import PerturbationCAM, target_scores

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

    How the tail runs (``strategy``): a forward hook on the target layer replaces its
    output with a batch of masked maps, so the network after the layer runs on them.
    ``"expand"`` (as the authors' code does) feeds the image once per batch and the hook
    turns the layer's one output row into ``batch_size`` masked rows: the layers before
    the target run once per batch, and ``h·w`` positions cost ``⌈h·w / batch_size⌉``
    passes of the front plus ``h·w`` rows of the tail (49 at 7×7). It needs a network
    that takes its batch size from the tensors it computes: one that reads it from the
    input (the default model's ``x.view(inputs.size(0), -1)``) or concatenates a tensor
    from before the layer with one after it cannot run it. ``"repeat"`` feeds the image
    repeated ``batch_size`` times, so the front's work is wasted (``h·w`` full forward
    passes) but any network runs. ``"auto"`` (default) tries ``"expand"`` on the first
    batch and switches to ``"repeat"`` for the rest of the call if the pass fails or
    returns the wrong number of rows (one wasted batch). All give the same maps.

    Options of the perturbation methods (``batch_size``, ``max_memory_mb``, ``bf16``)
    apply. Needs the layer's own ``(B, K, h, w)`` output (no ``reshape_transform``). The
    hook exists only during these passes (removed in a ``finally``); they run under
    ``torch.inference_mode()``. No library implements it (the authors' code and
    OpenVINO XAI aside).

    Example:
        >>> import torch, sacam
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 2))
        >>> sacam.explain(net, torch.rand(2, 3, 16, 16), method="recipro-cam", layer="1").shape
        torch.Size([2, 16, 16])
    """

    def __init__(
        self,
        *args: Any,
        kernel: Literal["point", "gaussian"] = "point",
        strategy: Literal["auto", "expand", "repeat"] = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if kernel not in ("point", "gaussian"):
            raise MethodError(f"recipro-cam kernel must be 'point' or 'gaussian', got {kernel!r}")
        if strategy not in ("auto", "expand", "repeat"):
            raise MethodError(
                f"recipro-cam strategy must be 'auto', 'expand' or 'repeat', got {strategy!r}"
            )
        if self.reshape_transform is not None:
            raise MethodError(
                "recipro-cam replaces the layer's own output, so it cannot use a "
                "reshape_transform: pick a layer with a (B, K, h, w) output"
            )
        self.kernel: Literal["point", "gaussian"] = kernel
        self.strategy = strategy

    def layer_map(self, layer: LayerData, ctx: CallContext) -> torch.Tensor:
        """Class score of each position's masked map, ``(B, h, w)``."""
        acts = layer.activations
        b_count, _, h, w = acts.shape
        n = h * w
        batch = self.plan(ctx).batch_size  # measured before the hook exists
        out = torch.zeros(b_count, n, dtype=torch.float32, device=acts.device)
        # this call's state, read by the hook: the masked rows and how the tail is fed
        state: dict[str, Any] = {"mode": "repeat" if self.strategy == "repeat" else "expand"}

        def edit(label: str, output: torch.Tensor) -> torch.Tensor:
            masked = state["rows"]
            expected = 1 if state["mode"] == "expand" else masked.shape[0]
            if output.shape[0] != expected or output.shape[1:] != masked.shape[1:]:
                raise LayerError(
                    f"recipro-cam expected layer {label!r} to output ({expected}, "
                    f"{', '.join(map(str, masked.shape[1:]))}), got {tuple(output.shape)}"
                )
            return masked.to(output.dtype)

        cap = Capture([layer.ref], with_grad=False, edit=edit)
        with cap, torch.inference_mode():
            for b in range(b_count):
                image = ctx.images[b : b + 1]
                for start in range(0, n, batch):
                    positions = torch.arange(start, min(start + batch, n), device=acts.device)
                    state["rows"] = spatial_masks(acts[b], positions, self.kernel)
                    m = positions.numel()
                    try:
                        cap.reset()  # count the layer's calls from this pass's start
                        scores = self._tail_scores(ctx, b, image, m, state["mode"])
                    except _ExpandFailed as failed:
                        if self.strategy == "expand":
                            raise MethodError(
                                "recipro-cam's strategy='expand' runs the layers before the "
                                "target once and the rest on a larger batch, which this model "
                                f"does not allow ({failed}); pass strategy='repeat' or 'auto'"
                            ) from failed.__cause__
                        state["mode"] = "repeat"  # "auto": this model needs the whole pass
                        cap.reset()
                        scores = self._tail_scores(ctx, b, image, m, "repeat")
                    out[b, start : start + m] = scores
                    del state["rows"]
        return out.view(b_count, h, w).to(acts.dtype)

    def _tail_scores(
        self, ctx: CallContext, b: int, image: torch.Tensor, m: int, mode: str
    ) -> torch.Tensor:
        """Scores of ``m`` masked maps of image ``b`` (the hook supplies the maps)."""
        inputs = image if mode == "expand" else image.expand(m, -1, -1, -1)
        try:
            with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                output = ctx.model(inputs)
        except RuntimeError as err:
            if mode != "expand":
                raise
            raise _ExpandFailed(f"the forward pass failed: {err}") from err
        if not isinstance(output, torch.Tensor) or output.shape[0] != m:
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            if mode == "expand":
                raise _ExpandFailed(f"the model returned {got} for {m} masked maps")
            raise MethodError(
                f"recipro-cam expected the model to return {m} rows (one per masked map), got {got}"
            )
        return target_scores(output.float(), ctx, b, "probability").float()


class _ExpandFailed(Exception):
    """The tail could not run on an expanded batch (the model mixes in the input's batch)."""
