"""The state one run shares between its steps (execution, grids, summary, report)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ...api import build_method
from ...errors import LayerError
from ...models import LoadedModel
from ...registry import method_info
from ..config import BenchmarkConfig
from ..registry import MetricInfo
from .clock import Clock
from .data import Dataset
from .maps import MapReader, MapWriter
from .store import ResultsStore


def method_options(config: BenchmarkConfig, method: str) -> dict[str, Any]:
    """A method's options in a run; ``seed`` is the run's unless given (for seeded methods)."""
    opts = dict(config.method_options.get(method, {}))
    init = inspect.signature(method_info(method).cls.__init__).parameters
    if "seed" in init:
        opts.setdefault("seed", config.seed)
    return opts


def check_methods(config: BenchmarkConfig, model: nn.Module) -> None:
    """Build every method of the run once, so a bad layer or option fails before any work."""
    for name in config.layer or []:
        try:
            model.get_submodule(name)
        except AttributeError:
            raise LayerError(
                f"no layer named {name!r} in this model: give a dotted module name "
                "(sacam.list_layers(model) lists them)"
            ) from None
    if config.from_maps is None:
        for method in config.methods:
            build_method(model, method, config.method_layer(), **method_options(config, method))


@dataclass
class Run:
    """The state one run shares between its steps."""

    config: BenchmarkConfig
    lm: LoadedModel
    dataset: Dataset
    metrics: list[MetricInfo]
    store: ResultsStore
    done: set[tuple[str, str]]
    predictions: dict[str, dict[str, str]]
    progress: bool | None
    cams: dict[str, Callable[..., torch.Tensor]] = field(default_factory=dict)
    reader: MapReader | None = None
    writer: MapWriter | None = None
    clock: Clock = field(default_factory=Clock)

    def options(self, method: str) -> dict[str, Any]:
        """The method's options; ``seed`` is the run's unless given (for seeded methods)."""
        return method_options(self.config, method)

    def cam(self, method: str) -> Callable[..., torch.Tensor]:
        """The method built once on the run's model."""
        if method not in self.cams:
            self.cams[method] = build_method(
                self.lm.model, method, self.config.method_layer(), **self.options(method)
            )
        return self.cams[method]

    def explainer(self, method: str) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], Any]:
        """``(model, images, classes) -> maps`` for metrics that recompute maps."""
        opts = self.options(method)

        def explain(model: nn.Module, images: torch.Tensor, classes: torch.Tensor) -> Any:
            if model is self.lm.model:
                return self.cam(method)(images, classes)
            return build_method(model, method, self.config.method_layer(), **opts)(images, classes)

        return explain
