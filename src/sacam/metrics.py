"""Moved to :mod:`sacam.evaluation` (faithfulness, complexity, stats); re-exported here.

``METRICS`` is a view of the metric registry's values (name -> direction, description).
"""

from .evaluation.complexity import entropy, gini
from .evaluation.faithfulness import *  # noqa: F403
from .evaluation.registry import Value, value_directions
from .evaluation.stats import MeanAccumulator, mean_ci

METRICS: dict[str, Value] = value_directions()

__all__ = ["METRICS", "MeanAccumulator", "entropy", "gini", "mean_ci"]
