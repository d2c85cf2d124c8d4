"""Pytest plugin for mutation runs (docs/testing.md): run the tests most likely to fail first.

For every mutant, mutmut runs the tests that reach the mutated function and stops
at the first failure, so the order decides how long a killed mutant takes. First
come the tests written for the mutated module (``test_guarantees_<module>.py``,
then ``test_<module>*.py``), then the others; within each group, tests that need
no tracker (no database to open and merge) go first, then by measured duration.
The order never changes a verdict: a mutant that survives has run every test.
Loaded only by the mutation run (``-p tests.mutation_order`` in ``[tool.mutmut]``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

_HEAVY_FIXTURES = {"tracker", "make_tracker"}
# Modules whose tests carry another module's name.
_TESTED_AS = {
    "planning": "tracker",
    "recording": "tracker",
    "mounts": "containers",
}


def _durations() -> dict[str, float]:
    # mutmut keeps the duration of every test it ran for its statistics in its working directory.
    try:
        return dict(json.loads(Path("mutmut-stats.json").read_text())["duration_by_test"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _mutated_module() -> str | None:
    """``recording`` for the mutant ``consist.recording.xǁRecordingMixinǁ_open__mutmut_3``."""
    name = os.environ.get("MUTANT_UNDER_TEST", "")
    if "__mutmut_" not in name:
        return None
    parts = name.split("__mutmut_")[0].split(".")
    module = parts[-2] if len(parts) >= 2 else ""
    return _TESTED_AS.get(module, module) or None


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    durations = _durations()
    module = _mutated_module()

    def cost(item: pytest.Item) -> tuple[int, bool, float]:
        file = Path(str(getattr(item, "path", item.nodeid.split("::")[0]))).name
        if module and file == f"test_guarantees_{module}.py":
            group = 0
        elif module and file.startswith(f"test_{module}"):
            group = 1
        else:
            group = 2
        heavy = bool(_HEAVY_FIXTURES & set(getattr(item, "fixturenames", ())))
        return group, heavy, durations.get(item.nodeid, 0.0)

    items.sort(key=cost)
