"""The loop every perturbation CAM runs its extra forward passes through, and its plan.

Score-CAM, SS-CAM, IS-CAM and Group-CAM mask the input with maps built from the layer;
Ablation-CAM zeroes the layer's channels one at a time. All of them run their extra
forward passes through :func:`perturbed_scores`: at most ``inputs_per_pass`` perturbed
inputs at a time, built just before their pass and dropped after it, under
``torch.inference_mode()``; the engine's capture hooks are gone by then. With
``inputs_per_pass="auto"`` the loop's own first chunks pick the fastest size and memory
format within the memory budget (:mod:`sacam._speed.tuner`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F

from .._layers import LayerRef
from .._outputs import probabilities
from .._speed.allocator import release_free_memory
from .._speed.memory import (
    MEASURE_BATCH,
    expand_cap,
    fixed_batch,
    measured_cap,
    passes_within,
    unmeasured_rows,
)
from .._speed.tuner import PerPass, Plan, Tuner, check_inputs_per_pass, sync, tuner_for
from ..core import BaseCAM
from ..errors import MethodError
from ..explanation import CallContext, normalize_maps
from ..targets import PerSampleCallables

ScoreKind = Literal["probability", "logit"]
Build = Callable[[int, int], tuple[torch.Tensor, torch.Tensor | None]]


def target_scores(output: torch.Tensor, ctx: CallContext, b: int, kind: ScoreKind) -> torch.Tensor:
    """Score of sample ``b``'s target on every row of ``output`` (copies of that sample).

    For class targets: the probability (``kind="probability"``: softmax, or sigmoid for
    one-logit and multi-label outputs, :func:`sacam._outputs.probabilities`) or the logit of the
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
    return probabilities(ctx.model, output)[:, c]


def batch_target_scores(output: torch.Tensor, ctx: CallContext, kind: ScoreKind) -> torch.Tensor:
    """Like :func:`target_scores`, for a batch whose row ``b`` belongs to sample ``b``."""
    if ctx.class_idx is None:
        return ctx.score_fn(output)
    values = probabilities(ctx.model, output) if kind == "probability" else output
    return values.gather(1, ctx.class_idx[:, None].to(output.device))[:, 0]


def perturbed_scores(
    ctx: CallContext,
    b: int,
    count: int,
    build: Build,
    tuner: Tuner,
    kind: ScoreKind,
    *,
    bf16: bool = False,
) -> torch.Tensor:
    """Target scores of ``count`` perturbed copies of image ``b``, ``(count,)`` float32.

    ``build(start, stop)`` returns the inputs ``start..stop-1`` (a chunk of at most the
    plan's ``inputs_per_pass``) and optionally a bool ``(stop - start,)`` mask of the rows
    to keep (the others score 0). ``tuner`` gives each chunk's plan (its size and memory
    format, the same results) and times the chunks it is still tuning. The loop runs under
    ``torch.inference_mode()``; each chunk of inputs is built just before its forward pass
    and released after it. ``bf16`` runs the passes under bfloat16 autocast (faster on
    CPUs with bf16 units, not exact).
    """
    return perturbed_scores_of(ctx, count, {b: build}, tuner, kind, bf16=bf16)[b]


def perturbed_scores_of(
    ctx: CallContext,
    count: int,
    builds: Mapping[int, Build],
    tuner: Tuner,
    kind: ScoreKind,
    *,
    bf16: bool = False,
) -> dict[int, torch.Tensor]:
    """:func:`perturbed_scores` of several images ``{b: build}``, chunk by chunk.

    Each chunk of rows ``start..stop-1`` is built and scored for every image in turn
    before the next chunk, so work a chunk's builds share across images (SS-CAM's noise,
    the same for every image) is done once per chunk. Every forward pass still holds one
    image's rows, the same passes as one image at a time: the same scores.
    """
    settled = tuner.settled
    out = _scores_loop(ctx, count, builds, tuner, kind, bf16)
    if not settled:  # the result of the settled plan, as every later call computes it
        tuner.settle()
        out = _scores_loop(ctx, count, builds, tuner, kind, bf16)
    return out


def _scores_loop(
    ctx: CallContext,
    count: int,
    builds: Mapping[int, Build],
    tuner: Tuner,
    kind: ScoreKind,
    bf16: bool,
) -> dict[int, torch.Tensor]:
    """One pass of :func:`perturbed_scores_of` over every chunk, with the tuner's plans."""
    device = ctx.images.device
    out = {b: torch.zeros(count, dtype=torch.float32, device=device) for b in builds}
    start, last = 0, None
    with torch.inference_mode():
        while start < count:
            plan, timed = tuner.next(count - start)
            if timed and plan != last and device.type == "cpu":
                # another candidate's size or format: the blocks the last one freed cannot
                # be reused, and kept beside the new ones they would add to the peak
                release_free_memory()
            stop, last = min(start + plan.inputs_per_pass, count), plan
            t0 = sync(device) if timed else 0.0
            for b, build in builds.items():
                out[b][start:stop] = _chunk_scores(ctx, b, build(start, stop), plan, kind, bf16)
            if timed and stop - start == plan.inputs_per_pass:
                tuner.record(plan, 1000 * (sync(device) - t0) / ((stop - start) * len(builds)))
            start = stop
    return out


