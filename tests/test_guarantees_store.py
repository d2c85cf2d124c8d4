"""Guarantees of consist.store: the DuckDB file mirrors the run index exactly.

A merge copies every index row written since the last merge, in one transaction,
with the right SQL types; a failed merge changes nothing; a lost DuckDB file is
rebuilt; a locked file is a clear error, never a hang. Real SQLite and DuckDB files.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest
from filelock import FileLock
from sqlalchemy import text

import consist
from consist.store import csvload
from consist.store.columns import ARTIFACT_COLUMNS, RUN_COLUMNS
from consist.store.duck import DUCK_SCHEMA_VERSION, DuckStore
from consist.store.sqlite import SQLiteIndex


@pytest.fixture
def ix(tmp_path: Path):
    index = SQLiteIndex(tmp_path / ".prov.duckdb.consist" / "index.sqlite")
    yield index
    index.close()


@pytest.fixture
def duck(tmp_path: Path, ix: SQLiteIndex):
    store = DuckStore(tmp_path / "prov.duckdb", ix, lock_timeout=5.0)
    yield store
    store.dispose()


T0 = 1_700_000_000.25  # 2023-11-14 22:13:20.25 UTC


def run_row(run_id: str, **kw: object) -> dict:
    row: dict = {c: None for c in RUN_COLUMNS}
    row.update(
        id=run_id, name=run_id, model="m", status="completed", signature="sig", cache_hit=1, started_at=T0,
        ended_at=T0 + 60, tags='["a"]', config='{"k": 1}', identity='{"code": "c"}', meta='{"m": 2}', year=2030,
    )  # fmt: skip
    row.update(kw)
    return row


def art_row(art_id: str, **kw: object) -> dict:
    row: dict = {c: None for c in ARTIFACT_COLUMNS}
    row.update(id=art_id, key=art_id, uri=f"/d/{art_id}", hash="sha256:h", size=7, kind="file", created_at=T0)
    row.update(kw)
    return row


def _ts(value: float | None) -> dt.datetime | None:
    """A recorded time as the DuckDB file shows it (UTC, without a zone)."""
    return None if value is None else dt.datetime.fromtimestamp(float(value), dt.UTC).replace(tzinfo=None)


def rows(path: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_timestamps_become_naive_utc(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ix: SQLiteIndex, duck: DuckStore
) -> None:
    monkeypatch.setenv("TZ", "America/New_York")  # the local time zone never leaks into the database
    time.tzset()
    try:
        ix.claim_run_id("r", run_row("r", started_at=0.0, ended_at=T0))
        duck.sync()
    finally:
        monkeypatch.undo()
        time.tzset()
    got = rows(tmp_path / "prov.duckdb", "SELECT started_at, ended_at FROM run")
    assert got == [(dt.datetime(1970, 1, 1), dt.datetime(2023, 11, 14, 22, 13, 20, 250000))]


def test_merge_copies_every_row_with_sql_types(tmp_path: Path, ix: SQLiteIndex, duck: DuckStore) -> None:
    ix.upsert_run(run_row("r1"))
    ix.upsert_run(run_row("r0", cache_hit=0, ended_at=None))
    ix.add_artifact(art_row("a1", run_id="r1"))
    ix.link("r1", "a1", "output", "out")
    assert duck.pending()
    assert duck.sync() == 4
    assert not duck.pending() and duck.sync() == 0
    got = rows(duck.db_path, "SELECT id, cache_hit, started_at, ended_at, year, tags, config FROM run ORDER BY id")
    assert got == [
        ("r0", False, _ts(T0), None, 2030, '["a"]', '{"k": 1}'),
        ("r1", True, _ts(T0), _ts(T0 + 60), 2030, '["a"]', '{"k": 1}'),
    ]
    assert rows(duck.db_path, "SELECT id, size, created_at, run_id FROM artifact") == [("a1", 7, _ts(T0), "r1")]
    assert rows(duck.db_path, "SELECT * FROM run_artifact") == [("r1", "a1", "output", "out")]
    meta = dict(rows(duck.db_path, "SELECT key, value FROM consist_meta"))
    assert meta == {"synced_seq": 4, "schema_version": DUCK_SCHEMA_VERSION}


def test_later_merges_bring_only_new_rows_and_replace_changed_ones(ix: SQLiteIndex, duck: DuckStore) -> None:
    ix.upsert_run(run_row("r", status="running"))
    assert duck.sync() == 1
    ix.upsert_run(run_row("r", status="completed"))
    ix.upsert_run(run_row("s"))
    assert duck.sync() == 2
    assert rows(duck.db_path, "SELECT id, status FROM run ORDER BY id") == [("r", "completed"), ("s", "completed")]


def test_another_process_index_writes_are_merged(tmp_path: Path, ix: SQLiteIndex, duck: DuckStore) -> None:
    ix.upsert_run(run_row("mine"))
    duck.sync()
    other = SQLiteIndex(ix.path)  # a second tracker on the same database
    other.upsert_run(run_row("theirs"))
    other.close()
    assert duck.pending()
    assert duck.sync() == 1
    assert rows(duck.db_path, "SELECT id FROM run ORDER BY id") == [("mine",), ("theirs",)]


def test_a_fresh_store_object_resumes_from_the_recorded_sequence(
    tmp_path: Path, ix: SQLiteIndex, duck: DuckStore
) -> None:
    ix.upsert_run(run_row("a"))
    duck.sync()
    again = DuckStore(duck.db_path, ix)
    assert again.pending()  # it has not looked at the file yet
    assert again.sync() == 0  # ...and the file says everything is merged
    assert not again.pending()


def test_a_deleted_duckdb_file_is_rebuilt_from_the_index(ix: SQLiteIndex, duck: DuckStore) -> None:
    ix.upsert_run(run_row("a"))
    ix.upsert_run(run_row("b"))
    duck.sync()
    duck.db_path.unlink()
    assert duck.pending()
    assert duck.sync() == 2
    assert rows(duck.db_path, "SELECT count(*) FROM run") == [(2,)]


def test_large_batches_go_through_arrow_with_the_same_result(ix: SQLiteIndex, duck: DuckStore) -> None:
    with ix.write():
        for i in range(250):
            ix.upsert_run(run_row(f"r{i:03}", cache_hit=i % 2, started_at=T0 + i))
        for i in range(199):
            ix.add_artifact(art_row(f"a{i:03}"))
    assert duck.sync() == 449
    some = "SELECT id, cache_hit, started_at FROM run WHERE id IN ('r000', 'r001', 'r249') ORDER BY id"
    got = rows(duck.db_path, some)
    assert got == [("r000", False, _ts(T0)), ("r001", True, _ts(T0 + 1)), ("r249", True, _ts(T0 + 249))]
    assert rows(duck.db_path, "SELECT count(*) FROM run") == [(250,)]
    assert rows(duck.db_path, "SELECT count(*), min(created_at) FROM artifact") == [(199, _ts(T0))]
    with ix.write():
        for i in range(200):
            ix.upsert_run(run_row(f"r{i:03}", status="archived"))
    assert duck.sync() == 200
    assert rows(duck.db_path, "SELECT status, count(*) FROM run GROUP BY status ORDER BY status") == [
        ("archived", 200),
        ("completed", 50),
    ]
    con = duckdb.connect(str(duck.db_path))
    try:
        assert "consist_batch" not in {r[0] for r in con.execute("SHOW TABLES").fetchall()}
    finally:
        con.close()


def test_a_failed_merge_changes_nothing_and_says_what_to_do(ix: SQLiteIndex, duck: DuckStore) -> None:
    con = duckdb.connect(str(duck.db_path))
    con.execute("CREATE TABLE run (id INTEGER, note VARCHAR)")  # written by some other program
    con.close()
    ix.add_artifact(art_row("a"))
    ix.upsert_run(run_row("r"))
    with pytest.raises(consist.StoreError) as err:
        duck.sync()
    assert "Merging runs into" in str(err.value) and "move the file away" in str(err.value)
    assert rows(duck.db_path, "SELECT count(*) FROM artifact") == [(0,)]  # rolled back
    assert rows(duck.db_path, "SELECT count(*) FROM consist_meta") == [(0,)]
    assert duck.pending()


def test_read_gives_a_merged_connection_and_releases_the_file(ix: SQLiteIndex, duck: DuckStore) -> None:
    with duck.read() as con:
        assert con.execute("SELECT count(*) FROM run").fetchone() == (0,)
    ix.upsert_run(run_row("r"))
    with duck.read() as con:
        assert con.execute("SELECT id FROM run").fetchall() == [("r",)]
    with duck.read() as con:  # nothing pending: the tables are there all the same
        assert con.execute("SELECT count(*) FROM run_artifact").fetchone() == (0,)
    duckdb.connect(str(duck.db_path)).close()  # not held open


def test_engine_connections_see_every_recorded_run(ix: SQLiteIndex, duck: DuckStore) -> None:
    ix.upsert_run(run_row("first"))
    engine = duck.engine
    assert duck.engine is engine
    with engine.connect() as con:
        assert con.execute(text("SELECT id FROM run")).fetchall() == [("first",)]
    ix.upsert_run(run_row("second"))
    with engine.connect() as con:
        assert con.execute(text("SELECT count(*) FROM run")).scalar() == 2
    duck.dispose()
    duck.dispose()
    assert duck._engine is None and duck.engine is not engine


def test_a_held_sync_lock_times_out_with_a_clear_error(ix: SQLiteIndex, duck: DuckStore) -> None:
    ix.upsert_run(run_row("r"))
    # Every process, of this version or another, agrees on this name: the lock beside the index.
    held = FileLock(str(ix.path.parent / "duckdb.lock"))
    held.acquire()
    try:
        started = time.monotonic()
        with pytest.raises(consist.StoreLockedError) as err:
            duck.sync(timeout=0.3)
        assert time.monotonic() - started < 3
        assert f"for the database lock {duck.lock_path}" in str(err.value)
        assert "if no consist process runs, delete the lock file" in str(err.value)
    finally:
        held.release()
    assert duck.sync() == 1


_HOLDER = textwrap.dedent(
    """
    import sys, time, duckdb
    con = duckdb.connect(sys.argv[1])
    print("open", flush=True)
    time.sleep(60)
    """
)


def test_a_duckdb_file_held_by_another_program_is_a_clear_error(ix: SQLiteIndex, duck: DuckStore) -> None:
    duckdb.connect(str(duck.db_path)).close()
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(duck.db_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "open"
        ix.upsert_run(run_row("r"))
        started = time.monotonic()
        with pytest.raises(consist.StoreLockedError) as err:
            duck.sync(timeout=0.5)
        waited = time.monotonic() - started
        assert 0.4 < waited < 5, waited  # it retried until the deadline, then gave up
        assert str(err.value).startswith(f"Cannot open the provenance database {duck.db_path}: ")
        assert str(err.value).endswith(
            "Likely cause: another program (a DuckDB shell, a notebook) keeps the file open for writing. "
            "Fix: close that program's connection; runs stay safe in the run index meanwhile."
        )
    finally:
        holder.kill()
        holder.wait()
    assert duck.sync() == 1  # merged once the other program let go


def test_a_damaged_duckdb_file_fails_at_once(tmp_path: Path, ix: SQLiteIndex) -> None:
    bad = tmp_path / "bad.duckdb"
    bad.write_bytes(b"not a database" * 1000)
    store = DuckStore(bad, ix, lock_timeout=30.0)
    started = time.monotonic()
    with pytest.raises(consist.StoreError, match="not a valid DuckDB database file"):
        store.sync()
    assert time.monotonic() - started < 10  # no retrying for 30 s


def test_a_damaged_duckdb_file_is_not_reported_as_locked(tmp_path: Path, ix: SQLiteIndex) -> None:
    bad = tmp_path / "bad.duckdb"
    bad.write_bytes(b"not a database" * 1000)
    with pytest.raises(consist.StoreError) as err:
        DuckStore(bad, ix).sync()
    assert not isinstance(err.value, consist.StoreLockedError)
    assert "keeps the file open" not in str(err.value)


# --------------------------------------------------------------------- what a DuckDB error is called


def test_lock_damage_and_space_are_told_apart_by_duckdbs_words() -> None:
    from consist.store.duck import _is_lock_conflict, _looks_damaged, _no_space

    assert _is_lock_conflict(duckdb.IOException('Could not set lock on file "x.duckdb"'))
    assert _is_lock_conflict(duckdb.IOException("Conflicting lock is held in /usr/bin/python (PID 1)"))
    assert not _is_lock_conflict(duckdb.IOException("Permission denied"))
    for words in ("No space left on device", "database or disk is full", "write failed: disk full"):
        assert _no_space(OSError(words)), words
    assert not _no_space(OSError("disk quota exceeded"))
    for words in ("corrupt database file", "block checksum mismatch", "not a valid DuckDB database file",
                  "Could not read enough bytes from file"):  # fmt: skip
        assert _looks_damaged(duckdb.IOException(words)), words
    assert not _looks_damaged(duckdb.IOException("Catalog Error: Table with name x does not exist"))


def test_open_errors_read_in_full(ix: SQLiteIndex, duck: DuckStore) -> None:
    db = duck.db_path
    assert str(duck._open_error(OSError("No space left on device"))) == (
        f"No space left on device for the provenance database {db}: No space left on device. Likely cause: the "
        f"file system that holds it is full. Fix: free space there (df -h {db.parent}) and call tracker.sync() "
        "or query again; the merge was rolled back, the DuckDB file keeps what it had and the runs wait in the "
        "run index."
    )
    assert str(duck._open_error(duckdb.IOException("Cannot open file: Permission denied"))) == (
        f"Cannot open the provenance database {db}: Cannot open file: Permission denied. Likely cause: this user "
        "may not read or write the file or its folder. Fix: fix the permissions, or use a db_path this user owns."
    )
    assert str(duck._open_error(duckdb.IOException("bad header"))) == (
        f"The provenance database {db} is damaged: bad header. Likely cause: the file was truncated or "
        "overwritten (a full disk or a crash while it was written or copied), or another program wrote it. "
        f"Fix: move it away (mv {db} {db}.damaged); the next query or tracker.sync() rebuilds it from the run "
        "index, which holds every run."
    )


# --------------------------------------------------------------------- rebuilding the index


def test_index_damage_is_seen_by_a_read_only_check(tmp_path: Path, ix: SQLiteIndex) -> None:
    from consist.store.duck import _index_damaged

    os.chdir(tmp_path)
    assert not _index_damaged(tmp_path / "missing.sqlite")
    ix.upsert_run(run_row("r"))
    assert not _index_damaged(ix.path)
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"\x00not sqlite" * 500)
    assert _index_damaged(garbage)
    assert not any(p.name.startswith("file:") for p in tmp_path.iterdir())  # opened by URI, read-only


def test_rebuild_index_moves_a_damaged_index_aside_and_refills_it(
    tmp_path: Path, ix: SQLiteIndex, duck: DuckStore
) -> None:
    import re

    from consist.store import rebuild_index

    ix.upsert_run(run_row("kept", run_dir=str(tmp_path / "runs")))
    duck.sync()
    store = tmp_path / "runs" / ".consist" / "objects"
    extra = tmp_path / "extra_store"
    from consist.objects import ObjectStore

    a = ObjectStore(store).put_bytes(b"in the run_dir store")
    b = ObjectStore(extra).put_bytes(b"in an extra store")
    duck.dispose()
    ix.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{ix.path}{suffix}").write_bytes(b"damaged" * 100)
    report = rebuild_index(duck.db_path, object_stores=[tmp_path / "no-such-store", extra])
    moved = report["moved_aside"]
    assert re.fullmatch(re.escape(str(ix.path)) + r"\.damaged-\d{8}-\d{6}", moved)
    assert Path(moved).read_bytes() == b"damaged" * 100
    assert Path(f"{moved}-wal").exists() and Path(f"{moved}-shm").exists()  # moved with it, never deleted
    assert (report["runs"], report["objects"]) == (1, 2)
    again = SQLiteIndex(ix.path)
    try:
        assert again.run("kept") is not None
        assert again.object_stores(a) == [str(store)] and again.object_stores(b) == [str(extra)]
    finally:
        again.close()
    assert rebuild_index(duck.db_path)["moved_aside"] is None  # an intact index stays where it is


def test_rebuild_index_needs_the_duckdb_file(tmp_path: Path) -> None:
    from consist.store import rebuild_index

    with pytest.raises(consist.StoreError) as err:
        rebuild_index(tmp_path / "gone.duckdb")
    assert str(err.value) == (
        f"There is no provenance database at {tmp_path / 'gone.duckdb'}. Likely cause: the path is wrong, or "
        "the DuckDB file was deleted. Fix: pass the db_path the trackers use; without the DuckDB file there is "
        "nothing to rebuild from."
    )


# --------------------------------------------------------------------- rows between the two files


def test_rows_are_written_for_duckdb_and_read_back_for_the_index(ix: SQLiteIndex) -> None:
    from consist.store.duck import _index_select

    line = csvload.lines_of("run_artifact", [{"run_id": "r", "artifact_id": "it's", "direction": None, "key": 7}])
    assert line == ["'r','it''s',NULL,7"]
    assert csvload.value_text(True) == "1" and csvload.value_text(False) == "0"  # a server index's booleans
    assert csvload.value_text(0.1) == "0.1" and csvload.value_text(None) == "NULL"
    with pytest.raises(TypeError, match="bytes cannot be written"):
        csvload.value_text(b"x")
    quoted, reals = csvload.line_order("artifact")
    assert reals == ["created_at"] and quoted == [c for c in ARTIFACT_COLUMNS if c != "created_at"]
    select = _index_select(("id", "started_at", "cache_hit", "config", "created_at"))
    assert select == (
        "id, epoch_us(started_at) / 1000000.0 AS started_at, CAST(cache_hit AS INTEGER) AS cache_hit, "
        "CAST(config AS VARCHAR) AS config, epoch_us(created_at) / 1000000.0 AS created_at"
    )


def test_the_index_adopts_duckdb_rows_without_replacing_its_own(ix: SQLiteIndex) -> None:
    ix.upsert_run(run_row("mine", status="completed"))
    counts = ix.adopt(
        [run_row("mine", status="failed"), run_row("theirs")],
        [art_row("a1")],
        [{"run_id": "theirs", "artifact_id": "a1", "direction": "output", "key": "k"}],
    )
    assert counts == {"run": 1, "artifact": 1, "run_artifact": 1}
    assert ix.run("mine")["status"] == "completed"  # written by this index: never replaced
    assert ix.run("theirs")["seq"] == 0 and ix.max_seq() == 1
    again = ix.adopt([run_row("theirs", status="archived")], [], [])
    assert again == {"run": 1, "artifact": 0, "run_artifact": 0} and ix.run("theirs")["status"] == "archived"
    assert ix.meta("merged_seq") is None and ix.merged_seq() is None
    ix.set_meta("merged_seq", "7")
    assert ix.meta("merged_seq") == "7" and ix.merged_seq() == 7 and ix.max_seq() == 1


def test_export_duckdb_writes_every_row_typed_and_never_overwrites(tmp_path: Path, ix: SQLiteIndex) -> None:
    from consist.errors import StoreError
    from consist.store.duck import export_duckdb

    ix.upsert_run(run_row("r1"))
    ix.upsert_run(run_row("r2", cache_hit=0, tags=None))
    ix.add_artifact(art_row("a1", run_id="r2", size=300))
    ix.link("r1", "a1", "output", "out")
    out = tmp_path / "sub" / "export.duckdb"
    assert export_duckdb(ix, out) == {"runs": 2, "artifacts": 1, "links": 1}
    con = duckdb.connect(str(out), read_only=True)
    rows = con.execute("SELECT id, cache_hit, started_at, tags, year FROM run ORDER BY id").fetchall()
    assert rows == [("r1", True, _ts(T0), '["a"]', 2030), ("r2", False, _ts(T0), None, 2030)]
    assert con.execute("SELECT id, size, created_at FROM artifact").fetchall() == [("a1", 300, _ts(T0))]
    assert con.execute("SELECT * FROM run_artifact").fetchall() == [("r1", "a1", "output", "out")]
    assert con.execute("SELECT value FROM consist_meta WHERE key = 'schema_version'").fetchall() == [
        (DUCK_SCHEMA_VERSION,)
    ]
    con.close()
    assert sorted(p.name for p in out.parent.iterdir()) == ["export.duckdb"]  # no temporary left
    with pytest.raises(StoreError, match="the file exists"):
        export_duckdb(ix, out)
    # A failed export leaves nothing behind.
    bad = tmp_path / "bad.duckdb"
    ix.execute("UPDATE run SET started_at = 'not a time' WHERE id = 'r1'")
    with pytest.raises(Exception):
        export_duckdb(ix, bad)
    assert not bad.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".bad.duckdb")]


def test_many_pending_runs_merge_window_by_window_and_a_stopped_merge_resumes(
    tmp_path: Path, ix: SQLiteIndex, duck: DuckStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import consist.store.duck as duck_mod

    monkeypatch.setattr(duck_mod, "MERGE_WINDOW_RUNS", 3)
    for i in range(10):
        ix.claim_run_id(f"r{i}", run_row(f"r{i}"))
        ix.add_artifact(art_row(f"a{i}", run_id=f"r{i}"))
        ix.link(f"r{i}", f"a{i}", "output", "o")
    windows = []
    real = ix.merge_lines

    def spy(after: int, upto: int):  # type: ignore[no-untyped-def]
        got = real(after, upto)
        windows.append((after, upto, len(got["run"]), sum(map(len, got.values()))))
        if len(windows) == 3 and not getattr(spy, "failed", False):
            spy.failed = True  # type: ignore[attr-defined]
            raise consist.StoreError("disk gone", None, None)
        return got

    monkeypatch.setattr(ix, "merge_lines", spy)
    with pytest.raises(consist.StoreError, match="disk gone"):
        duck.sync()
    # The first two windows were committed, with how far they reached: nothing is merged twice or lost.
    assert [w[2] for w in windows[:2]] == [3, 3]
    done = windows[1][1]
    [(synced,)] = rows(tmp_path / "prov.duckdb", "SELECT value FROM consist_meta WHERE key = 'synced_seq'")
    assert int(synced) == done
    assert ix.merged_seq() == done
    assert len(rows(tmp_path / "prov.duckdb", "SELECT id FROM run")) == 6
    first_two = windows[0][3] + windows[1][3]
    windows.clear()
    assert duck.sync() == 30 - first_two  # the rest of the 10 runs, 10 artifacts and 10 links
    assert windows[0][0] == done and sum(w[2] for w in windows) == 4
    assert sorted(r[0] for r in rows(tmp_path / "prov.duckdb", "SELECT id FROM run")) == sorted(
        f"r{i}" for i in range(10)
    )
    assert len(rows(tmp_path / "prov.duckdb", "SELECT * FROM run_artifact")) == 10
    assert duck.sync() == 0


def test_a_merge_window_is_bounded_by_artifacts_and_links_too(
    tmp_path: Path, ix: SQLiteIndex, duck: DuckStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs with many member files: a window ends after about 2x its runs in artifacts, 4x in links."""
    import consist.store.duck as duck_mod

    monkeypatch.setattr(duck_mod, "MERGE_WINDOW_RUNS", 3)
    for i in range(4):  # each run, its 7 artifacts and 7 links in one transaction
        with ix.write():
            ix.claim_run_id(f"r{i}", run_row(f"r{i}"))
            for j in range(7):
                ix.add_artifact(art_row(f"a{i}_{j}", run_id=f"r{i}"))
                ix.link(f"r{i}", f"a{i}_{j}", "member", f"m{j}")
    windows = []
    real = ix.merge_lines

    def spy(after: int, upto: int):  # type: ignore[no-untyped-def]
        got = real(after, upto)
        windows.append((len(got["run"]), len(got["artifact"]), len(got["run_artifact"])))
        return got

    monkeypatch.setattr(ix, "merge_lines", spy)
    assert duck.sync() == 4 * 15
    assert windows == [(1, 7, 7)] * 4  # 7 artifacts pass the bound of 6: every transaction is a window
    assert len(rows(tmp_path / "prov.duckdb", "SELECT * FROM artifact")) == 28

    windows.clear()
    monkeypatch.setattr(duck_mod, "MERGE_WINDOW_RUNS", 2)
    for i in range(4, 8):  # one artifact and nine links per transaction: links pass their bound of 8
        with ix.write():
            ix.claim_run_id(f"r{i}", run_row(f"r{i}"))
            ix.add_artifact(art_row(f"a{i}", run_id=f"r{i}"))
            for j in range(9):
                ix.link(f"r{i}", f"a{i}", "member", f"m{j}")
    assert duck.sync() == 4 * 11
    assert windows == [(1, 1, 9)] * 4


