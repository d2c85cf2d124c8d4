"""The container watchdog (consist.containers.watchdog), with real processes and a stand-in engine.

The engine is a script that records the ``rm --force NAME`` it is asked to run, so
the test needs no container engine; test_slurm.py kills real Docker and Podman
containers through ``scancel``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest


@pytest.fixture
def engine(tmp_path: Path) -> Path:
    script = tmp_path / "engine"
    script.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "calls"}\n')
    script.chmod(0o755)
    return script


def watchdogs_of(name: str) -> list[int]:
    """Pids of the watchdog shells guarding the container ``name``."""
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if name.encode() in cmd and b"sh" in cmd[0]:
                out.append(int(pid))
    return out


def wait_until(check, limit_s: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


def run_child(engine: Path, name: str, release: bool) -> None:
    code = textwrap.dedent(f"""
        import os
        from consist.containers.watchdog import Watchdog
        w = Watchdog({str(engine)!r}, {name!r})
        if {release!r}:
            w.release()
        os._exit(0)  # no clean-up of any kind, as when a job is killed
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_caller_that_dies_gets_its_container_removed(tmp_path: Path, engine: Path) -> None:
    name = f"consist-test-{uuid.uuid4().hex[:8]}"
    run_child(engine, name, release=False)
    calls = tmp_path / "calls"
    assert wait_until(lambda: calls.exists() and calls.read_text().strip() != "")
    assert calls.read_text().split() == ["rm", "--force", name]
    assert wait_until(lambda: not watchdogs_of(name))


def test_a_released_watchdog_exits_and_removes_nothing(tmp_path: Path, engine: Path) -> None:
    name = f"consist-test-{uuid.uuid4().hex[:8]}"
    run_child(engine, name, release=True)
    assert wait_until(lambda: not watchdogs_of(name))
    assert not (tmp_path / "calls").exists()


def test_release_reaps_setsid_and_is_idempotent(tmp_path: Path, engine: Path) -> None:
    from consist.containers.watchdog import Watchdog

    name = f"consist-test-{uuid.uuid4().hex[:8]}"
    w = Watchdog(str(engine), name)
    setsid = w._setsid
    assert setsid is not None
    w.release()
    assert setsid.returncode == 0 and w._setsid is None  # reaped: no zombie left behind
    w.release()
    assert wait_until(lambda: not watchdogs_of(name))
    assert not (tmp_path / "calls").exists()
