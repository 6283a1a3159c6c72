"""Moved to :mod:`sacam.evaluation.road`; re-exported here so old imports keep working."""

from .evaluation.road import *  # noqa: F403
