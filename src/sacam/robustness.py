"""Moved to :mod:`sacam.evaluation.robustness`; re-exported here so old imports keep working."""

from .evaluation.robustness import *  # noqa: F403
