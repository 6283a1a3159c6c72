"""Moved to :mod:`sacam.evaluation.sanity`; re-exported here so old imports keep working."""

from .evaluation.sanity import *  # noqa: F403
