"""Summary statistics of per-sample metric values: mean and 95% interval."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .registry import value_of


def mean_ci(values: list[float]) -> dict[str, float]:
    """Mean and 95% interval half-width (normal approximation) of the finite values.

    Non-finite values are counted in ``nan_count``, not averaged in.

    Example:
        >>> mean_ci([1.0, 3.0, float("nan")])["mean"], mean_ci([1.0, 3.0])["nan_count"]
        (2.0, 0.0)
    """
    vals = [v for v in values if math.isfinite(v)]
    n = len(vals)
    mean = sum(vals) / n if n else float("nan")
    var = sum((v - mean) ** 2 for v in vals) / (n - 1) if n > 1 else 0.0
    return {
        "mean": mean,
        "ci95": 1.96 * math.sqrt(var / n) if n else float("nan"),
        "n": float(n),
        "nan_count": float(len(values) - n),
    }


@dataclass
class MeanAccumulator:
    """Accumulates per-sample values of one metric value: mean and 95% interval.

    Example:
        >>> import sacam.evaluation
        >>> acc = MeanAccumulator("deletion")
        >>> acc.update(torch.tensor([0.1, 0.3]))
        >>> round(acc.compute()["mean"], 3), acc.higher_is_better
        (0.2, False)
    """

    metric: str
    values: list[float] = field(default_factory=list)

    @property
    def higher_is_better(self) -> bool:
        """Direction of the metric value (from the metric registry)."""
        return value_of(self.metric).higher_is_better

    def update(self, values: torch.Tensor) -> None:
        """Add per-sample values (NaNs are counted, not averaged in)."""
        self.values.extend(float(v) for v in values.flatten().tolist())

    def reset(self) -> None:
        """Forget all values."""
        self.values.clear()

    def compute(self) -> dict[str, float]:
        """``mean``, ``ci95`` (half-width, normal approximation), ``n`` and ``nan_count``."""
        return mean_ci(self.values)
