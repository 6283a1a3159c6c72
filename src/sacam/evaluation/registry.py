"""The one registry of evaluation metrics.

A metric is one decorated function ``fn(batch: MetricBatch) -> MetricOutput``; the
decorator records its name (the ``--metrics`` choice), the values it writes and their
directions, and what it needs (annotations, gradients, attacks, the method itself to
recompute maps). The CLI's choices, the summary's arrows, the docs table and the runner's
loop all derive from here.

Example:
    >>> import sacam.evaluation
    >>> info = metric_info("deletion")
    >>> [(v.name, v.higher_is_better) for v in info.values]
    [('deletion', False)]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast

import torch
from torch import nn

from ..errors import SacamError
from ..models import Preprocess
from .config import BenchmarkConfig

Need = Literal["annotations", "gradients", "attacks", "method"]
Unit = Literal["image", "grid"]
ExplainFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
T = TypeVar("T")


@dataclass(frozen=True)
class Value:
    """One number a metric writes per image: its name, direction and description."""

    name: str
    higher_is_better: bool
    description: str


@dataclass
class MetricBatch:
    """Everything a metric may use, for one batch of images explained by one method.

    Attributes:
        model: the classifier (eval mode).
        images: ``(B, C, H, W)`` normalised inputs, on the model's device.
        maps: ``(B, H, W)`` maps in [0, 1] at the input size.
        classes: ``(B,)`` explained class per image (long, on the images' device).
        preprocess: the model's preprocessing (pixel space for masking and imputation).
        config: the run's settings (every protocol parameter).
        method: the method's registry name.
        explain: ``(model, images, classes) -> maps`` recomputes maps (for the metrics
            that need ``"method"``: stability, sanity).
        masks: ``(B, H, W)`` bool object masks, or None; ``has_mask`` says which rows hold one.
    """

    model: nn.Module
    images: torch.Tensor
    maps: torch.Tensor
    classes: torch.Tensor
    preprocess: Preprocess
    config: BenchmarkConfig
    method: str = ""
    explain: ExplainFn | None = None
    masks: torch.Tensor | None = None
    has_mask: torch.Tensor | None = None
    _memo: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def size(self) -> int:
        """Images in the batch."""
        return int(self.images.shape[0])

    def memo(self, key: str, compute: Callable[[], T]) -> T:
        """``compute()`` once per batch: a part two metrics share (coherency, confidence)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return cast(T, self._memo[key])


@dataclass
class MetricOutput:
    """Per-image values ``(B,)`` by value name, and curves ``(B, n)`` by curve name."""

    values: dict[str, torch.Tensor]
    curves: dict[str, torch.Tensor] = field(default_factory=dict)


MetricFn = Callable[[MetricBatch], MetricOutput]


@dataclass(frozen=True)
class MetricInfo:
    """A registered metric (a ``--metrics`` choice)."""

    name: str
    values: tuple[Value, ...]
    needs: frozenset[str]
    fn: MetricFn
    source: str
    unit: Unit = "image"
    default: bool = False


_METRICS: dict[str, MetricInfo] = {}


def register_metric(
    name: str,
    *,
    values: list[tuple[str, bool, str]],
    source: str,
    needs: tuple[Need, ...] = (),
    unit: Unit = "image",
    default: bool = False,
) -> Callable[[MetricFn], MetricFn]:
    """Function decorator registering a metric under ``name``.

    Args:
        name: the ``--metrics`` choice (lower case, underscores).
        values: ``(value name, higher is better, description)`` per value written.
        source: the paper or protocol, for the docs table.
        needs: what the metric needs beyond images and maps.
        unit: ``"image"`` (scored per image) or ``"grid"`` (on tiled grids of images).
        default: part of the default selection.
    """
    if name != name.lower() or " " in name or "-" in name:
        raise SacamError(f"metric names are lower case with underscores, got {name!r}")

    def decorate(fn: MetricFn) -> MetricFn:
        if name in _METRICS:
            raise SacamError(f"a metric named {name!r} is already registered")
        vals = tuple(Value(*v) for v in values)
        _METRICS[name] = MetricInfo(name, vals, frozenset(needs), fn, source, unit, default)
        return fn

    return decorate


def list_metrics() -> list[str]:
    """Names of all registered metrics, in registration order."""
    return list(_METRICS)


def default_metrics() -> list[str]:
    """The metrics a run scores when none are chosen."""
    return [name for name, info in _METRICS.items() if info.default]


def metric_info(name: str) -> MetricInfo:
    """Registry entry of a metric; raises :class:`SacamError` listing the valid names."""
    try:
        return _METRICS[name]
    except KeyError:
        raise SacamError(
            f"unknown metric {name!r}; valid: {', '.join(_METRICS)}, all, default"
        ) from None


def value_directions() -> dict[str, Value]:
    """Every value any metric writes, by name, in registry order."""
    return {v.name: v for info in _METRICS.values() for v in info.values}


def arrow(value: str) -> str:
    """``↑`` when higher is better, ``↓`` when lower is, ``""`` for unknown names."""
    v = value_directions().get(value)
    return "" if v is None else ("↑" if v.higher_is_better else "↓")


def metrics_table() -> str:
    """The registry as a Markdown table (metric, values with arrows, needs, source)."""
    lines = ["| metric | values | needs | source |", "|---|---|---|---|"]
    for info in _METRICS.values():
        vals = ", ".join(f"`{v.name}` {'↑' if v.higher_is_better else '↓'}" for v in info.values)
        needs = ", ".join(sorted(info.needs)) or "–"
        name = f"`{info.name}`" + (" (default)" if info.default else "")
        lines.append(f"| {name} | {vals} | {needs} | {info.source} |")
    return "\n".join(lines)
