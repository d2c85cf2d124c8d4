"""Every benchmark still runs, at tiny sizes, and its results file still renders (speed is not checked)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engines import need

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_every_benchmark_runs_at_tiny_sizes_and_renders(tmp_path: Path) -> None:
    for engine in ("docker", "podman", "apptainer", "postgres"):
        need(engine)  # the container and cluster benchmarks use them
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "smoke.py"), "--keep", str(tmp_path)],
        capture_output=True, text=True, timeout=1100,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ran = sorted(p.stem for p in tmp_path.glob("*.json"))
    assert ran == sorted(p.stem.removeprefix("bench_") for p in BENCHMARKS.glob("bench_*.py"))
    assert "FAILED" not in proc.stdout
