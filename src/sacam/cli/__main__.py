"""``python -m sacam.cli``: the ``sacam`` command."""

from . import entry

raise SystemExit(entry())
