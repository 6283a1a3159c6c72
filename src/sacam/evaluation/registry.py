"""The one registry of evaluation metrics.

A metric is one decorated function ``fn(batch: MetricBatch) -> MetricOutput``; the
decorator records its name (the ``--metrics`` choice), the values it writes and their
directions, and what it needs (annotations, gradients, attacks, the method itself to
recompute maps). The CLI's choices, the summary's arrows, the docs table and the runner's
loop all derive from here.

A *swept* value is written once per ε of the run's ``epsilons``, named
``<value>@<ε·255>`` (``adv_fgsm_topk@2`` for ε = 2/255): results.csv keeps its
``image,method,metric,value`` rows, and :func:`value_info` resolves such a name to its
registered value (direction, description with the ε).

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
from ..preprocess import Preprocess
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
    swept: bool = False


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
            that need ``"method"``: the attacks, sanity, coherency).
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
    swept: list[tuple[str, bool, str]] | None = None,
    source: str,
    needs: tuple[Need, ...] = (),
    unit: Unit = "image",
    default: bool = False,
) -> Callable[[MetricFn], MetricFn]:
    """Function decorator registering a metric under ``name``.

    Args:
        name: the ``--metrics`` choice (lower case, underscores).
        values: ``(value name, higher is better, description)`` per value written.
        swept: values written once per ε of the run, as ``<value name>@<ε·255>``.
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
        vals = tuple(Value(*v) for v in values) + tuple(Value(*v, True) for v in swept or [])
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


def split_eps(name: str) -> tuple[str, float | None]:
    """A value name and its ε in units of 1/255 (None for a value without one).

    Example:
        >>> split_eps("adv_fgsm_topk@0.5"), split_eps("deletion")
        (('adv_fgsm_topk', 0.5), ('deletion', None))
    """
    base, sep, tag = name.partition("@")
    if not sep:
        return name, None
    try:
        return base, float(tag)
    except ValueError:
        return name, None


def value_info(name: str) -> Value | None:
    """The registered value a written name stands for (ε suffix resolved), or None."""
    base, eps = split_eps(name)
    v = value_directions().get(base)
    if v is None or (eps is None) == v.swept:
        return None
    if eps is None:
        return v
    return Value(name, v.higher_is_better, f"{v.description} (ε = {eps:g}/255)", True)


def value_of(name: str) -> Value:
    """Like :func:`value_info`, but an unknown name raises :class:`SacamError`."""
    v = value_info(name)
    if v is None:
        raise SacamError(f"no registered metric writes a value named {name!r}")
    return v


def written_names(info: MetricInfo, epsilons: tuple[float, ...]) -> list[str]:
    """The value names a metric writes in a run with these ε (pixel units)."""
    names: list[str] = []
    for v in info.values:
        if v.swept:
            names += [f"{v.name}@{round(e * 255, 6):g}" for e in epsilons]
        else:
            names.append(v.name)
    return names


def arrow(value: str) -> str:
    """``↑`` when higher is better, ``↓`` when lower is, ``""`` for unknown names."""
    v = value_info(value)
    return "" if v is None else ("↑" if v.higher_is_better else "↓")


def metrics_table() -> str:
    """The registry as a Markdown table (metric, values with arrows, needs, source)."""
    lines = ["| metric | values | needs | source |", "|---|---|---|---|"]
    for info in _METRICS.values():
        vals = ", ".join(
            f"`{v.name}{'@ε' if v.swept else ''}` {'↑' if v.higher_is_better else '↓'}"
            for v in info.values
        )
        needs = ", ".join(sorted(info.needs)) or "–"
        name = f"`{info.name}`" + (" (default)" if info.default else "")
        lines.append(f"| {name} | {vals} | {needs} | {info.source} |")
    return "\n".join(lines)
