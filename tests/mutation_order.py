"""Pytest plugin for mutation runs (docs/testing.md): run the cheapest tests first.

For every mutant, mutmut runs the tests that reach the mutated function and stops
at the first failure. Tests that need no tracker (no database to open and merge)
go first, then the others by their measured duration, so the common case, a
killed mutant, costs a fraction of a second instead of a pass over every test.
Loaded only by the mutation run (``-p tests.mutation_order`` in ``[tool.mutmut]``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

_HEAVY_FIXTURES = {"tracker", "make_tracker"}


def _durations() -> dict[str, float]:
    # mutmut keeps the duration of every test it ran for its statistics in its working directory.
    try:
        return dict(json.loads(Path("mutmut-stats.json").read_text())["duration_by_test"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    durations = _durations()

    def cost(item: pytest.Item) -> tuple[bool, float]:
        heavy = bool(_HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())))
        return heavy, durations.get(item.nodeid, 0.0)

    items.sort(key=cost)
