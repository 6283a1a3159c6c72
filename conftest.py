"""Collection rules for the whole tree (tests/ and the doctests under src/)."""

from __future__ import annotations

import importlib.util

# The web app (sacam.serve) is an optional extra: without fastapi its modules cannot be
# imported for doctest collection. tests/test_serve_*.py decide themselves what to do.
collect_ignore_glob = [] if importlib.util.find_spec("fastapi") else ["src/sacam/serve/*"]
