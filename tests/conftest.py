"""Shared fixtures: every test works in its own directory with a real DuckDB file."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import engines
from consist import Tracker

# Every container command in the tests gets this many seconds before it is killed,
# so a stuck engine fails one test instead of hanging the whole run.
CONTAINER_TIMEOUT_S = "240"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("consist")
    group.addoption(
        "--require-engines",
        default="",
        metavar="LIST",
        help="container engines that must be present (comma-separated, or 'all'): "
        "a missing one stops the run before any test, naming it",
    )
    group.addoption(
        "--no-skips",
        action="store_true",
        default=False,
        help="fail the run when any test was skipped (each is still listed with its reason)",
    )


def pytest_configure(config: pytest.Config) -> None:
    engines.REQUIRED.clear()
    engines.REQUIRED.update(engines.parse_required(config.getoption("--require-engines")))


def pytest_sessionstart(session: pytest.Session) -> None:
    missing = [why for name in sorted(engines.REQUIRED) if (why := engines.problem(name))]
    if missing:
        pytest.exit(
            "required engine(s) missing:\n  "
            + "\n  ".join(missing)
            + "\nInstall and start them with `bash scripts/setup-containers.sh` (container engines) and "
            "`bash scripts/setup-scaleout.sh` (PostgreSQL, Slurm) as root, or run without --require-engines.",
            returncode=3,
        )


_SKIPPED: list[tuple[str, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _SKIPPED.append((report.nodeid, str(reason).removeprefix("Skipped: ")))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _SKIPPED and session.config.getoption("--no-skips") and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]
    if not _SKIPPED:
        return
    strict = config.getoption("--no-skips")
    terminalreporter.section(
        f"{len(_SKIPPED)} TEST(S) SKIPPED" + (": failing the run (--no-skips)" if strict else ""),
        sep="!",
        red=True,
        bold=True,
    )
    for nodeid, reason in _SKIPPED:
        terminalreporter.line(f"SKIPPED {nodeid}: {reason}", red=True)


_REMOTE_REGISTRY = re.compile(r"https?://(?!127\.|localhost[:/]|\[::1\])([\w.-]+)")


@pytest.fixture(autouse=True)
def _loopback_registries_only() -> Iterator[None]:
    """Fail a test that made dockerd reach for a registry off this machine (Docker Hub by default)."""
    log = engines.ENV_FILE.parent / "dockerd.log"
    try:
        start = log.stat().st_size
    except OSError:
        yield
        return
    yield
    with open(log, "rb") as f:
        f.seek(start)
        new = f.read().decode(errors="replace")
    remote = sorted(set(_REMOTE_REGISTRY.findall(new)))
    assert not remote, (
        f"this test made dockerd contact {remote}: tests may only use images that exist locally "
        "or in the loopback registry"
    )


@pytest.fixture(autouse=True)
def _hermetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("CONSIST_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("CONSIST_PROGRESS", "0")
    monkeypatch.setenv("CONSIST_CONTAINER_TIMEOUT", CONTAINER_TIMEOUT_S)
    monkeypatch.setenv("CONSIST_CACHE_DIR", str(tmp_path / ".consist-cache"))  # per-user records stay per test
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
