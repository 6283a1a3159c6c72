"""The state one run shares between its steps (execution, grids, summary, report)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ...api import build_method
from ...models import LoadedModel
from ..config import BenchmarkConfig
from ..registry import MetricInfo
from .data import Dataset
from .maps import MapReader, MapWriter
from .store import ResultsStore


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
    progress: bool
    cams: dict[str, Callable[..., torch.Tensor]] = field(default_factory=dict)
    reader: MapReader | None = None
    writer: MapWriter | None = None

    def cam(self, method: str) -> Callable[..., torch.Tensor]:
        """The method built once on the run's model."""
        if method not in self.cams:
            opts = self.config.method_options.get(method, {})
            self.cams[method] = build_method(self.lm.model, method, None, **opts)
        return self.cams[method]

    def explainer(self, method: str) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], Any]:
        """``(model, images, classes) -> maps`` for metrics that recompute maps."""
        opts = self.config.method_options.get(method, {})

        def explain(model: nn.Module, images: torch.Tensor, classes: torch.Tensor) -> Any:
            if model is self.lm.model:
                return self.cam(method)(images, classes)
            return build_method(model, method, None, **opts)(images, classes)

        return explain
