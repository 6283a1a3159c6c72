"""``python -m sacam.cli``: the ``sacam`` command."""

from . import main

raise SystemExit(main())
