"""The network after a layer (its "tail"), run on edited outputs of that layer.

Recipro-CAM, FD-CAM and Ablation-CAM score many edited versions of one image's
activations at the target layer. A forward hook on the layer (present only inside
:class:`LayerTail`'s ``with`` block) replaces the layer's output with a batch of edited
rows, so only what follows the layer sees them. How the image is fed (``strategy``):

- ``"expand"``: the image once per batch; the hook turns the layer's single output row
  into the batch of edited rows. The layers before the target run once per batch of
  rows, not once per row: at a classifier's head, Ablation-CAM's ``K`` edited rows cost
  ``⌈K / rows per pass⌉`` passes of the front plus ``K`` rows of pooling and the classifier.
  It needs a network that takes its batch size from the tensors it computes; one that
  reads it from the input (EfficientNet's ``x.view(inputs.size(0), -1)``) or
  concatenates a tensor from before the layer with one after it cannot run it (a tensor
  from before the layer *added* to one after it broadcasts, which gives the same result).
- ``"repeat"``: the image repeated once per row, so the front's work is repeated too,
  but any network runs.
- ``"auto"``: ``"expand"`` until a pass fails or returns the wrong number of rows, then
  ``"repeat"`` for the rest of the call (one wasted batch). All give the same scores
  (to float rounding).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

from .._hooks import Capture
from .._layers import LayerRef
from ..core import BaseCAM
from ..errors import LayerError, MethodError
from ..explanation import CallContext
from ._options import check_count
from ._perturb import ScoreKind, target_scores

Strategy = Literal["auto", "expand", "repeat"]
STRATEGIES: tuple[Strategy, ...] = ("auto", "expand", "repeat")
Build = Callable[[int, int], torch.Tensor]  # (start, stop) -> rows start..stop-1


def check_strategy(method: str, strategy: object) -> Strategy:
    """``strategy`` if it is one of :data:`STRATEGIES`, else a :class:`MethodError`."""
    for known in STRATEGIES:
        if strategy == known:
            return known
    raise MethodError(f"{method} strategy must be 'auto', 'expand' or 'repeat', got {strategy!r}")


def check_tail_options(
    cam: BaseCAM, strategy: object, top_channels: object, change: str
) -> tuple[Strategy, int | None]:
    """The checked ``strategy`` and ``top_channels`` of a method that changes a layer's output.

    ``change`` says what the method does to the layer's own output (for the error message):
    such a method cannot work on a ``reshape_transform``'s output, so it refuses one.
    """
    method = cam.name or type(cam).__name__
    checked = check_strategy(method, strategy)
    top = None if top_channels is None else check_count("top_channels", top_channels)
    if cam.reshape_transform is not None:
        raise MethodError(
            f"{method} {change}, so it cannot use a reshape_transform: pick a layer with a "
            "(B, K, h, w) output"
        )
    return checked, top


class _ExpandFailed(Exception):
    """The tail could not run on an expanded batch (the model mixes in the input's batch)."""


class LayerTail:
    """Scores of one image when the target layer outputs given rows (see the module doc).

    Use as a context manager: the hook exists only inside the ``with`` block (removed in
    ``__exit__`` even when a pass raises) and acts only on the thread that entered it.
    :meth:`scores` runs under ``torch.inference_mode()``.

    Args:
        method: the method's name, for error messages.
        ref: the target layer (module and call).
        ctx: the call's context (model, images, targets).
        strategy: how the image is fed (module doc).
        batches: rows per pass when feeding the image once per batch and once per row
            (``PerturbationCAM.tail_batches``); :attr:`rows_per_pass` is the current one.
        bf16: run the passes under bfloat16 autocast.
    """

    def __init__(
        self,
        method: str,
        ref: LayerRef,
        ctx: CallContext,
        strategy: Strategy,
        *,
        batches: tuple[int, int],
        bf16: bool,
    ) -> None:
        self.method = method
        self.batches = batches
        self.ctx = ctx
        self.strategy = strategy
        self.bf16 = bf16
        self.mode: Literal["expand", "repeat"] = "repeat" if strategy == "repeat" else "expand"
        self._rows: torch.Tensor | None = None  # the rows of the pass running now
        self._capture = Capture([ref], with_grad=False, edit=self._edit)

    @property
    def rows_per_pass(self) -> int:
        """Rows per pass now (the mode may change after a pass)."""
        return self.batches[0] if self.mode == "expand" else self.batches[1]

    def __enter__(self) -> LayerTail:
        self._capture.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._capture.__exit__(*exc)

    def scores(self, b: int, count: int, build: Build, kind: ScoreKind) -> torch.Tensor:
        """Target score of image ``b`` with the layer's output set to each of ``count`` rows.

        ``build(start, stop)`` returns rows ``start..stop-1``, ``(stop - start,
        *layer_output_shape[1:])``; they are built one pass at a time, :attr:`rows_per_pass`
        rows at most. Returns ``(count,)`` in the model's output dtype (class targets: the
        logit or softmax probability of image ``b``'s class; callable targets: the
        callable's score).
        """
        parts = []
        start = 0
        while start < count:
            stop = min(start + self.rows_per_pass, count)
            parts.append(self._batch(b, build(start, stop), kind))
            start = stop
        return torch.cat(parts)

    def _batch(self, b: int, rows: torch.Tensor, kind: ScoreKind) -> torch.Tensor:
        """Scores of one batch of rows; after an "auto" fallback, in "repeat"-sized passes."""
        try:
            if self.mode == "expand":
                try:
                    return self._pass(b, rows, kind)
                except _ExpandFailed as failed:
                    if self.strategy == "expand":
                        raise MethodError(
                            f"{self.method}'s strategy='expand' runs the layers before the "
                            "target once and the rest on a larger batch, which this model "
                            f"does not allow ({failed}); pass strategy='repeat' or 'auto'"
                        ) from failed.__cause__
                    self.mode = "repeat"  # "auto": this model needs the whole pass
            step = self.batches[1]
            parts = [self._pass(b, rows[i : i + step], kind) for i in range(0, len(rows), step)]
            return torch.cat(parts)
        finally:
            self._rows = None

    def _edit(self, label: str, output: torch.Tensor) -> torch.Tensor:
        rows = self._rows
        if rows is None:  # pragma: no cover - the hook runs only inside scores()
            raise RuntimeError("LayerTail's hook ran outside a pass")
        expected = 1 if self.mode == "expand" else rows.shape[0]
        if output.shape[0] != expected or output.shape[1:] != rows.shape[1:]:
            shape = ", ".join(map(str, (expected, *rows.shape[1:])))
            raise LayerError(
                f"{self.method} expected layer {label!r} to output ({shape}), "
                f"got {tuple(output.shape)}"
            )
        return rows.to(output.dtype)

    def _pass(self, b: int, rows: torch.Tensor, kind: ScoreKind) -> torch.Tensor:
        self._rows = rows
        m = rows.shape[0]
        self._capture.reset()  # count the layer's calls from this pass's start
        image = self.ctx.images[b : b + 1]
        inputs = image if self.mode == "expand" else image.expand(m, -1, -1, -1)
        try:
            with (
                torch.inference_mode(),
                torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=self.bf16),
            ):
                output = self.ctx.model(inputs)
        except RuntimeError as err:
            if self.mode != "expand":
                raise
            raise _ExpandFailed(f"the forward pass failed: {err}") from err
        if not isinstance(output, torch.Tensor) or output.ndim == 0 or output.shape[0] != m:
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            if self.mode == "expand":
                raise _ExpandFailed(f"the model returned {got} for {m} edited maps")
            raise MethodError(
                f"{self.method} expected the model to return {m} rows (one per edited map), "
                f"got {got}"
            )
        with torch.inference_mode():
            return target_scores(output, self.ctx, b, kind)
