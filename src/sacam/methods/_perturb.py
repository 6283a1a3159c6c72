"""The loop every perturbation CAM runs its extra forward passes through, and its plan.

Score-CAM, SS-CAM, IS-CAM and Group-CAM mask the input with maps built from the layer;
Ablation-CAM zeroes the layer's channels one at a time. All of them run their extra
forward passes through :func:`perturbed_scores`: ``batch_size`` perturbed inputs at a
time, built just before their pass and dropped after it, under
``torch.inference_mode()``; the engine's capture hooks are gone by then. The batch size
comes from :mod:`sacam._tuning` (fastest measured size within the memory budget).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F

from .._layers import LayerRef
from .._tuning import Plan, expand_cap, measure_plan, measured_cap
from ..core import BaseCAM, CallContext, normalize_maps
from ..errors import MethodError
from ..targets import PerSampleCallables
from ._options import check_count

ScoreKind = Literal["probability", "logit"]
Build = Callable[[int, int], tuple[torch.Tensor, torch.Tensor | None]]


def target_scores(output: torch.Tensor, ctx: CallContext, b: int, kind: ScoreKind) -> torch.Tensor:
    """Score of sample ``b``'s target on every row of ``output`` (copies of that sample).

    For class targets: the softmax probability (``kind="probability"``) or the logit of the
    class; for callable targets: the callable's score, whatever ``kind``.
    """
    if ctx.class_idx is None:
        fn = ctx.score_fn
        if isinstance(fn, PerSampleCallables):  # copies of sample b: its own callable
            fn = fn.for_sample(b)
        return fn(output)
    c = int(ctx.class_idx[b])
    if kind == "logit":
        return output[:, c]
    return torch.softmax(output.float(), dim=1)[:, c]


def batch_target_scores(output: torch.Tensor, ctx: CallContext, kind: ScoreKind) -> torch.Tensor:
    """Like :func:`target_scores`, for a batch whose row ``b`` belongs to sample ``b``."""
    if ctx.class_idx is None:
        return ctx.score_fn(output)
    values = torch.softmax(output.float(), dim=1) if kind == "probability" else output
    return values.gather(1, ctx.class_idx[:, None].to(output.device))[:, 0]


def perturbed_scores(
    ctx: CallContext,
    b: int,
    count: int,
    build: Build,
    batch_size: int,
    kind: ScoreKind,
    *,
    channels_last: bool = False,
    bf16: bool = False,
) -> torch.Tensor:
    """Target scores of ``count`` perturbed copies of image ``b``, ``(count,)`` float32.

    ``build(start, stop)`` returns the inputs ``start..stop-1`` (a batch of at most
    ``batch_size``) and optionally a bool ``(stop - start,)`` mask of the rows to keep
    (the others score 0). The loop runs under ``torch.inference_mode()``; each batch of
    inputs is built just before its forward pass and released after it. ``channels_last``
    passes the inputs in that memory format (same results); ``bf16`` runs the passes under
    bfloat16 autocast (faster on CPUs with bf16 units, not exact).
    """
    options = {"channels_last": channels_last, "bf16": bf16}
    return perturbed_scores_of(ctx, count, {b: build}, batch_size, kind, **options)[b]


def perturbed_scores_of(
    ctx: CallContext,
    count: int,
    builds: Mapping[int, Build],
    batch_size: int,
    kind: ScoreKind,
    *,
    channels_last: bool = False,
    bf16: bool = False,
) -> dict[int, torch.Tensor]:
    """:func:`perturbed_scores` of several images ``{b: build}``, chunk by chunk.

    Each chunk of rows ``start..stop-1`` is built and scored for every image in turn
    before the next chunk, so work a chunk's builds share across images (SS-CAM's noise,
    the same for every image) is done once per chunk. Every forward pass still holds one
    image's rows, the same passes as one image at a time: the same scores.
    """
    device = ctx.images.device
    out = {b: torch.zeros(count, dtype=torch.float32, device=device) for b in builds}
    with torch.inference_mode():
        for start in range(0, count, batch_size):
            stop = min(start + batch_size, count)
            for b, build in builds.items():
                inputs, keep = build(start, stop)
                if channels_last and inputs.ndim == 4:
                    inputs = inputs.contiguous(memory_format=torch.channels_last)
                with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=bf16):
                    output = ctx.model(inputs)
                scores = target_scores(output.float(), ctx, b, kind).float()
                if keep is not None:
                    scores = torch.where(keep, scores, torch.zeros_like(scores))
                out[b][start:stop] = scores
                del inputs, output, scores
    return out


def channel_masks(maps: torch.Tensor, size: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Score-CAM masks: ``minmax(upsample(A^k))`` of ``(n, h, w)`` maps, and constant flags.

    Returns ``(n, H, W)`` masks in [0, 1] (all 0 for a constant map) and a ``(n,)`` bool
    tensor, True where the upsampled map was constant.
    """
    up = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return normalize_maps(up)


