"""Moved to :mod:`sacam.evaluation.localization`; re-exported here so old imports keep working."""

from .evaluation.localization import *  # noqa: F403
