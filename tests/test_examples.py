"""The examples run as written, with the locally built stand-in images."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from engines import need

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(name: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=600, cwd=EXAMPLES
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_quickstart() -> None:
    out = run("quickstart.py")
    assert "clean      cached" in out and "summarize  cached" in out and "config_changed" in out


def test_a_pipeline_in_the_original_consists_idioms_runs_unchanged() -> None:
    out = run("migrating_from_consist.py")
    assert "first: demand executed, trips trips/day" in out and "again: demand cached" in out
    assert "its config: {'rate': 2.5}" in out and "'persons': 6" in out
    assert "runs by stage: ['demand', 'prepare']" in out
    assert "trips: [{'persons': 6, 'trips': 15.0}]" in out and "which read ['households']" in out
    assert "steps of the scenario: ['executed', 'executed']" in out
    assert "its artifacts: ['households', 'trips']" in out
    assert "hydrated: {'trips': 'restart/trips.csv'}" in out and "noop recorded: []" in out


def test_containers_basic() -> None:
    need("docker")
    out = run("containers_basic.py")
    assert "Container executed" in out and "Cache hit from my_model_run" in out and "3,4,7" in out


def test_activitysim_scenarios_twice() -> None:
    need("docker")
    first = run("activitysim_scenarios.py")
    second = run("activitysim_scenarios.py")
    assert re.search(r"high_income_sensitivity(~\d+)?: (container executed|cache hit)", first), first
    assert second.count("cache hit from") == 2, second
    assert "Outputs: ['baseline', 'final_trips.csv', 'trips_summary.csv']" in second
    assert "high_income_sensitivity {" in second
    # The guide's loop over runs/activitysim_*/ prints the summary of every run, executed or hit.
    scenarios = re.findall(r"^Scenario: (\S+)$", second, flags=re.M)
    assert len(scenarios) >= 4 and any("~" in s for s in scenarios), second


def test_singularity() -> None:
    need("docker")
    need("apptainer")
    out = run("singularity.py")
    assert "call 1: container executed" in out and "call 2: cache hit from hpc_job" in out


def test_error_handling() -> None:
    need("docker")
    out = run("error_handling.py")
    assert "Container failed:" in out and "exit code 1" in out
    assert "Expected output not found: ./outputs/logs.txt" in out and "ImageNotFoundError" in out


def test_cache_bypass() -> None:
    need("docker")
    out = run("cache_bypass.py")
    assert out.splitlines()[-4:] == [
        "first: executed", "second: cache hit", "bypass_env: executed", "inside_overwrite: executed"
    ]  # fmt: skip


@pytest.mark.parametrize("name", ["quickstart.py"])
def test_examples_leave_nothing_outside_their_work_dir(name: str) -> None:
    before = {p for p in EXAMPLES.iterdir()}
    run(name)
    assert {p for p in EXAMPLES.iterdir()} - before <= {EXAMPLES / "work"}


def test_nested_scenario_second_run_starts_no_container() -> None:
    need("docker")
    import shutil

    shutil.rmtree(EXAMPLES / "work" / "nested_scenario", ignore_errors=True)
    first = run("nested_scenario.py")
    assert "preprocess: container executed" in first and "activitysim: container executed" in first
    second = run("nested_scenario.py")
    assert second.count("cache hit (no container started)") == 2, second
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "nested_scenario.py"), "--change-config"],
        capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    assert "preprocess: cache hit" in proc.stdout and "activitysim: container executed" in proc.stdout
