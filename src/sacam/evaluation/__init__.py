"""Evaluation of maps: faithfulness, localisation, robustness, sanity, complexity.

Each module holds plain per-sample functions and registers its metrics in
:mod:`sacam.evaluation.registry`; :mod:`sacam.evaluation.runner` runs them over a dataset
(``sacam benchmark``). Import order below is the registry's order (CLI choices, tables).
"""

from . import faithfulness, road, localization, robustness, adversarial_metrics  # isort: skip
from . import sanity, complexity, combined  # isort: skip
from . import adversarial
from .config import BenchmarkConfig
from .registry import (
    MetricBatch,
    MetricInfo,
    MetricOutput,
    default_metrics,
    list_metrics,
    metric_info,
    metrics_table,
    register_metric,
    value_directions,
)
from .runner import render_markdown, run_benchmark
from .stats import MeanAccumulator, mean_ci

__all__ = [
    "BenchmarkConfig",
    "adversarial",
    "adversarial_metrics",
    "MeanAccumulator",
    "MetricBatch",
    "MetricInfo",
    "MetricOutput",
    "combined",
    "complexity",
    "default_metrics",
    "faithfulness",
    "list_metrics",
    "localization",
    "mean_ci",
    "metric_info",
    "metrics_table",
    "register_metric",
    "render_markdown",
    "road",
    "robustness",
    "run_benchmark",
    "sanity",
    "value_directions",
]
