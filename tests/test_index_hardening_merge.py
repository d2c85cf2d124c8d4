"""A run index that is replaced, restored from a copy or damaged never loses runs.

The DuckDB file and the index both record up to where they were merged, and the
index's generation id; when they disagree the merge reconciles them by primary
key. Real trackers, real SQLite and DuckDB files, and a real second process
where two indexes are in use at once.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest

import consist
from consist import Tracker
from consist.store.sqlite import index_path_for


def step(n: int) -> Path:
    out = Path(f"out/{n}.txt")
    out.parent.mkdir(exist_ok=True)
    out.write_text(f"n={n}\n")
    return out


def record(t: Tracker, ns: range, **kw: object) -> list[str]:
    return [t.run(step, name="step", config={"n": n}, outputs=["o"], **kw).run_id for n in ns]


def duck(db: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def duck_ids(db: Path) -> set[str]:
    return {r[0] for r in duck(db, "SELECT id FROM run")}


def remove_index(db: Path) -> Path:
    """Move the index folder away, as the error message for a damaged index used to advise."""
    folder = index_path_for(db).parent
    away = folder.with_name(folder.name + ".moved")
    os.replace(folder, away)
    return away


def test_runs_recorded_after_the_index_was_moved_away_all_reach_duckdb(tmp_path: Path, make_tracker) -> None:
    db = tmp_path / "provenance.duckdb"
    first = make_tracker(code_version="v1")
    old = record(first, range(20))
    first.run(step, name="step", run_id="baseline", config={"n": 100}, outputs=["o"])
    first.close()
    remove_index(db)

    calls = []
    second = make_tracker(code_version="v1")  # a new, empty index beside the DuckDB file

    def counted(n: int) -> Path:
        calls.append(n)
        return step(n)

    new = [second.run(counted, name="step", config={"n": n}, outputs=["o"]).run_id for n in range(20, 30)]
    Path("out/0.txt").unlink()
    hit = second.run(counted, name="step", config={"n": 0}, outputs=["o"])
    again = second.run(counted, name="step", run_id="baseline", config={"n": 101}, outputs=["o"])
    second.close()

    assert calls == [*range(20, 30), 101]  # the past run n=0 is still a hit
    assert hit.cache_hit and hit.cache_source == old[0] and Path("out/0.txt").read_text() == "n=0\n"
    assert again.run_id == "baseline~2"  # a past run id is never given out again
    assert set(old) | set(new) | {"baseline", hit.run_id, "baseline~2"} <= duck_ids(db)
    assert len(duck_ids(db)) == 33
    config = duck(db, "SELECT CAST(config AS VARCHAR) FROM run WHERE id = 'baseline'")[0][0]
    assert json.loads(config) == {"n": 100}  # the past run's record was not overwritten

    # From here on merges are incremental again: only the new rows are read.
    third = make_tracker(code_version="v1")
    record(third, range(30, 31))
    assert 0 < third.sync() <= 5
    assert third.sync() == 0


def test_an_index_restored_from_an_older_copy_loses_no_runs(tmp_path: Path, make_tracker) -> None:
    db = tmp_path / "provenance.duckdb"
    path = index_path_for(db)
    t = make_tracker(code_version="v1")
    early = record(t, range(5))
    t.sync()
    copy = tmp_path / "index-copy.sqlite"
    src, dst = sqlite3.connect(path), sqlite3.connect(copy)
    src.backup(dst)  # a consistent copy, as a backup tool would take
    src.close()
    dst.close()
    lost = record(t, range(5, 15))  # not in the copy
    t.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(copy, path)  # same generation, a sequence counter below what DuckDB merged

    t = make_tracker(code_version="v1")
    later = record(t, range(15, 45))  # the counter passes DuckDB's merge position again
    t.close()
    assert set(early) | set(lost) | set(later) <= duck_ids(db)
    assert len(duck_ids(db)) == 45

    t = make_tracker(code_version="v1")
    assert all(t._index.run(r) is not None for r in lost)  # copied back into the index
    Path("out/7.txt").unlink()
    hit = t.run(step, name="step", config={"n": 7}, outputs=["o"])
    assert hit.cache_hit and hit.cache_source == lost[2]


def test_a_damaged_index_is_rebuilt_from_the_duckdb_file(tmp_path: Path, make_tracker) -> None:
    from consist.store import rebuild_index

    db = tmp_path / "provenance.duckdb"
    t = make_tracker(code_version="v1")
    ids = record(t, range(5))
    other = make_tracker("other_runs", code_version="v1")  # another workspace, its own object store

    def shared() -> Path:
        p = Path("shared/x.txt")
        p.parent.mkdir(exist_ok=True)
        p.write_text("only in the other store")
        return p

    produced = other.run(shared, name="shared", outputs=["x"])
    t.close()
    other.close()
    path = index_path_for(db)
    path.write_bytes(b"\x00 damaged " * 4096)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)

    with pytest.raises(consist.StoreError) as err:
        Tracker(tmp_path / "runs", db_path=db)
    assert f"consist.store.rebuild_index({str(db)!r})" in str(err.value)

    report = rebuild_index(db)
    assert report["runs"] == 6 and report["artifacts"] >= 6 and report["links"] >= 6
    assert report["objects"] >= 6  # both stores registered again
    moved = Path(report["moved_aside"])
    assert moved.parent == path.parent and moved.name.startswith("index.sqlite.damaged-")
    assert moved.read_bytes().startswith(b"\x00 damaged ")  # kept, never deleted

    t = make_tracker(code_version="v1")
    assert t._index.query_one("SELECT count(*) AS n FROM hash_memo")["n"] == 0  # the memo starts empty
    Path("out/3.txt").unlink()
    hit = t.run(step, name="step", config={"n": 3}, outputs=["o"])
    assert hit.cache_hit and hit.cache_source == ids[3] and Path("out/3.txt").read_text() == "n=3\n"
    Path("shared/x.txt").unlink()
    from_other = t.run(shared, name="shared", outputs=["x"])  # restored from the other workspace's store
    assert from_other.cache_hit and from_other.cache_source == produced.run_id
    assert Path("shared/x.txt").read_text() == "only in the other store"
    assert t.rebuild_index() == {"runs": 0, "artifacts": 0, "links": 0, "objects": 0}  # nothing missing now


def test_rebuild_index_refuses_a_missing_duckdb_file(tmp_path: Path) -> None:
    from consist.store import rebuild_index

    with pytest.raises(consist.StoreError, match="There is no provenance database at"):
        rebuild_index(tmp_path / "nowhere.duckdb")


def test_tracker_rebuild_index_puts_back_rows_the_index_lost(tracker: Tracker) -> None:
    record(tracker, range(3))
    tracker.sync()
    gone = tracker.find_runs(limit=1)[0].id
    tracker._index.execute("DELETE FROM run WHERE id = ?", (gone,))
    tracker._index.execute("DELETE FROM run_artifact WHERE run_id = ?", (gone,))
    report = tracker.rebuild_index()
    assert report["runs"] == 1 and report["links"] >= 1 and report["objects"] == 0
    assert tracker._index.run(gone)["seq"] == 0  # came from DuckDB: not merged back into it


_OLD_INDEX_HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from consist import Tracker

    base, db = Path(sys.argv[1]), Path(sys.argv[2])

    def step(n):
        out = base / f"out/{n}.txt"
        out.parent.mkdir(exist_ok=True)
        out.write_text(f"n={n}")
        return out

    t = Tracker(base / "runs_a", db_path=db, project_root=base, code_version="v1")
    for n in range(3):
        t.run(step, name="step", run_id=f"a{n}", config={"n": n}, outputs=["o"])
    t.sync()
    (base / "opened").touch()
    while not (base / "go").exists():
        time.sleep(0.02)
    for n in range(3, 8):  # still written to the index that was moved away
        t.run(step, name="step", run_id=f"a{n}", config={"n": n}, outputs=["o"])
    t.sync()
    t.close()
    """
)


