"""Collection rules for the whole tree (tests/ and the doctests under src/)."""

from __future__ import annotations

import importlib.util

import pytest

# The web app (sacam.serve) is an optional extra: without fastapi its modules cannot be
# imported for doctest collection. tests/test_serve_*.py decide themselves what to do.
collect_ignore_glob = [] if importlib.util.find_spec("fastapi") else ["src/sacam/serve/*"]


@pytest.fixture(autouse=True)
def _own_plan_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Every test (and doctest) tunes into its own empty plan cache, never the user's."""
    monkeypatch.setenv("SACAM_CACHE_DIR", str(tmp_path_factory.mktemp("sacam-cache")))