SCRIPT = """
import sys
from pathlib import Path
from consist import Tracker
t = Tracker("runs", code_version="v")
t.run(lambda: Path("o.txt").write_text("o") and Path("o.txt"), name="one", outputs=["o"])
t.close()
print("duckdb loaded:", "duckdb" in sys.modules)
"""


def _runs_in(db: Path) -> list[str]:
    try:
        return [r[0] for r in rows(db, "SELECT id FROM run")]
    except duckdb.Error:  # not created yet, or the merger holds it
        return []


def test_a_script_that_never_loaded_duckdb_ends_without_it_and_the_file_follows(tmp_path: Path) -> None:
    (tmp_path / "s.py").write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "CONSIST_MERGE_ON_CLOSE"}
    out = subprocess.run([sys.executable, "s.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "duckdb loaded: False" in out.stdout  # the merge was handed to another process
    db = tmp_path / "runs" / "provenance.duckdb"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not _runs_in(db):
        time.sleep(0.1)
    assert len(_runs_in(db)) == 1  # the DuckDB file caught up on its own
    # A query through consist never waits for that: it sees every run at once.
    out = subprocess.run([sys.executable, "s.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    with consist.Tracker(tmp_path / "runs", code_version="v") as t:
        assert len(t.find_runs(model="one")) == 2
        with t.engine.connect() as con:
            assert con.execute(text("SELECT count(*) FROM run")).scalar() == 2


def test_merge_on_close_can_be_made_to_wait(tmp_path: Path) -> None:
    (tmp_path / "s.py").write_text(SCRIPT)
    env = {**os.environ, "CONSIST_MERGE_ON_CLOSE": "wait"}
    out = subprocess.run([sys.executable, "s.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "duckdb loaded: True" in out.stdout
    assert len(_runs_in(tmp_path / "runs" / "provenance.duckdb")) == 1  # at once


# --------------------------------------------------------------------- merge_later, called directly


def _wait_for_runs(db: Path, n: int, limit_s: float = 60.0) -> list[str]:
    """The run ids in the DuckDB file once it holds n of them (the detached merger writes them)."""
    deadline = time.monotonic() + limit_s
    while True:
        found = _runs_in(db)
        if len(found) >= n or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_merge_later_hands_pending_runs_to_a_detached_merger(
    tmp_path: Path, ix: SQLiteIndex, duck: DuckStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONSIST_MERGE_ON_CLOSE", raising=False)
    monkeypatch.delitem(sys.modules, "duckdb")  # a process that never loaded DuckDB
    ix.claim_run_id("r1", run_row("r1"))
    db = tmp_path / "prov.duckdb"
    assert duck.merge_later() is True
    monkeypatch.undo()  # duckdb back, to read the file
    assert _wait_for_runs(db, 1) == ["r1"]
    assert ix.merged_seq() == ix.max_seq()


@pytest.mark.parametrize("setting", ["wait", " WAIT ", "Wait"])
def test_merge_later_merges_here_when_asked_to_wait(
    tmp_path: Path, ix: SQLiteIndex, duck: DuckStore, monkeypatch: pytest.MonkeyPatch, setting: str
) -> None:
    monkeypatch.setenv("CONSIST_MERGE_ON_CLOSE", setting)
    monkeypatch.delitem(sys.modules, "duckdb")
    ix.claim_run_id("r1", run_row("r1"))
    assert duck.merge_later() is False  # the caller merges before close() returns


def test_merge_later_merges_here_in_a_process_that_loaded_duckdb(
    tmp_path: Path, ix: SQLiteIndex, duck: DuckStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONSIST_MERGE_ON_CLOSE", raising=False)
    assert "duckdb" in sys.modules
    ix.claim_run_id("r1", run_row("r1"))
    assert duck.merge_later() is False


def test_merge_later_starts_nothing_when_nothing_is_pending(
    tmp_path: Path, ix: SQLiteIndex, duck: DuckStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONSIST_MERGE_ON_CLOSE", raising=False)
    ix.claim_run_id("r1", run_row("r1"))
    duck.sync()
    started: list[list[str]] = []
    monkeypatch.setattr(subprocess, "run", lambda args, **kw: started.append(args))
    monkeypatch.delitem(sys.modules, "duckdb")
    assert duck.merge_later() is True
    assert started == []
    # A database whose DuckDB file does not exist yet is pending even with no runs: the merger makes the file.
    (tmp_path / "prov.duckdb").unlink()
    assert duck.merge_later() is True
    assert len(started) == 1
    args = started[0]
    assert args[:3] == ["setsid", "-f", sys.executable] and args[3:] == [
        "-m", "consist.store.merger", str(tmp_path / "prov.duckdb")
    ]  # fmt: skip


def test_merge_later_merges_here_when_the_merger_cannot_start(
    tmp_path: Path, ix: SQLiteIndex, duck: DuckStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONSIST_MERGE_ON_CLOSE", raising=False)
    ix.claim_run_id("r1", run_row("r1"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no setsid
    monkeypatch.delitem(sys.modules, "duckdb")
    assert duck.merge_later() is False
    monkeypatch.undo()
    failing = tmp_path / "bin"
    failing.mkdir()
    (failing / "setsid").write_text("#!/bin/sh\nexit 3\n")
    (failing / "setsid").chmod(0o755)
    monkeypatch.setenv("PATH", f"{failing}:{os.environ['PATH']}")
    monkeypatch.delitem(sys.modules, "duckdb")
    assert duck.merge_later() is False  # it said it failed: merge here rather than lose the merge


def test_export_duckdb_makes_missing_folders_and_writes_into_existing_ones(tmp_path: Path, ix: SQLiteIndex) -> None:
    from consist.store.duck import export_duckdb

    ix.claim_run_id("r1", run_row("r1"))
    nested = tmp_path / "new" / "deeper" / "export.duckdb"
    assert export_duckdb(ix, nested) == {"runs": 1, "artifacts": 0, "links": 0}
    beside = tmp_path / "export.duckdb"  # its folder exists already
    assert export_duckdb(ix, beside) == {"runs": 1, "artifacts": 0, "links": 0}
    assert rows(nested, "SELECT id FROM run") == rows(beside, "SELECT id FROM run") == [("r1",)]
    with pytest.raises(consist.StoreError) as err:
        export_duckdb(ix, beside)
    assert str(err.value) == (
        f"Cannot export the run history to {beside}: the file exists. "
        "Fix: choose a new path, or delete the old export first."
    )


def test_registering_objects_goes_past_one_that_vanished(
    tmp_path: Path, ix: SQLiteIndex, duck: DuckStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from consist.objects import ObjectStore

    store = ObjectStore(tmp_path / "objects")
    digests = [store.put_bytes(f"object {i}".encode()) for i in range(3)]
    real = ObjectStore.all_objects

    def with_a_vanished_one(self: ObjectStore):  # type: ignore[no-untyped-def]
        yield "sha256:" + "0" * 64, self.root / "sha256" / "00" / ("0" * 62)  # pruned meanwhile
        yield from real(self)

    monkeypatch.setattr(ObjectStore, "all_objects", with_a_vanished_one)
    assert duck._register_objects([tmp_path / "objects", tmp_path / "absent"]) == 3
    assert sorted(r["hash"] for r in ix.query("SELECT hash FROM object")) == sorted(digests)


def test_out_of_memory_is_found_anywhere_in_the_chain_of_errors() -> None:
    from consist.store.duck import _out_of_memory

    try:
        try:
            raise duckdb.OutOfMemoryException("Out of Memory Error: failed to pin block")
        except duckdb.Error:
            raise duckdb.TransactionException("Current transaction is aborted") from None
    except duckdb.Error as exc:
        assert exc.__cause__ is None and _out_of_memory(exc)  # found through __context__
    outer = RuntimeError("wrapped")
    outer.__cause__ = MemoryError("OUT OF MEMORY")
    assert _out_of_memory(outer)
    assert not _out_of_memory(duckdb.Error("Constraint Error: duplicate key"))
    assert not _out_of_memory(None)


def test_a_merge_that_fails_otherwise_names_the_cause_and_the_fix(
    tmp_path: Path, ix: SQLiteIndex, duck: DuckStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    ix.claim_run_id("r1", run_row("r1"))

    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise duckdb.ConversionException("Conversion Error: cannot cast")

    monkeypatch.setattr(csvload, "load", refuse)
    with pytest.raises(consist.StoreError) as err:
        duck.sync()
    assert str(err.value) == (
        f"Merging runs into {tmp_path / 'prov.duckdb'} failed: Conversion Error: cannot cast. "
        "Likely cause: the DuckDB file is damaged or was written by an incompatible program. "
        "Fix: move the file away: the next query rebuilds it from the run index, which holds every run."
    )
    assert isinstance(err.value.__cause__, duckdb.ConversionException)
    monkeypatch.undo()
    assert duck.sync() == 1  # rolled back whole: the next merge brings the run


def test_a_large_merge_loads_through_files_it_removes_without_pyarrow(tmp_path: Path) -> None:
    """A merge of many rows goes through CSV files DuckDB reads itself: pyarrow is never imported,
    and no file is left beside the index."""
    script = textwrap.dedent(
        """
        import os, sys
        from pathlib import Path
        from consist.store.columns import ARTIFACT_COLUMNS, RUN_COLUMNS
        from consist.store.duck import DuckStore
        from consist.store.sqlite import SQLiteIndex
        base = Path(sys.argv[1])
        ix = SQLiteIndex(base / "ix" / "index.sqlite")
        with ix.write():
            for i in range(300):
                run = {c: None for c in RUN_COLUMNS} | {"id": f"r{i}", "status": "completed", "cache_hit": 0}
                ix.claim_run_id(f"r{i}", run)
                ix.add_artifact({c: None for c in ARTIFACT_COLUMNS} | {"id": f"a{i}", "run_id": f"r{i}"})
                ix.link(f"r{i}", f"a{i}", "output", "o")
        merged = DuckStore(base / "prov.duckdb", ix).sync()
        print(merged, "pyarrow" in sys.modules, [n for n in os.listdir(base / "ix") if n.endswith(".csv")])
        """
    )
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["900", "False", "[]"]
    assert rows(tmp_path / "prov.duckdb", "SELECT count(*) FROM run_artifact") == [(300,)]


def test_a_window_out_of_memory_even_without_the_limit_fails_once_and_says_why(
    tmp_path: Path, ix: SQLiteIndex, duck: DuckStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from consist.store import duck as duck_mod

    ix.claim_run_id("r1", run_row("r1"))
    tries: list[int] = []

    def out_of_memory(self, con, after, upto, adopt):  # type: ignore[no-untyped-def]
        tries.append(after)
        try:
            raise duckdb.OutOfMemoryException("Out of Memory Error: could not allocate")
        except duckdb.Error as exc:
            raise duck_mod._WindowOutOfMemory() from exc

    monkeypatch.setattr(DuckStore, "_merge_window", out_of_memory)
    with pytest.raises(consist.StoreError) as err:
        duck.sync()
    assert len(tries) == 2  # with the limit, then without it: never a third time
    assert str(err.value).startswith(
        f"Merging runs into {tmp_path / 'prov.duckdb'} failed: Out of Memory Error: could not allocate. "
    )
    assert isinstance(err.value.__cause__, duckdb.OutOfMemoryException)


@pytest.mark.parametrize(
    ("problem", "says"),
    [("IO Error: No space left on device", "No space left"), ("Corrupt database file: checksum mismatch", "damaged")],
)
def test_a_full_disk_or_a_damaged_file_while_merging_says_so(
    tmp_path: Path, ix: SQLiteIndex, duck: DuckStore, monkeypatch: pytest.MonkeyPatch, problem: str, says: str
) -> None:
    ix.claim_run_id("r1", run_row("r1"))

    def fail(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise duckdb.IOException(problem)

    monkeypatch.setattr(csvload, "load", fail)
    with pytest.raises(consist.StoreError) as err:
        duck.sync()
    assert str(err.value) == str(duck._open_error(duckdb.IOException(problem)))
    assert says in str(err.value) and problem in str(err.value)
    assert "Merging runs into" not in str(err.value)


def test_a_new_index_beside_a_locked_duckdb_file_warns_and_takes_its_runs_later(tmp_path: Path, make_tracker) -> None:
    t = make_tracker()
    made = t.run(lambda: Path("o.txt").write_text("o") and Path("o.txt"), name="old", outputs=["o"])
    t.close()
    db = tmp_path / "provenance.duckdb"
    index_dir = db.parent / f".{db.name}.consist"
    shutil.move(index_dir, tmp_path / "index-moved-away")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('held', flush=True); "
         "time.sleep(60)", str(db)], stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.warns(consist.ConsistWarning) as caught:
            t2 = consist.Tracker(tmp_path / "runs", db_path=db, project_root=tmp_path)
        (w,) = [w for w in caught if "is new" in str(w.message)]
        index = index_dir / "index.sqlite"
        assert str(w.message).startswith(f"The run index {index} is new, and the past runs in {db} ")
        assert str(w.message).endswith("Until they are (at the next merge), they are not cache hits.")
        # It points at the caller's line that opened the tracker (a mutation run adds frames of its own).
        assert w.filename == __file__ or "mutmut" in w.filename
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()  # type: ignore[union-attr]
    try:
        assert t2.find_runs(model="old") == []  # not taken over yet: not a cache hit until then
        t2.sync()  # the next merge copies the past runs in
        assert [r.id for r in t2.find_runs(model="old")] == [made.run_id]
    finally:
        t2.close()
