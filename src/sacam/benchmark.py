"""Moved to :mod:`sacam.evaluation.runner` and :mod:`sacam.evaluation.config`.

``run_benchmark`` and ``BenchmarkConfig`` are re-exported here.

``VALUES``, ``METRIC_GROUPS`` and ``DEFAULT_METRICS`` are views of the metric registry.
"""

from .evaluation.config import BenchmarkConfig
from .evaluation.registry import default_metrics, list_metrics, value_directions
from .evaluation.runner import render_markdown, run_benchmark

VALUES: dict[str, tuple[bool, str]] = {
    v.name: (v.higher_is_better, v.description) for v in value_directions().values()
}
METRIC_GROUPS: list[str] = list_metrics()
DEFAULT_METRICS: list[str] = default_metrics()

__all__ = [
    "DEFAULT_METRICS",
    "METRIC_GROUPS",
    "VALUES",
    "BenchmarkConfig",
    "render_markdown",
    "run_benchmark",
]
