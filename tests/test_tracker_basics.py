"""Tracker construction, the database files, and the public surface."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

import consist
from consist import Run, Tracker


def test_default_db_path_is_in_run_dir(tmp_path: Path) -> None:
    with Tracker(tmp_path / "runs", project_root=tmp_path) as t:
        assert t.db_path == tmp_path / "runs" / "provenance.duckdb"
        t.run(lambda: None, name="noop")
    con = duckdb.connect(str(tmp_path / "runs" / "provenance.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM run WHERE model = 'noop'").fetchone() == (1,)
    con.close()


def test_close_is_idempotent_and_context_manager_closes(tmp_path: Path) -> None:
    t = Tracker(tmp_path / "runs")
    with t:
        pass
    t.close()
    assert t._closed


def test_a_closed_tracker_refuses_work_with_a_clear_error(tmp_path: Path) -> None:
    t = Tracker(tmp_path / "runs", project_root=tmp_path)
    t.run(lambda: None, name="noop")
    t.close()
    for call in (lambda: t.run(lambda: None, name="noop"), t.find_runs, lambda: t.begin_run("r", "m")):
        with pytest.raises(consist.errors.RunStateError, match="Tracker is closed"):
            call()
    # Nothing was lost: a new tracker on the same directory sees the run and hits.
    with Tracker(tmp_path / "runs", project_root=tmp_path) as again:
        assert again.run(lambda: None, name="noop").cache_hit


def test_allow_external_paths_reads_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert Tracker(tmp_path / "a").allow_external_paths is False
    monkeypatch.setenv("CONSIST_ALLOW_EXTERNAL_PATHS", "1")
    assert Tracker(tmp_path / "b").allow_external_paths is True
    assert Tracker(tmp_path / "c", allow_external_paths=False).allow_external_paths is False


def test_unknown_hashing_strategy_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(consist.ConsistError, match="hashing_strategy"):
        Tracker(tmp_path / "runs", hashing_strategy="md5")


def test_guide_query_snippet_runs_as_written(tracker: Tracker) -> None:
    from sqlmodel import Session, select

    def step() -> Path:
        p = Path("summary.csv")
        p.write_text("a\n1\n")
        return p

    tracker.run(step, model="activitysim", run_id="activitysim_baseline", outputs=["summary"])
    tracker.run(lambda: None, model="other")
    with Session(tracker.engine) as session:
        runs = session.exec(select(Run).where(Run.model == "activitysim")).all()
        assert [r.id for r in runs] == ["activitysim_baseline"]
        for run in runs:
            artifacts = tracker.get_artifacts_for_run(run.id)
            assert list(artifacts.outputs) == ["summary"]
            assert artifacts.outputs["summary"].path == Path("summary.csv").resolve()


def test_engine_sees_runs_recorded_after_it_was_created(tracker: Tracker) -> None:
    from sqlmodel import Session, select

    engine = tracker.engine
    tracker.run(lambda: None, name="later")
    with Session(engine) as s:
        assert s.exec(select(Run).where(Run.model == "later")).first() is not None


def test_public_names_match_all() -> None:
    public = {n for n in dir(consist) if not n.startswith("_")} | {"__version__"}
    assert set(consist.__all__) == public
    for name in consist.__all__:
        assert getattr(consist, name) is not None


def test_import_is_light() -> None:
    code = (
        "import sys, consist; heavy = [m for m in ('duckdb', 'sqlmodel', 'sqlalchemy', 'pandas', 'pyarrow', 'rich')"
        " if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_error_derives_from_the_root() -> None:
    import consist.errors as errors

    for name in errors.__all__:
        cls = getattr(errors, name)
        if name != "ConsistWarning":
            assert issubclass(cls, consist.ConsistError), name
    assert issubclass(consist.ContainerExecutionError, RuntimeError)
    assert issubclass(consist.InputNotFoundError, FileNotFoundError)


def test_error_messages_say_cause_and_fix(tracker: Tracker) -> None:
    with pytest.raises(consist.InputNotFoundError) as info:
        tracker.run(lambda src: None, inputs={"src": "nope.csv"})
    msg = str(info.value)
    assert "nope.csv" in msg and "Likely cause" in msg and "Fix" in msg


def test_a_tracker_left_open_merges_hundreds_of_runs_at_exit_without_a_warning(tmp_path: Path) -> None:
    """More than 200 rows take the bulk path into DuckDB; at interpreter exit it must not need new imports."""
    script = tmp_path / "open.py"
    script.write_text(
        "from consist import Tracker\n"
        f"t = Tracker({str(tmp_path / 'rd')!r}, code_version='v')\n"
        "for i in range(250):\n"
        "    t.run(lambda i: None, name='x', config={'i': i})\n"
    )
    # Merged by the exiting process itself (CONSIST_MERGE_ON_CLOSE=wait), and by the detached merger.
    env = {**os.environ, "CONSIST_MERGE_ON_CLOSE": "wait"}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr, proc.stderr
    con = duckdb.connect(str(tmp_path / "rd" / "provenance.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM run").fetchall() == [(250,)]
    con.close()
    env.pop("CONSIST_MERGE_ON_CLOSE")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0 and "Warning" not in proc.stderr, proc.stderr
    deadline, count = time.monotonic() + 60, 0
    while time.monotonic() < deadline and count != 500:
        try:
            with duckdb.connect(str(tmp_path / "rd" / "provenance.duckdb"), read_only=True) as con:
                count = con.execute("SELECT count(*) FROM run").fetchone()[0]
        except duckdb.Error:  # the merger holds the file for a moment
            pass
        time.sleep(0.1)
    assert count == 500


def test_consist_log_shows_every_cache_decision_without_code(tmp_path: Path) -> None:
    script = (
        "from consist import Tracker\n"
        f"t = Tracker({str(tmp_path / 'rd')!r}, code_version='v')\n"
        "for rate in (1, 2, 2):\n"
        "    t.run(lambda rate: None, name='sim', config={'rate': rate})\n"
    )
    quiet = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 0 and "consist" not in quiet.stderr  # silent unless asked
    (tmp_path / "rd").rename(tmp_path / "old")
    env = {**os.environ, "CONSIST_LOG": "debug"}
    loud = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    lines = [ln for ln in loud.stderr.splitlines() if " consist " in ln]
    assert "sim: executes (no_prior_run" in lines[0]
    assert "sim: executes (config_changed; changed: config; nearest earlier run: sim_" in loud.stderr
    assert "sim: cache hit, reusing the outputs of sim_" in loud.stderr
    assert "DEBUG sim: signature sha256:" in loud.stderr
