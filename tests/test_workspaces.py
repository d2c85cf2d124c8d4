"""Outputs are recorded relative to named roots: a hit restores into the asking workspace."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

import consist
from consist import Tracker


def clean_step(root: Path, calls: list[str]):
    def clean(k: int) -> Path:
        calls.append(str(root))
        out = root / "data" / "clean.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(f"clean {k}\n")
        return out

    return clean


def test_a_second_checkout_restores_into_its_own_workspace(make_tracker, tmp_path: Path) -> None:
    a, b = tmp_path / "checkoutA", tmp_path / "checkoutB"
    calls: list[str] = []
    ta = make_tracker(run_dir=a / "runs", project_root=a)
    first = ta.run(clean_step(a, calls), name="clean", config={"k": 1}, outputs=["clean"])
    assert first.outputs["clean"].location == "project://data/clean.csv"
    (a / "data" / "clean.csv").write_text("edited by hand in checkout A\n")

    tb = make_tracker(run_dir=b / "runs", project_root=b)  # same database
    hit = tb.run(clean_step(b, calls), name="clean", config={"k": 1}, outputs=["clean"])
    assert hit.cache_hit and calls == [str(a)]
    assert hit.outputs["clean"].path == b / "data" / "clean.csv"
    assert (b / "data" / "clean.csv").read_text() == "clean 1\n"
    assert (a / "data" / "clean.csv").read_text() == "edited by hand in checkout A\n", "A's file was overwritten"


def test_manual_runs_restore_by_location_too(make_tracker, tmp_path: Path) -> None:
    a, b = tmp_path / "A", tmp_path / "B"
    ta = make_tracker(run_dir=a / "runs", project_root=a)
    with ta.start_run("m", "model", config={"x": 1}):
        out = ta.run_dir / "m" / "result.txt"
        out.parent.mkdir(parents=True)
        out.write_text("r")
        consist.log_output(out, key="result")
    tb = make_tracker(run_dir=b / "runs", project_root=b)
    with tb.start_run("m", "model", config={"x": 1}) as run:
        assert run.cache_hit
    assert (b / "runs" / "m" / "result.txt").read_text() == "r"
    arts = tb.get_artifacts_for_run(run.id)
    assert arts.outputs["result"].path == b / "runs" / "m" / "result.txt"
    assert arts.outputs["result"].location == "run_dir://m/result.txt"


def test_mount_locations_need_the_mount(make_tracker, tmp_path: Path) -> None:
    a, b, c = tmp_path / "A", tmp_path / "B", tmp_path / "C"
    for d in (a, b, c):
        (d / "scratch").mkdir(parents=True)
    calls: list[str] = []

    def step(root: Path):
        def write() -> Path:
            calls.append(str(root))
            p = root / "scratch" / "big.bin"
            p.write_bytes(b"x" * 100)
            return p

        return write

    ta = make_tracker(run_dir=a / "runs", project_root=a / "proj", mounts={"scratch": a / "scratch"})
    r = ta.run(step(a), name="w", outputs=["big"])
    assert r.outputs["big"].location == "scratch://big.bin"
    tb = make_tracker(run_dir=b / "runs", project_root=b / "proj", mounts={"scratch": b / "scratch"})
    assert tb.run(step(b), name="w", outputs=["big"]).cache_hit
    assert (b / "scratch" / "big.bin").read_bytes() == b"x" * 100
    # A tracker without that mount cannot know where the output belongs: it runs the step,
    # which here writes outside its roots and is refused.
    tc = make_tracker(run_dir=c / "runs", project_root=c / "proj")
    with pytest.warns(consist.ConsistWarning, match="mount 'scratch'"):
        with pytest.raises(consist.OutputError, match="outside the tracker's roots"):
            tc.run(step(c), name="w", outputs=["big"])
    assert calls == [str(a), str(c)]


def test_outputs_outside_every_root_need_allow_external_paths(make_tracker, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()

    def write() -> Path:
        p = outside / "o.txt"
        p.write_text("o")
        return p

    t = make_tracker(run_dir=tmp_path / "p" / "runs", project_root=tmp_path / "p")
    with pytest.raises(consist.OutputError, match="allow_external_paths"):
        t.run(write, outputs=["o"])
    t2 = make_tracker(run_dir=tmp_path / "p" / "runs", project_root=tmp_path / "p", allow_external_paths=True)
    r = t2.run(write, outputs=["o"])
    assert r.outputs["o"].location == str(outside / "o.txt")
    (outside / "o.txt").unlink()
    assert t2.run(write, outputs=["o"]).cache_hit and (outside / "o.txt").read_text() == "o"


def test_a_damaged_location_never_writes_outside_its_root(make_tracker, tmp_path: Path) -> None:
    calls: list[str] = []
    t = make_tracker(run_dir=tmp_path / "runs", project_root=tmp_path)
    t.run(clean_step(tmp_path, calls), name="clean", config={"k": 2}, outputs=["clean"])
    idx = t._index
    idx.execute("UPDATE artifact SET location = 'project://../../escaped.csv' WHERE key = 'clean'")
    (tmp_path / "data" / "clean.csv").unlink()
    with pytest.warns(consist.ConsistWarning, match="leaves its root"):
        again = t.run(clean_step(tmp_path, calls), name="clean", config={"k": 2}, outputs=["clean"])
    assert not again.cache_hit and len(calls) == 2
    assert not (tmp_path.parent.parent / "escaped.csv").exists()


def test_location_is_a_queryable_column(tracker: Tracker, tmp_path: Path) -> None:
    calls: list[str] = []
    tracker.run(clean_step(tmp_path, calls), name="clean", config={"k": 3}, outputs=["clean"])
    tracker.close()
    con = duckdb.connect(str(tracker.db_path), read_only=True)
    try:
        rows = con.execute("SELECT location FROM artifact WHERE key = 'clean'").fetchall()
    finally:
        con.close()
    assert rows == [("project://data/clean.csv",)]


def test_mount_names_are_checked(tmp_path: Path) -> None:
    for bad in ("run_dir", "project", "Has Space", "a/b", ""):
        with pytest.raises(consist.ConsistError, match="Mount name"):
            Tracker(tmp_path / "runs", mounts={bad: tmp_path})