def _chunk_scores(
    ctx: CallContext,
    b: int,
    built: tuple[torch.Tensor, torch.Tensor | None],
    plan: Plan,
    kind: ScoreKind,
    bf16: bool,
) -> torch.Tensor:
    """Scores of one chunk of image ``b``'s perturbed inputs (0 where ``keep`` is False)."""
    inputs, keep = built
    if plan.channels_last and inputs.ndim == 4:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=bf16):
        output = ctx.model(inputs)
    scores = target_scores(output.float(), ctx, b, kind).float()
    if keep is not None:
        scores = torch.where(keep, scores, torch.zeros_like(scores))
    return scores


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
        inputs_per_pass: the most perturbed inputs (or edited rows of the layer) one
            forward pass holds, a whole number ≥ 1, or ``"auto"`` (default): the fastest
            size (up to 64 on CPUs) and memory format, tuned on the call's own first
            passes and then kept for the model and input shape (on disk too), capped by
            the memory budget. A model that only takes a fixed batch (a ``torch.export``
            program exported at batch 1) needs ``inputs_per_pass=1``. Results do not
            depend on it beyond float rounding.
        max_memory_mb: budget for the memory the perturbed passes use at once (measured
            per model, device, input shape and dtype); the inputs per pass are cut to
            fit, so peak memory does not grow with the number of channels.
        bf16: run the perturbed passes under bfloat16 autocast (off by default: faster on
            CPUs with bf16 units, but not exact; see docs/performance.md).
    """

    uses_gradients = False
    #: only this many channels are scored (set by the methods that take the option)
    top_channels: int | None = None

    def __init__(
        self,
        *args: Any,
        inputs_per_pass: PerPass = "auto",
        max_memory_mb: float = 1024.0,
        bf16: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.inputs_per_pass = check_inputs_per_pass(inputs_per_pass)
        if not (
            isinstance(max_memory_mb, int | float)
            and not isinstance(max_memory_mb, bool)
            and max_memory_mb > 0
        ):
            raise MethodError(f"max_memory_mb must be > 0, got {max_memory_mb!r}")
        self.max_memory_mb = float(max_memory_mb)
        self.bf16 = bool(bf16)

    def expected_rows(self, shape: tuple[int, ...], image_size: tuple[int, int]) -> int:
        """The probe and clean passes, and :meth:`rows_per_channel` per scored channel."""
        top = self.top_channels
        return 2 + (top if top else shape[1]) * self.rows_per_channel()

    def scored_channels(self, k: int) -> int:
        """How many of a layer's ``k`` channels a call scores (``top_channels``, at most ``k``)."""
        return k if self.top_channels is None else min(self.top_channels, k)

    def rows_per_channel(self) -> int:
        """Masked inputs or edited rows per scored channel (one)."""
        return 1

    def cap(self, ctx: CallContext) -> int:
        """The most inputs one of this call's passes may hold (option and memory budget).

        The memory measurement itself never runs a pass larger than ``inputs_per_pass``,
        and a model exported for a fixed batch of 1 gets one input per pass.
        """
        auto = self.inputs_per_pass == "auto"
        limit = passes_within(ctx.model, MEASURE_BATCH if auto else int(self.inputs_per_pass))
        if limit == 1:
            return 1
        cap = measured_cap(ctx.model, ctx.images[0], self.max_memory_mb, limit)
        return cap if auto and limit == MEASURE_BATCH else min(limit, cap)

    def tuner(self, ctx: CallContext) -> Tuner:
        """The plans of this call's perturbed passes: fixed, or tuned on them (``"auto"``)."""
        cap = self.cap(ctx)
        if self.inputs_per_pass != "auto":
            return Tuner.fixed(Plan(cap, False), even=False)
        return tuner_for(ctx.model, ctx.images[0], "perturbation", cap, even=False)

    def tail_batches(
        self, ctx: CallContext, ref: LayerRef, rows: int, strategy: str
    ) -> tuple[int, int]:
        """Rows per pass of the network after layer ``ref``: ``(expand, repeat)``.

        ``"repeat"`` passes are whole forward passes: the best plan of :meth:`tuner`
        known so far. ``"expand"`` passes run the layers before the target once per
        batch, so more rows per pass cost less per row: with ``inputs_per_pass="auto"``
        they take as many rows as the network after the layer holds within
        ``max_memory_mb`` (never fewer than whole passes would). An explicit
        ``inputs_per_pass``, or a model that takes a fixed batch, sets both. Where a
        pessimistic estimate puts all ``rows`` of an image (the most any image needs) in
        one expanded pass within the budget and ``strategy`` may expand, nothing is measured
        (:func:`sacam._speed.memory.unmeasured_rows`).
        """
        auto = self.inputs_per_pass == "auto" and fixed_batch(ctx.model) is None
        if auto and strategy != "repeat":
            found = unmeasured_rows(
                ctx.model, ctx.images[0], ref.name, ref.call, self.max_memory_mb, rows
            )
            if found is not None:
                return found
        repeat = self.tuner(ctx).best().inputs_per_pass
        if not auto:
            return repeat, repeat
        cap = expand_cap(ctx.model, ctx.images[0], ref.name, ref.call, self.max_memory_mb)
        return cap, repeat

    def perturbed(
        self,
        ctx: CallContext,
        b: int,
        count: int,
        build: Build,
        kind: ScoreKind,
        tuner: Tuner,
    ) -> torch.Tensor:
        """:func:`perturbed_scores` with this call's ``tuner`` and the ``bf16`` option."""
        return self.perturbed_of(ctx, count, {b: build}, kind, tuner)[b]

    def perturbed_of(
        self,
        ctx: CallContext,
        count: int,
        builds: Mapping[int, Build],
        kind: ScoreKind,
        tuner: Tuner,
    ) -> dict[int, torch.Tensor]:
        """:func:`perturbed_scores_of` with this call's ``tuner`` and the ``bf16`` option."""
        return perturbed_scores_of(ctx, count, builds, tuner, kind, bf16=self.bf16)