def strongest_channels(acts: torch.Tensor, n: int | None) -> torch.Tensor:
    """Indices of the ``n`` channels of ``(K, h, w)`` with the largest mean (all for ``None``).

    The order is the channel order when every channel is kept, else by decreasing mean.
    """
    k = acts.shape[0]
    if n is None or n >= k:
        return torch.arange(k, device=acts.device)
    return acts.mean((1, 2)).topk(n).indices


class PerturbationCAM(BaseCAM):
    """Shared options of the perturbation methods: how their many forward passes run.

    Args:
        batch_size: perturbed inputs per forward pass, or ``"auto"`` (default): the
            fastest batch size and memory format measured once per model and input shape
            (see ``sacam._tuning``), capped by the memory budget. Results do not depend on
            it beyond float rounding.
        max_memory_mb: budget for the memory the perturbed passes use at once (measured
            per model, device, input shape and dtype; see ``sacam._tuning``); the batch
            size is cut to fit, so peak memory does not grow with the number of channels.
        bf16: run the perturbed passes under bfloat16 autocast (off by default: faster on
            CPUs with bf16 units, but not exact; see docs/performance.md).
    """

    uses_gradients = False
    #: only this many channels are scored (set by the methods that take the option)
    top_channels: int | None = None

    def __init__(
        self,
        *args: Any,
        batch_size: int | Literal["auto"] = "auto",
        max_memory_mb: float = 1024.0,
        bf16: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if batch_size != "auto":
            check_count("batch_size", batch_size)
        if not (
            isinstance(max_memory_mb, int | float)
            and not isinstance(max_memory_mb, bool)
            and max_memory_mb > 0
        ):
            raise MethodError(f"max_memory_mb must be > 0, got {max_memory_mb!r}")
        self.batch_size = batch_size
        self.max_memory_mb = float(max_memory_mb)
        self.bf16 = bool(bf16)

    def expected_rows(self, shape: tuple[int, ...], image_size: tuple[int, int]) -> int:
        """The probe and clean passes, and :meth:`rows_per_channel` per scored channel."""
        top = self.top_channels
        return 2 + (top if top else shape[1]) * self.rows_per_channel()

    def rows_per_channel(self) -> int:
        """Masked inputs or edited rows per scored channel (one)."""
        return 1

    def plan(self, ctx: CallContext) -> Plan:
        """Batch size and memory format for this call's perturbed passes."""
        cap = measured_cap(ctx.model, ctx.images[0], self.max_memory_mb)
        if self.batch_size != "auto":
            return Plan(min(int(self.batch_size), cap), False)
        return measure_plan(ctx.model, ctx.images[0], cap)

    def tail_batches(self, ctx: CallContext, ref: LayerRef) -> tuple[int, int]:
        """Rows per pass of the network after layer ``ref``: ``(expand, repeat)``.

        ``"repeat"`` passes are whole forward passes: :meth:`plan`'s batch size.
        ``"expand"`` passes run the layers before the target once per batch, so more rows
        per pass cost less per row: with ``batch_size="auto"`` they take as many rows as
        the network after the layer holds within ``max_memory_mb``
        (:func:`sacam._tuning.expand_cap`; never fewer than the plan's batch). An explicit
        ``batch_size`` is used for both.
        """
        plan = self.plan(ctx)
        if self.batch_size != "auto":
            return plan.batch_size, plan.batch_size
        rows = expand_cap(ctx.model, ctx.images[0], ref.name, ref.call, self.max_memory_mb)
        return rows, plan.batch_size

    def perturbed(
        self,
        ctx: CallContext,
        b: int,
        count: int,
        build: Build,
        kind: ScoreKind,
        plan: Plan,
    ) -> torch.Tensor:
        """:func:`perturbed_scores` with this method's plan and ``bf16`` option."""
        return self.perturbed_of(ctx, count, {b: build}, kind, plan)[b]

    def perturbed_of(
        self,
        ctx: CallContext,
        count: int,
        builds: Mapping[int, Build],
        kind: ScoreKind,
        plan: Plan,
    ) -> dict[int, torch.Tensor]:
        """:func:`perturbed_scores_of` with this method's plan and ``bf16`` option."""
        options = {"channels_last": plan.channels_last, "bf16": self.bf16}
        return perturbed_scores_of(ctx, count, builds, plan.batch_size, kind, **options)
