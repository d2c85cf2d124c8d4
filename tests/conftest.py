"""Shared fixtures: every test works in its own directory with a real DuckDB file."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from consist import Tracker


@pytest.fixture(autouse=True)
def _hermetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("CONSIST_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("CONSIST_PROGRESS", "0")
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def make_tracker(tmp_path: Path) -> Iterator[Callable[..., Tracker]]:
    made: list[Tracker] = []

    def factory(run_dir: str | Path = "runs", **kwargs: object) -> Tracker:
        kwargs.setdefault("db_path", tmp_path / "provenance.duckdb")
        kwargs.setdefault("project_root", tmp_path)
        t = Tracker(tmp_path / run_dir, **kwargs)  # type: ignore[arg-type]
        made.append(t)
        return t

    yield factory
    for t in made:
        t.close()


@pytest.fixture
def tracker(make_tracker: Callable[..., Tracker]) -> Tracker:
    return make_tracker()


class Calls:
    """Counts executions: the proof that a hit did not run the function."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> None:
        self.n += 1


@pytest.fixture
def calls() -> Calls:
    return Calls()
