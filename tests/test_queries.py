"""Queries on the DuckDB database, load_df, and provenance that never lies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pandas as pd
import pytest

import consist
from consist import Tracker


def _w(path: str, text: str) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def pipeline(tracker: Tracker) -> dict[str, str]:
    _w("raw.csv", "x\n1\n2\n")
    clean = tracker.run(
        lambda raw: _w("clean.csv", raw.read_text()), name="clean", inputs={"raw": "raw.csv"}, outputs=["cleaned"],
        year=2020, tags=["base", "prep"],
    )  # fmt: skip
    report = tracker.run(
        lambda cleaned: _w("report.txt", "rows=2"), name="report", inputs={"cleaned": clean.outputs["cleaned"]},
        outputs=["report"], year=2030, iteration=2, tags=["base"],
    )  # fmt: skip
    return {"clean": clean.run_id, "report": report.run_id}


def test_get_run_and_find_runs(tracker: Tracker) -> None:
    ids = pipeline(tracker)
    run = tracker.get_run(ids["clean"])
    assert run.model == "clean" and run.status == "completed" and run.year == 2020 and run.tags == ["base", "prep"]
    assert tracker.get_run("nope") is None
    assert [r.id for r in tracker.find_runs(model="report")] == [ids["report"]]
    assert [r.id for r in tracker.find_runs(tags=["prep"])] == [ids["clean"]]
    assert len(tracker.find_runs(tags=["base"])) == 2
    assert [r.id for r in tracker.find_runs(year=2030, iteration=2)] == [ids["report"]]
    assert len(tracker.find_runs(status="completed", limit=1)) == 1
    with tracker.start_run("parent", "scenario"):
        child = tracker.run(lambda: None, name="child")
    assert [r.id for r in tracker.find_runs(parent_id="parent")] == [child.run_id]


def test_get_artifacts_for_run_and_unknown_run(tracker: Tracker) -> None:
    ids = pipeline(tracker)
    arts = tracker.get_artifacts_for_run(ids["report"])
    assert set(arts.inputs) == {"cleaned"} and set(arts.outputs) == {"report"}
    assert arts.inputs["cleaned"].run_id == ids["clean"]  # the input is the earlier run's output
    assert isinstance(arts.outputs["report"].path, Path)
    with pytest.raises(consist.RunNotFoundError, match="find_runs"):
        tracker.get_artifacts_for_run("nope")


def test_lineage_is_recursive(tracker: Tracker) -> None:
    ids = pipeline(tracker)
    lin = tracker.get_artifact_lineage("report")
    assert lin["artifact"].key == "report"
    prod = lin["producing_run"]
    assert prod["run"].id == ids["report"]
    (inp,) = prod["inputs"]
    assert inp["artifact"].key == "cleaned" and inp["producing_run"]["run"].id == ids["clean"]
    (raw,) = inp["producing_run"]["inputs"]
    assert raw["artifact"].key == "raw" and raw["producing_run"] is None
    assert tracker.get_artifact_lineage("report", max_depth=1)["producing_run"]["inputs"][0]["producing_run"] is None


def test_history_is_a_dataframe(tracker: Tracker) -> None:
    pipeline(tracker)
    df = tracker.history(5)
    assert isinstance(df, pd.DataFrame)
    assert list(df["id"])[:2] and set(df["model"]) == {"clean", "report"}


def test_load_df_formats(tmp_path: Path) -> None:
    df = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    df.to_csv("t.csv", index=False)
    df.to_parquet("t.parquet")
    df.to_json("t.json", orient="records")
    df.to_json("t.jsonl", orient="records", lines=True)
    for name in ("t.csv", "t.parquet", "t.json", "t.jsonl"):
        got = consist.load_df(name)
        assert got["a"].tolist() == [1, 2] and got["b"].tolist() == ["x", "y"], name
    assert consist.load_df("t.csv", usecols=["a"]).columns.tolist() == ["a"]
    for kind in ("csv", "parquet"):
        d = Path(f"dir_{kind}")
        (d / "sub").mkdir(parents=True)
        getattr(df, f"to_{kind}")(d / f"p1.{kind}", **({"index": False} if kind == "csv" else {}))
        getattr(df, f"to_{kind}")(d / "sub" / f"p2.{kind}", **({"index": False} if kind == "csv" else {}))
        assert len(consist.load_df(d)) == 4
    with pytest.raises(consist.InputNotFoundError):
        consist.load_df("absent.csv")


def test_load_df_of_an_artifact(tracker: Tracker) -> None:
    r = tracker.run(lambda: _w("o.csv", "a,b\n1,2\n"), name="o", outputs=["o"])
    assert consist.load_df(r.outputs["o"])["b"].tolist() == [2]


def test_reusing_a_run_id_never_overwrites(tracker: Tracker, calls) -> None:
    def step(v: int) -> Path:
        calls()
        return _w("o.txt", str(v))

    first = tracker.run(step, run_id="my_run", config={"v": 1}, outputs=["o"])
    second = tracker.run(step, run_id="my_run", config={"v": 1}, outputs=["o"])
    third = tracker.run(step, run_id="my_run", config={"v": 2}, outputs=["o"])
    assert (first.run_id, second.run_id, third.run_id) == ("my_run", "my_run~2", "my_run~3")
    original = tracker.get_run("my_run")
    assert not original.cache_hit and original.cache_source is None and original.config == {"v": 1}
    assert tracker.get_run("my_run~2").cache_source == "my_run"


def test_cache_source_never_chains(tracker: Tracker) -> None:
    first = tracker.run(lambda: None, name="c")
    sources = {tracker.run(lambda: None, name="c").cache_source for _ in range(4)}
    assert sources == {first.run_id}


def test_killed_run_is_never_a_hit_and_is_marked_interrupted(tmp_path: Path, make_tracker) -> None:
    marker = tmp_path / "started"
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from consist import Tracker
        t = Tracker({str(tmp_path / "runs")!r}, db_path={str(tmp_path / "provenance.duckdb")!r},
                    code_version="pinned")
        def slow():
            Path("partial.txt").write_text("half")
            Path({str(marker)!r}).write_text("go")
            time.sleep(60)
            return Path("partial.txt")
        t.run(slow, run_id="victim", outputs=["out"])
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path)
    deadline = time.time() + 30
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert marker.exists()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    t = make_tracker(code_version="pinned")
    assert t.get_run("victim").status == "interrupted"
    executed = []

    def slow() -> Path:
        executed.append(1)
        return _w("partial.txt", "full")

    r = t.run(slow, run_id="victim", outputs=["out"])
    assert not r.cache_hit and executed == [1] and r.run_id == "victim~2"


def test_duckdb_file_is_plain_duckdb(tracker: Tracker) -> None:
    ids = pipeline(tracker)
    tracker.close()
    con = duckdb.connect(str(tracker.db_path), read_only=True)
    meta = con.execute("SELECT meta FROM run WHERE id = ?", [ids["report"]]).fetchone()[0]
    assert json.loads(meta)["cache_miss_explanation"]["reason"] == "no_prior_run"
    n = con.execute("SELECT count(*) FROM run_artifact WHERE run_id = ?", [ids["report"]]).fetchone()[0]
    assert n == 2
    con.close()


def test_bulk_merge_into_duckdb_keeps_every_row(tracker: Tracker) -> None:
    """More than 200 pending rows take the bulk (Arrow) path of the merge: nothing may go missing."""
    Path("out").mkdir()

    def step(i: int) -> Path:
        return _w(f"out/{i}.txt", f"row {i}")

    for i in range(230):
        tracker.run(step, config={"i": i}, outputs=["table"])
    index = tracker._index
    expected = {table: index.query(f"SELECT * FROM {table}") for table in ("run", "artifact", "run_artifact")}
    assert len(expected["run"]) == 230 and len(expected["run_artifact"]) >= 230
    tracker.close()
    con = duckdb.connect(str(tracker.db_path), read_only=True)
    try:
        for table, rows in expected.items():
            key = "run_id || '/' || direction || '/' || key" if table == "run_artifact" else "id"
            got = {r[0] for r in con.execute(f"SELECT {key} FROM {table}").fetchall()}
            want = {f"{r['run_id']}/{r['direction']}/{r['key']}" if table == "run_artifact" else r["id"] for r in rows}
            assert got == want, f"{table}: {len(want - got)} rows missing, {len(got - want)} unexpected"
        sample = expected["run"][117]
        row = con.execute("SELECT signature, config_hash, status, cache_hit FROM run WHERE id = ?", [sample["id"]])
        assert row.fetchone() == (sample["signature"], sample["config_hash"], "completed", False)
    finally:
        con.close()