def test_a_process_still_using_a_moved_index_loses_nothing(tmp_path: Path, make_tracker) -> None:
    db = tmp_path / "provenance.duckdb"
    child = subprocess.Popen(
        [sys.executable, "-c", _OLD_INDEX_HOLDER, str(tmp_path), str(db)], stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "opened").exists():
            assert child.poll() is None, child.stderr.read() if child.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.02)
        remove_index(db)
        b = make_tracker("runs_b", code_version="v1")  # a new index; the child keeps writing the old one
        for n in range(5):
            b.run(step, name="step", run_id=f"b{n}", config={"n": 100 + n}, outputs=["o"])
        b.sync()
        (tmp_path / "go").touch()
        assert child.wait(timeout=120) == 0, child.stderr.read() if child.stderr else ""
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    for n in range(5, 7):
        b.run(step, name="step", run_id=f"b{n}", config={"n": 100 + n}, outputs=["o"])
    b.sync()
    assert duck_ids(db) == {f"a{n}" for n in range(8)} | {f"b{n}" for n in range(7)}
    statuses = {r[0] for r in duck(db, "SELECT DISTINCT status FROM run")}
    assert statuses == {"completed"}


def test_a_merge_larger_than_its_memory_preference_still_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One transaction of many rows is one merge window: beyond DuckDB's limit it is merged again without it."""
    from consist.store import duck
    from consist.store.columns import ARTIFACT_COLUMNS, RUN_COLUMNS
    from consist.store.sqlite import SQLiteIndex

    db = tmp_path / "prov.duckdb"
    index = SQLiteIndex(index_path_for(db))
    n = 4000
    run_sql = f"INSERT INTO run ({','.join([*RUN_COLUMNS, 'seq'])}) VALUES ({','.join('?' * (len(RUN_COLUMNS) + 1))})"
    art_sql = (
        f"INSERT INTO artifact ({','.join([*ARTIFACT_COLUMNS, 'seq'])}) "
        f"VALUES ({','.join('?' * (len(ARTIFACT_COLUMNS) + 1))})"
    )
    with index.write() as seq:  # one sequence number: the merge cannot split it
        runs, arts = [], []
        for i in range(n):
            row = {c: None for c in RUN_COLUMNS}
            row.update(id=f"r{i:06d}", name=f"r{i}", model="m", status="completed", signature=f"sig{i}",
                       cache_hit=0, config=json.dumps({"i": i, "pad": "x" * 200}), started_at=1e9 + i)  # fmt: skip
            art = {c: None for c in ARTIFACT_COLUMNS}
            art.update(id=f"a{i:06d}", key="out", uri=f"/w/{i}.csv", hash=f"sha256:{i:064x}", size=1, kind="file",
                       run_id=f"r{i:06d}", created_at=1e9 + i)  # fmt: skip
            runs.append([row[c] for c in RUN_COLUMNS] + [seq])
            arts.append([art[c] for c in ARTIFACT_COLUMNS] + [seq])
        index._run_many(run_sql, runs)
        index._run_many(art_sql, arts)
    index.close()
    monkeypatch.setattr(duck, "MERGE_MEMORY_MB", 1)  # far too little for this window
    with Tracker(tmp_path / "runs", db_path=db) as t:
        assert t.sync() == 2 * n
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM run").fetchone()[0] == n
        assert con.execute("SELECT count(*) FROM artifact").fetchone()[0] == n
