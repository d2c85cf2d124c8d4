"""Guarantees of consist.store.sqlite: the SQLite run index that every tracker writes first.

Sequence numbers order every write, a failed transaction leaves nothing behind,
run ids are never reused, and the lookups that decide cache hits only return
completed runs that executed. Every test opens a real SQLite file.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import consist
import consist.errors as consist_errors
import consist.store.index as index_mod
from consist.errors import StoreError
from consist.store.columns import ARTIFACT_COLUMNS, HOST, RESTORE_LEASE_S, RUN_COLUMNS, pid_alive
from consist.store.sqlite import SCHEMA_VERSION, SQLiteIndex, index_path_for


@pytest.fixture
def ix(tmp_path: Path):
    index = SQLiteIndex(tmp_path / "deep" / "dir" / "index.sqlite")
    yield index
    index.close()


def run_row(run_id: str, **kw: object) -> dict:
    row: dict = {c: None for c in RUN_COLUMNS}
    row.update(id=run_id, name=run_id, model="m", status="completed", signature="sig", cache_hit=0, ended_at=1.0)
    row.update(kw)
    return row


def art_row(art_id: str, **kw: object) -> dict:
    row: dict = {c: None for c in ARTIFACT_COLUMNS}
    row.update(id=art_id, key=art_id, uri=f"/data/{art_id}", hash=f"sha256:{art_id}", kind="file", created_at=1.0)
    row.update(kw)
    return row


# --------------------------------------------------------------------- opening


def test_a_new_index_is_a_wal_database_with_the_current_schema(tmp_path: Path, ix: SQLiteIndex) -> None:
    assert ix.path.exists()
    assert ix.query_one("PRAGMA journal_mode")["journal_mode"] == "wal"
    assert ix.query_one("PRAGMA user_version")["user_version"] == SCHEMA_VERSION
    assert ix.query_one("PRAGMA busy_timeout")["timeout"] == 60000
    assert ix.query_one("PRAGMA synchronous")["synchronous"] == 1  # NORMAL
    tables = {r["name"] for r in ix.query("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"counter", "run", "artifact", "run_artifact", "object", "hash_memo"} <= tables
    assert ix.max_seq() == 0


def test_reopening_keeps_the_rows(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    first = SQLiteIndex(path)
    first.upsert_run(run_row("kept"))
    first.close()
    again = SQLiteIndex(path)
    try:
        assert again.run("kept")["model"] == "m" and again.max_seq() == 1
    finally:
        again.close()


def test_an_index_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(consist.StoreError) as err:
        SQLiteIndex(path)
    assert f"has schema version {SCHEMA_VERSION + 1}; this consist understands up to {SCHEMA_VERSION}" in str(err.value)
    assert "upgrade consist" in str(err.value)


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(
        consist.StoreError, match=r"Cannot open the run index .*damaged or is not a consist index"
    ) as err:
        SQLiteIndex(path)
    text = str(err.value)
    assert "Likely cause: the file is damaged or is not a consist index. " in text
    assert "Fix: run consist.store.rebuild_index(" in text
    assert (
        "): it moves the damaged index aside and rebuilds it from the DuckDB file, which keeps every merged run" in text
    )


def test_a_closed_index_raises_run_state_errors(tmp_path: Path) -> None:
    index = SQLiteIndex(tmp_path / "index.sqlite")
    index.close()
    index.close()  # twice is fine
    with pytest.raises(consist.RunStateError, match="This Tracker is closed"):
        index.max_seq()


def test_index_path_sits_beside_the_duckdb_file(tmp_path: Path) -> None:
    db = tmp_path / "data" / "prov.duckdb"
    assert index_path_for(db) == tmp_path / "data" / ".prov.duckdb.consist" / "index.sqlite"


# --------------------------------------------------------------------- writes


def test_each_write_gets_the_next_sequence_number(ix: SQLiteIndex) -> None:
    ix.upsert_run(run_row("a"))
    ix.add_artifact(art_row("x"))
    ix.link("a", "x", "output", "x")
    assert ix.max_seq() == 3
    assert ix.query_one("SELECT seq FROM run WHERE id = 'a'")["seq"] == 1
    assert ix.query_one("SELECT seq FROM artifact WHERE id = 'x'")["seq"] == 2
    assert ix.query_one("SELECT seq FROM run_artifact")["seq"] == 3


def test_nested_writes_share_one_transaction_and_sequence_number(ix: SQLiteIndex) -> None:
    with ix.write() as outer:
        ix.upsert_run(run_row("a"))
        with ix.write() as inner:
            assert inner == outer
            ix.add_artifact(art_row("x"))
        ix.link("a", "x", "output", "x")
    assert ix.max_seq() == 1
    assert {r["seq"] for r in ix.query("SELECT seq FROM run UNION SELECT seq FROM artifact")} == {1}


def test_a_failed_transaction_leaves_nothing(ix: SQLiteIndex) -> None:
    ix.upsert_run(run_row("before"))
    with pytest.raises(RuntimeError, match="midway"):
        with ix.write():
            ix.upsert_run(run_row("lost"))
            ix.memo_put((1, 2, 3, 4), "algo", "sha256:lost")
            raise RuntimeError("midway")
    assert ix.run("lost") is None and ix.memo_get((1, 2, 3, 4), "algo") is None
    assert ix.max_seq() == 1
    ix.upsert_run(run_row("after"))  # the index is usable again
    assert ix.run("after")["seq"] == 2


def test_writes_are_visible_to_another_connection_at_once(tmp_path: Path, ix: SQLiteIndex) -> None:
    ix.upsert_run(run_row("shared"))
    ix.memo_put((9, 9, 9, 9), "a", "sha256:m")
    other = SQLiteIndex(ix.path)
    try:
        assert other.run("shared") is not None
        assert other.memo_get((9, 9, 9, 9), "a") == "sha256:m"
    finally:
        other.close()


def test_upsert_replaces_a_run(ix: SQLiteIndex) -> None:
    ix.upsert_run(run_row("r", status="running"))
    ix.upsert_run(run_row("r", status="completed", error="none"))
    rows = ix.query("SELECT status, error, seq FROM run")
    assert rows == [{"status": "completed", "error": "none", "seq": 2}]


def test_run_ids_are_never_reused(ix: SQLiteIndex) -> None:
    assert ix.claim_run_id("base", run_row("ignored", model="one")) == "base"
    assert ix.claim_run_id("base", run_row("ignored", model="two")) == "base~2"
    assert ix.claim_run_id("base", run_row("ignored", model="three")) == "base~3"
    models = {r["id"]: r["model"] for r in ix.query("SELECT id, model FROM run")}
    assert models == {"base": "one", "base~2": "two", "base~3": "three"}


def test_artifacts_are_kept_unless_replaced(ix: SQLiteIndex) -> None:
    ix.add_artifact(art_row("a", uri="/first"))
    ix.add_artifact(art_row("a", uri="/second"))
    assert ix.query_one("SELECT uri FROM artifact WHERE id = 'a'")["uri"] == "/first"
    ix.add_artifact(art_row("a", uri="/third"), replace=True)
    assert ix.query_one("SELECT uri FROM artifact WHERE id = 'a'")["uri"] == "/third"


def test_objects_are_tracked_per_store(ix: SQLiteIndex) -> None:
    ix.add_object("sha256:o", "/store/one", 5)
    ix.add_object("sha256:o", "/store/one", 5)
    ix.add_object("sha256:o", "/store/two", 5)
    assert sorted(ix.object_stores("sha256:o")) == ["/store/one", "/store/two"]
    ix.drop_objects([("sha256:o", "/store/one")])
    assert ix.object_stores("sha256:o") == ["/store/two"]
    assert ix.object_stores("sha256:unknown") == []


def test_memo_is_keyed_by_stat_and_algorithm(ix: SQLiteIndex) -> None:
    key = (1, 2, 3, 4)
    assert ix.memo_get(key, "sha256/file-v1") is None
    ix.memo_put(key, "sha256/file-v1", "sha256:a")
    ix.memo_put(key, "sha256/object-v1", "sha256:b")
    assert ix.memo_get(key, "sha256/file-v1") == "sha256:a"
    assert ix.memo_get(key, "sha256/object-v1") == "sha256:b"
    assert ix.memo_get((1, 2, 3, 5), "sha256/file-v1") is None
    ix.memo_put(key, "sha256/file-v1", "sha256:c")
    assert ix.memo_get(key, "sha256/file-v1") == "sha256:c"
    assert ix.max_seq() == 0  # the memo takes no sequence numbers
    with ix.write():
        ix.memo_put((5, 6, 7, 8), "sha256/file-v1", "sha256:d")
    assert ix.memo_get((5, 6, 7, 8), "sha256/file-v1") == "sha256:d"


def test_execute_runs_a_statement(ix: SQLiteIndex) -> None:
    ix.upsert_run(run_row("gone"))
    ix.execute("DELETE FROM run WHERE id = ?", ("gone",))
    assert ix.run("gone") is None


# --------------------------------------------------------------------- reads that decide hits


def test_producers_are_completed_executed_runs_newest_first(ix: SQLiteIndex) -> None:
    ix.upsert_run(run_row("old", ended_at=1.0))
    ix.upsert_run(run_row("new", ended_at=3.0))
    ix.upsert_run(run_row("mid", ended_at=2.0))
    ix.upsert_run(run_row("hit", ended_at=4.0, cache_hit=1))
    ix.upsert_run(run_row("failed", ended_at=5.0, status="failed"))
    ix.upsert_run(run_row("running", ended_at=None, status="running"))
    ix.upsert_run(run_row("interrupted", ended_at=6.0, status="interrupted"))
    ix.upsert_run(run_row("other", ended_at=7.0, signature="other"))
    assert [r["id"] for r in ix.producers("sig")] == ["new", "mid", "old"]
    assert [r["id"] for r in ix.producers("sig", limit=2)] == ["new", "mid"]
    for i in range(6):
        ix.upsert_run(run_row(f"more{i}", ended_at=10.0 + i))
    assert len(ix.producers("sig")) == 5  # five candidates by default


def test_recent_runs_of_a_model(ix: SQLiteIndex) -> None:
    ix.upsert_run(run_row("a", model="m", ended_at=1.0))
    ix.upsert_run(run_row("b", model="m", ended_at=2.0))
    ix.upsert_run(run_row("c", model="m", ended_at=3.0, cache_hit=1))
    ix.upsert_run(run_row("d", model="other", ended_at=4.0))
    ix.upsert_run(run_row("e", model="m", ended_at=5.0, status="failed"))
    assert [r["id"] for r in ix.recent_runs_of_model("m")] == ["b", "a"]
    assert [r["id"] for r in ix.recent_runs_of_model("m", limit=1)] == ["b"]
    assert set(ix.recent_runs_of_model("m")[0]) == {"id", "identity"}  # a config can be large: not read
    for i in range(55):
        ix.upsert_run(run_row(f"many{i}", model="busy", ended_at=float(i)))
    assert len(ix.recent_runs_of_model("busy")) == 50


def test_links_in_recording_order_and_by_direction(ix: SQLiteIndex) -> None:
    ix.upsert_run(run_row("r"))
    for art in ("in1", "out2", "out1", "log"):
        ix.add_artifact(art_row(art))
    ix.link("r", "in1", "input", "in1")
    ix.link("r", "out2", "output", "b")
    ix.link("r", "out1", "output", "a")
    ix.link("r", "log", "log", "container.log")
    outs = ix.outputs_of("r")
    assert [(o["link_key"], o["id"], o["direction"]) for o in outs] == [
        ("b", "out2", "output"),
        ("a", "out1", "output"),
    ]
    assert outs[0]["uri"] == "/data/out2" and outs[0]["hash"] == "sha256:out2"
    assert [o["link_key"] for o in ix.links_of("r")] == ["in1", "b", "a", "container.log"]
    assert [o["id"] for o in ix.links_of("r", "input")] == ["in1"]
    assert ix.outputs_of("nobody") == []
    with ix.write():
        ix.link("r2", "out1", "output", "z")
        ix.link("r2", "out2", "output", "y")
    assert [o["link_key"] for o in ix.outputs_of("r2")] == ["y", "z"]  # same sequence number: by key


def test_output_artifact_with_hash_is_the_newest_of_a_completed_run(ix: SQLiteIndex) -> None:
    ix.upsert_run(run_row("done"))
    ix.upsert_run(run_row("broken", status="failed"))
    ix.add_artifact(art_row("old", hash="sha256:h", run_id="done", created_at=1.0))
    ix.add_artifact(art_row("new", hash="sha256:h", run_id="done", created_at=2.0))
    ix.add_artifact(art_row("newest-but-failed", hash="sha256:h", run_id="broken", created_at=3.0))
    ix.add_artifact(art_row("input", hash="sha256:h", run_id=None, created_at=4.0))
    assert ix.output_artifact_with_hash("sha256:h")["id"] == "new"
    assert ix.output_artifact_with_hash("sha256:other") is None


def test_changes_since_returns_rows_after_a_sequence_number(ix: SQLiteIndex) -> None:
    ix.upsert_run(run_row("a"))
    ix.add_artifact(art_row("x"))
    ix.link("a", "x", "output", "x")
    ix.upsert_run(run_row("b"))
    top, runs, arts, links = ix.changes_since(0)
    assert top == 4 and [r["id"] for r in runs] == ["a", "b"] and [a["id"] for a in arts] == ["x"]
    assert [(lk["run_id"], lk["artifact_id"]) for lk in links] == [("a", "x")]
    top, runs, arts, links = ix.changes_since(2)
    assert top == 4 and [r["id"] for r in runs] == ["b"] and arts == [] and len(links) == 1
    assert ix.changes_since(4) == (4, [], [], [])
    ix.upsert_run(run_row("c"))  # the snapshot transaction was closed: writes still work
    assert ix.max_seq() == 5


# --------------------------------------------------------------------- processes


def test_pid_alive() -> None:
    assert pid_alive(os.getpid())
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not pid_alive(proc.pid)


# --------------------------------------------------------------------- where the index belongs


def test_the_duckdb_file_of_an_index() -> None:
    from consist.store.sqlite import _db_path_of

    db = Path("/data/runs/prov.duckdb")
    assert _db_path_of(index_path_for(db)) == db
    assert _db_path_of(Path("/data/idx/index.sqlite")) == Path("/data/idx/provenance.duckdb")
    assert _db_path_of(Path("/data/.hidden/index.sqlite")) == Path("/data/.hidden/provenance.duckdb")
    assert _db_path_of(Path("/data/x.consist/index.sqlite")) == Path("/data/x.consist/provenance.duckdb")


def test_a_damaged_index_names_the_rebuild_command(tmp_path: Path) -> None:
    path = tmp_path / ".prov.duckdb.consist" / "index.sqlite"
    path.parent.mkdir()
    path.write_bytes(b"not a database at all" * 200)
    with pytest.raises(consist.StoreError) as err:
        SQLiteIndex(path)
    assert str(err.value).startswith(f"Cannot open the run index {path}: file is not a database.")
    assert f"run consist.store.rebuild_index({str(tmp_path / 'prov.duckdb')!r})" in str(err.value)


# --------------------------------------------------------------------- what a storage error is called


def _real_error(sql: str, path: Path) -> sqlite3.Error:
    con = sqlite3.connect(path)
    try:
        con.execute(sql)
    except sqlite3.Error as exc:
        return exc
    finally:
        con.close()
    raise AssertionError("no error")


def test_damaged_files_are_told_apart_from_other_errors(tmp_path: Path) -> None:
    from consist.store.sqlite import _storage_problem

    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"x" * 4096)
    notadb = _real_error("SELECT * FROM sqlite_master", garbage)
    assert notadb.sqlite_errorcode == sqlite3.SQLITE_NOTADB
    index = tmp_path / ".prov.duckdb.consist" / "index.sqlite"
    problem = _storage_problem(notadb, index)
    assert problem is not None and str(problem) == (
        f"The run index {index} is damaged (file is not a database). Likely cause: the file was truncated or "
        "overwritten (a crash during a copy, a disk error). Fix: run "
        f"consist.store.rebuild_index({str(tmp_path / 'prov.duckdb')!r}): it moves the damaged index aside and "
        "rebuilds it from the DuckDB file."
    )
    ok = tmp_path / "ok.sqlite"
    other = _real_error("SELECT * FROM no_such_table", ok)
    assert _storage_problem(other, index) is None
    malformed = sqlite3.DatabaseError("database disk image is malformed")  # as sqlite words SQLITE_CORRUPT
    assert "is damaged (database disk image is malformed)" in str(_storage_problem(malformed, index))


def test_a_full_disk_is_named_as_such(tmp_path: Path) -> None:
    from consist.store.sqlite import _disk_full, _storage_problem

    index = tmp_path / "index.sqlite"
    full = sqlite3.OperationalError("database or disk is full")
    problem = _storage_problem(full, index)
    assert problem is not None and str(problem) == (
        f"No space left on device for the run index {index} (database or disk is full). Likely cause: the file "
        f"system that holds the database is full. Fix: free space there (df -h {tmp_path}; "
        "tracker.prune_store() frees stored outputs) and run the step again; the write that failed was rolled "
        "back, nothing of it was recorded."
    )
    io_error = sqlite3.OperationalError("disk I/O error")
    io_error.sqlite_errorcode = sqlite3.SQLITE_IOERR_WRITE  # extended code: primary code SQLITE_IOERR
    assert not _disk_full(io_error, index)  # plenty of space here: an I/O error is an I/O error
    coded_full = sqlite3.OperationalError("no space")
    coded_full.sqlite_errorcode = sqlite3.SQLITE_FULL
    assert _disk_full(coded_full, index)


@pytest.fixture
def small_fs(tmp_path: Path):
    """Mounts tmpfs file systems of a given size (needs root); unmounts them afterwards."""
    import shutil
    import subprocess

    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a small tmpfs")
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        mnt = tmp_path / f"fs-{size}"
        mnt.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(mnt)
        return mnt

    yield mount
    for mnt in mounted:
        subprocess.run(["umount", str(mnt)], check=True)


def test_an_io_error_on_a_nearly_full_disk_counts_as_full(small_fs, tmp_path: Path) -> None:
    from consist.store.sqlite import _disk_full, _nearly_full, _storage_problem

    tiny_fs = small_fs("256k")
    assert _nearly_full(tiny_fs) and not _nearly_full(tmp_path) and not _nearly_full(tmp_path / "missing")
    assert not _nearly_full(small_fs("1m"))  # exactly 1 MiB free is enough
    assert not _nearly_full(small_fs("1536k"))
    io_error = sqlite3.OperationalError("disk I/O error")
    io_error.sqlite_errorcode = sqlite3.SQLITE_IOERR_WRITE
    assert _disk_full(io_error, tiny_fs / "index.sqlite")
    assert "No space left on device for the run index" in str(_storage_problem(io_error, tiny_fs / "index.sqlite"))
    other = sqlite3.OperationalError("constraint failed")
    other.sqlite_errorcode = sqlite3.SQLITE_CONSTRAINT
    assert not _disk_full(other, tiny_fs / "index.sqlite")


# --------------------------------------------------------------------- leases and members


def test_leases_hold_while_their_run_runs_or_their_restore_is_recent(ix: SQLiteIndex) -> None:
    from consist.store.columns import HOST, RESTORE_LEASE_S

    ix.upsert_run(run_row("running", status="running", host=HOST, pid=os.getpid()))
    ix.upsert_run(run_row("done"))
    ix.lease_written("running", "sha256:r", "file", "/store", 1)
    ix.lease_written("unrecorded", "sha256:u", "file", "/store", 1)
    ix.lease_restoring([("sha256:x", "file"), ("sha256:y", "dir")])
    taken = {r["hash"]: r["taken_at"] for r in ix.query("SELECT hash, taken_at FROM lease")}
    live, ended = ix.leases()
    assert sorted(r["hash"] for r in live) == ["sha256:r", "sha256:u", "sha256:x", "sha256:y"] and ended == []
    assert {r["hash"]: r["kind"] for r in live}["sha256:y"] == "dir"
    ix.execute("INSERT INTO lease VALUES ('sha256:d', 'file', 'done', ?, ?, NULL, ?)", (HOST, os.getpid(), 0.0))
    later = taken["sha256:x"] + RESTORE_LEASE_S  # exactly the lease's length later: it has ended
    live, ended = ix.leases(now=later)
    assert sorted(r["hash"] for r in live) == ["sha256:r"]
    assert len(ended) == 4
    live, _ = ix.leases(now=later - 1)
    assert sorted(r["hash"] for r in live) == ["sha256:r", "sha256:u", "sha256:x", "sha256:y"]


def test_leases_of_dead_processes_end_but_other_hosts_are_trusted(ix: SQLiteIndex) -> None:
    import subprocess
    import sys

    from consist.store.columns import HOST

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    now = 1e9
    ix.execute("INSERT INTO lease VALUES ('sha256:dead', 'file', NULL, ?, ?, 1, ?)", (HOST, proc.pid, now))
    ix.execute("INSERT INTO lease VALUES ('sha256:far', 'file', NULL, 'elsewhere', ?, 1, ?)", (proc.pid, now))
    ix.execute("INSERT INTO lease VALUES ('sha256:me', 'file', NULL, ?, ?, 1, ?)", (HOST, os.getpid(), now))
    live, ended = ix.leases(now=now)
    assert sorted(r["hash"] for r in live) == ["sha256:far", "sha256:me"] and len(ended) == 1


def test_members_of_a_directory_output(ix: SQLiteIndex) -> None:
    import json

    ix.upsert_run(run_row("r"))
    for art, meta in (("D", None), ("m1", {"member_of": "D"}), ("m2", {"member_of": "D"}), ("e1", {"member_of": "E"})):
        ix.add_artifact(art_row(art, meta=json.dumps(meta) if meta else None))
    ix.add_artifact(art_row("bare"))
    ix.link("r", "D", "output", "tables")
    ix.link("r", "m1", "member", "tables/a.csv")
    ix.link("r", "m2", "member", "tables/b.csv")
    ix.link("r", "e1", "member", "other/c.csv")
    ix.link("r", "bare", "member", "tables/x.csv")
    ix.link("r2", "m1", "member", "tables/a.csv")
    ix.add_artifact(art_row("copy", meta=json.dumps({"restored_from": "D"})))
    ix.link("r", "copy", "output", "tables-copy")  # names D in its meta, but is no member
    members = ix.members_of("r", "D")
    assert [(m["link_key"], m["id"]) for m in members] == [("tables/a.csv", "m1"), ("tables/b.csv", "m2")]
    assert ix.members_of("r", "none") == []


def test_pid_alive_never_disturbs_the_process_it_asks_about() -> None:
    import signal
    import subprocess
    import sys
    import time

    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)"],
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),
    )
    try:
        assert pid_alive(child.pid)
        time.sleep(0.2)
        assert child.poll() is None  # no signal was delivered
    finally:
        child.kill()
        child.wait()


def test_a_process_of_another_user_counts_as_alive() -> None:
    if os.geteuid() != 0:
        assert pid_alive(1)  # init belongs to root: asking about it is refused, and that means alive
        return
    os.setresuid(65534, 65534, 0)  # for a moment, an unprivileged user that may not signal init
    try:
        assert pid_alive(1)
    finally:
        os.setresuid(0, 0, 0)


def test_a_closed_index_says_what_to_do(tmp_path: Path) -> None:
    index = SQLiteIndex(tmp_path / "index.sqlite")
    index.close()
    with pytest.raises(consist.RunStateError) as err:
        index.run("x")
    assert str(err.value) == (
        "This Tracker is closed. Likely cause: close() ran, or its `with` block ended, before this call. "
        "Fix: open a new Tracker on the same run_dir and database; past runs and cached outputs are kept."
    )


def test_registering_objects_counts_new_rows_and_takes_no_sequence_number(ix: SQLiteIndex) -> None:
    assert ix.register_objects([("sha256:a", "/s", 1), ("sha256:b", "/s", 2)]) == 2
    assert ix.register_objects([("sha256:a", "/s", 1), ("sha256:a", "/t", 1)]) == 1
    assert ix.max_seq() == 0
    assert sorted(ix.object_stores("sha256:a")) == ["/s", "/t"]


def test_a_failed_upgrade_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    SQLiteIndex(path).close()
    con = sqlite3.connect(path)
    tables_before = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
    con.execute("PRAGMA user_version = 1")  # claims the first schema, but already has the newer columns
    con.commit()
    con.close()
    with pytest.raises(consist.StoreError, match="Cannot open the run index"):
        SQLiteIndex(path)
    con = sqlite3.connect(path, timeout=0.5, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")  # the failed upgrade holds no write lock
        con.execute("ROLLBACK")
        assert con.execute("PRAGMA user_version").fetchone()[0] == 1  # rolled back as a whole
        assert {r[0] for r in con.execute("SELECT name FROM sqlite_master")} == tables_before
        assert not con.in_transaction
    finally:
        con.close()


def test_an_older_index_is_upgraded_in_place_keeping_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    first = SQLiteIndex(path)
    first.upsert_run(run_row("old"))
    first.close()
    con = sqlite3.connect(path)  # make it a schema 1 index: what versions 2 and 3 add is not there yet
    for stmt in ("DROP TABLE index_meta", "DROP TABLE lease", "DROP INDEX run_producers_by_model",
                 "ALTER TABLE artifact DROP COLUMN location", "PRAGMA user_version = 1"):  # fmt: skip
        con.execute(stmt)
    con.commit()
    con.close()
    again = SQLiteIndex(path)
    try:
        assert again.query_one("PRAGMA user_version")["user_version"] == SCHEMA_VERSION
        assert again.run("old") is not None and len(again.generation) == 32
        names = {r["name"] for r in again.query("SELECT name FROM sqlite_master")}
        assert {"index_meta", "lease", "lease_by_run", "run_producers_by_model"} <= names
        assert "location" in {r["name"] for r in again.query("PRAGMA table_info(artifact)")}
        again.lease_restoring([("sha256:x", "file")])
        assert len(again.leases()[0]) == 1
    finally:
        again.close()


def test_a_read_only_index_sees_every_row_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    with pytest.raises(StoreError, match="There is no run index"):
        SQLiteIndex(path, read_only=True)
    assert not path.exists()  # looking never creates one
    ix = SQLiteIndex(path)
    ix.upsert_run(run_row("r1"))
    reader = SQLiteIndex(path, read_only=True)
    assert reader.run("r1")["id"] == "r1" and reader.generation == ix.generation
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.execute("DELETE FROM run")
    ix.upsert_run(run_row("r2"))
    assert {r["id"] for r in reader.query("SELECT id FROM run")} == {"r1", "r2"}  # a live view
    ix.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="schema version"):
        SQLiteIndex(path, read_only=True)
    reader.close()
    ix.close()


def test_processes_creating_one_new_index_at_the_same_moment_all_open_it(tmp_path: Path) -> None:
    """Switching a new index to WAL needs the file to itself; SQLite refuses at once, without its
    busy timeout, while another process does the same. Every creator must still succeed."""
    import time

    script = tmp_path / "create.py"
    script.write_text(
        "import sys, time\n"
        "from pathlib import Path\n"
        "from consist.store.sqlite import SQLiteIndex\n"
        "start = float(sys.argv[2])\n"
        "while time.time() < start:\n"
        "    pass\n"
        "print(SQLiteIndex(Path(sys.argv[1])).query_one('PRAGMA journal_mode')['journal_mode'])\n"
    )
    for round_ in range(5):
        path = tmp_path / f"r{round_}" / "index.sqlite"
        start = time.time() + 1.5
        procs = [subprocess.Popen([sys.executable, str(script), str(path), str(start)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(6)]  # fmt: skip
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0 and out.strip() == "wal", err


# --------------------------------------------------------------------- liveness: claims, heartbeats, reaping, retries
# One execution per signature rests on claims; interrupted runs are found through
# heartbeats; a lost connection is survived by running a transaction again. The
# multi-process and PostgreSQL tests show these end to end; these check each rule
# in one process, so that a wrong comparison or a missing row is caught directly.


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def claim_rows(ix: SQLiteIndex) -> list[dict]:
    return ix.query("SELECT signature, run_id, host, pid, beat_at FROM claim ORDER BY signature")


# --------------------------------------------------------------------- claims


def test_a_free_claim_is_taken_and_recorded_with_this_process(ix: SQLiteIndex) -> None:
    before = time.time()
    assert ix.try_claim("sig", "r1") == (True, None)
    [row] = claim_rows(ix)
    assert (row["signature"], row["run_id"], row["host"], row["pid"]) == ("sig", "r1", HOST, os.getpid())
    assert before <= row["beat_at"] <= time.time()
    assert "r1" in ix._beating  # its heartbeat is kept from now on
    assert ix.claim_of("sig")["run_id"] == "r1"
    assert ix.claim_of("other") is None


def test_claiming_again_for_the_same_run_changes_nothing(ix: SQLiteIndex) -> None:
    ix.try_claim("sig", "r1")
    first = claim_rows(ix)
    assert ix.try_claim("sig", "r1") == (True, None)
    assert claim_rows(ix) == first


def test_a_claim_held_by_a_live_process_is_refused_with_its_holder(ix: SQLiteIndex) -> None:
    ix.try_claim("sig", "r1")
    claimed, holder = ix.try_claim("sig", "r2")
    assert claimed is False
    assert (holder["run_id"], holder["host"], holder["pid"]) == ("r1", HOST, os.getpid())
    assert claim_rows(ix)[0]["run_id"] == "r1"
    assert "r2" not in ix._beating


def test_a_claim_of_a_live_process_of_this_host_is_refused(ix: SQLiteIndex) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ix.execute("INSERT INTO claim VALUES ('sig', 'theirs', ?, ?, 0)", (HOST, other.pid))
        claimed, holder = ix.try_claim("sig", "mine")
        assert claimed is False and holder["run_id"] == "theirs"
    finally:
        other.kill()
        other.wait()


def test_a_claim_of_an_ended_process_is_taken_over(ix: SQLiteIndex) -> None:
    pid = dead_pid()
    ix.execute("INSERT INTO claim VALUES ('sig', 'theirs', ?, ?, ?)", (HOST, pid, time.time()))
    claimed, holder = ix.try_claim("sig", "mine")
    assert claimed is True
    assert (holder["run_id"], holder["pid"]) == ("theirs", pid)
    [row] = claim_rows(ix)
    assert (row["run_id"], row["host"], row["pid"]) == ("mine", HOST, os.getpid())
    assert row["beat_at"] > time.time() - 5
    assert "mine" in ix._beating


def test_another_hosts_claim_holds_until_its_heartbeat_expires(ix: SQLiteIndex) -> None:
    now = time.time()
    ix.execute(
        "INSERT INTO claim VALUES ('fresh', 'a', 'elsewhere', ?, ?)", (os.getpid(), now - index_mod.EXPIRY_S + 5)
    )
    ix.execute(
        "INSERT INTO claim VALUES ('stale', 'b', 'elsewhere', ?, ?)", (os.getpid(), now - index_mod.EXPIRY_S - 5)
    )
    assert ix.try_claim("fresh", "mine")[0] is False
    claimed, holder = ix.try_claim("stale", "mine")
    assert claimed is True and holder["host"] == "elsewhere"
    assert {r["signature"]: r["run_id"] for r in claim_rows(ix)} == {"fresh": "a", "stale": "mine"}


def test_gone_tells_processes_apart() -> None:
    ix = index_mod.RunIndex()
    now = 1000.0
    me = os.getpid()
    assert ix._gone({"host": HOST, "pid": me, "beat_at": 0.0}, now) is False  # this process, however old
    assert ix._gone({"host": HOST, "pid": dead_pid(), "beat_at": now}, now) is True  # ended, however fresh
    assert ix._gone({"host": HOST, "pid": 1, "beat_at": 0.0}, now) is False  # alive on this host
    edge = now - index_mod.EXPIRY_S
    assert ix._gone({"host": "elsewhere", "pid": me, "beat_at": edge}, now) is False  # exactly at the expiry
    assert ix._gone({"host": "elsewhere", "pid": me, "beat_at": edge - 0.01}, now) is True


def test_releasing_a_claim_frees_only_that_runs_claim(ix: SQLiteIndex) -> None:
    ix.try_claim("a", "r1")
    ix.try_claim("b", "r2")
    ix.release_claim("a", "someone-else")
    assert [r["signature"] for r in claim_rows(ix)] == ["a", "b"]
    ix.release_claim("a", "r1")
    assert [r["signature"] for r in claim_rows(ix)] == ["b"]


def test_a_claim_passes_to_the_run_it_opens(ix: SQLiteIndex) -> None:
    ix.try_claim("sig", "token")
    ix.try_claim("other", "token")  # the same token under another signature is not passed on
    run_id = ix.claim_run_id("r", run_row("r", status="running", pid=os.getpid(), host=HOST), claim=("sig", "token"))
    assert run_id == "r"
    assert {r["signature"]: r["run_id"] for r in claim_rows(ix)} == {"sig": "r", "other": "token"}
    [beat] = ix.query("SELECT * FROM heartbeat")
    assert (beat["run_id"], beat["host"], beat["pid"]) == ("r", HOST, os.getpid())
    assert "r" in ix._beating


def test_a_claim_token_stops_beating_once_it_holds_nothing(ix: SQLiteIndex) -> None:
    """A token that passed its claims on to runs, or gave them back, is no longer refreshed."""
    ix.try_claim("sig", "token")
    ix.try_claim("other", "token")
    ix.claim_run_id("r", run_row("r", status="running", pid=os.getpid(), host=HOST), claim=("sig", "token"))
    assert {"token", "r"} <= ix._beating  # it still holds "other"
    ix.release_claim("other", "token")
    assert "token" not in ix._beating and "r" in ix._beating
    ix.upsert_run(run_row("r", status="completed"))
    assert ix._beating == set()


def test_a_run_opened_as_completed_gets_no_heartbeat(ix: SQLiteIndex) -> None:
    ix.claim_run_id("r", run_row("r"))
    ix.claim_run_id("r", run_row("r"))
    ix.claim_run_id("r", run_row("r"))
    assert ix.query("SELECT * FROM heartbeat") == []
    assert "r" not in ix._beating
    assert [r["id"] for r in ix.query("SELECT id FROM run ORDER BY seq")] == ["r", "r~2", "r~3"]


def test_a_run_that_ends_drops_its_heartbeat_claim_and_leases_only(ix: SQLiteIndex) -> None:
    for rid in ("r", "other"):
        ix.try_claim(f"sig-{rid}", rid)
        ix.claim_run_id(rid, run_row(rid, status="running", pid=os.getpid(), host=HOST), claim=(f"sig-{rid}", rid))
        ix.lease_written(rid, f"sha256:{rid}", "file", "/store", 1)
    ix.lease_restoring([("sha256:restoring", "file")])
    ix.upsert_run(run_row("r", status="completed"))
    assert [r["run_id"] for r in ix.query("SELECT run_id FROM heartbeat")] == ["other"]
    assert [r["run_id"] for r in claim_rows(ix)] == ["other"]
    # The run's written leases and this thread's restore lease end; the other run's lease holds.
    assert [(r["hash"], r["run_id"]) for r in ix.query("SELECT hash, run_id FROM lease")] == [("sha256:other", "other")]
    assert "r" not in ix._beating and "other" in ix._beating


def test_a_running_upsert_keeps_heartbeat_and_claim(ix: SQLiteIndex) -> None:
    ix.try_claim("sig", "r")
    ix.claim_run_id("r", run_row("r", status="running", pid=os.getpid(), host=HOST), claim=("sig", "r"))
    ix.upsert_run(run_row("r", status="running", pid=os.getpid(), host=HOST))
    assert len(ix.query("SELECT * FROM heartbeat")) == 1 and len(claim_rows(ix)) == 1
    assert "r" in ix._beating


def test_another_threads_restore_lease_outlives_this_threads_run(ix: SQLiteIndex) -> None:
    t = threading.Thread(target=ix.lease_restoring, args=([("sha256:theirs", "file")],))
    t.start()
    t.join()
    ix.lease_restoring([("sha256:mine", "file")])
    ix.upsert_run(run_row("r"))
    assert [r["hash"] for r in ix.query("SELECT hash FROM lease")] == ["sha256:theirs"]


# --------------------------------------------------------------------- heartbeats


def test_a_beat_refreshes_only_this_processes_rows(ix: SQLiteIndex) -> None:
    ix.try_claim("sig", "r")
    ix.claim_run_id("r", run_row("r", status="running", pid=os.getpid(), host=HOST))
    ix.execute("INSERT INTO heartbeat VALUES ('theirs', ?, ?, 5)", (HOST, os.getpid() + 1))
    ix.execute("INSERT INTO claim VALUES ('s2', 'theirs', 'elsewhere', ?, 5)", (os.getpid(),))
    ix.execute("UPDATE heartbeat SET beat_at = 1 WHERE run_id = 'r'")
    ix.execute("UPDATE claim SET beat_at = 1 WHERE run_id = 'r'")
    before = time.time()
    ix.beat()
    beats = {r["run_id"]: r["beat_at"] for r in ix.query("SELECT * FROM heartbeat")}
    claims = {r["run_id"]: r["beat_at"] for r in claim_rows(ix)}
    assert beats["r"] >= before and claims["r"] >= before
    assert beats["theirs"] == 5 and claims["theirs"] == 5


def test_no_beat_is_written_while_no_run_runs(ix: SQLiteIndex) -> None:
    ix.execute("INSERT INTO heartbeat VALUES ('old', ?, ?, 1)", (HOST, os.getpid()))
    seq = ix.max_seq()
    ix.beat()
    assert ix.query_one("SELECT beat_at FROM heartbeat")["beat_at"] == 1
    assert ix.max_seq() == seq  # a beat never takes a sequence number


def test_the_heartbeat_thread_beats_and_survives_a_failed_beat(
    ix: SQLiteIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_mod, "HEARTBEAT_S", 0.05)
    calls: list[float] = []
    real = ix.beat

    def flaky() -> None:
        calls.append(time.time())
        if len(calls) == 1:
            raise StoreError("connection lost", "test", "none")
        real()

    monkeypatch.setattr(ix, "beat", flaky)
    ix.claim_run_id("r", run_row("r", status="running", pid=os.getpid(), host=HOST))
    ix.execute("UPDATE heartbeat SET beat_at = 1")
    thread = ix._beat_thread
    assert thread is not None and thread.daemon and thread.name == "consist-heartbeat"
    deadline = time.time() + 10
    while time.time() < deadline and ix.query_one("SELECT beat_at FROM heartbeat")["beat_at"] == 1:
        time.sleep(0.02)
    assert len(calls) >= 2 and ix.query_one("SELECT beat_at FROM heartbeat")["beat_at"] > 1
    # One thread serves every run of the index.
    ix.claim_run_id("r2", run_row("r2", status="running", pid=os.getpid(), host=HOST))
    assert ix._beat_thread is thread
    ix._beat_stop.set()
    thread.join(5)
    assert not thread.is_alive()
    # A stopped thread is started again by the next running run.
    ix.claim_run_id("r3", run_row("r3", status="running", pid=os.getpid(), host=HOST))
    assert ix._beat_thread is not thread and ix._beat_thread.is_alive()


def test_closing_the_index_stops_its_heartbeat_thread(tmp_path: Path) -> None:
    index = SQLiteIndex(tmp_path / "i.sqlite")
    index.claim_run_id("r", run_row("r", status="running", pid=os.getpid(), host=HOST))
    thread = index._beat_thread
    index.close()
    thread.join(5)
    assert not thread.is_alive()


# --------------------------------------------------------------------- interrupted runs


def running(ix: SQLiteIndex, run_id: str, host: str, pid: int | None, beat: float | None) -> None:
    ix.upsert_run(run_row(run_id, status="running", host=host, pid=pid, ended_at=None))
    if beat is not None:
        ix.execute("INSERT INTO heartbeat VALUES (?, ?, ?, ?)", (run_id, host, pid or 0, beat))
    ix.execute("INSERT INTO claim VALUES (?, ?, ?, ?, ?)", (f"sig-{run_id}", run_id, host, pid or 0, beat or 0))


def test_reaping_marks_only_runs_whose_process_is_gone(ix: SQLiteIndex) -> None:
    now = time.time()
    gone = dead_pid()
    running(ix, "ended-here", HOST, gone, now)
    running(ix, "mine", HOST, os.getpid(), 1.0)
    running(ix, "alive-here", HOST, 1, now)
    running(ix, "silent-there", "elsewhere", 7, now - index_mod.EXPIRY_S - 10)
    running(ix, "beating-there", "elsewhere", 7, now)
    running(ix, "old-consist-there", "elsewhere", 7, None)
    running(ix, "no-pid", HOST, None, None)
    ix.upsert_run(run_row("done", host=HOST, pid=gone))
    before = time.time()
    assert sorted(ix.reap_interrupted()) == ["ended-here", "silent-there"]
    status = {r["id"]: r for r in ix.query("SELECT * FROM run")}
    assert {k for k, r in status.items() if r["status"] == "interrupted"} == {"ended-here", "silent-there"}
    assert status["done"]["status"] == "completed"
    here, there = status["ended-here"], status["silent-there"]
    assert here["error"] == f"process {gone} ended before the run finished"
    assert there["error"] == f"no heartbeat from elsewhere (process 7) for {index_mod.EXPIRY_S:.0f} s"
    assert before <= here["ended_at"] <= time.time()
    assert here["seq"] > 0 and here["name"] == "ended-here"  # the rest of the record is kept
    left = {r["run_id"] for r in ix.query("SELECT run_id FROM heartbeat")}
    assert left == {"mine", "alive-here", "beating-there"}
    assert {r["run_id"] for r in claim_rows(ix)} == left | {"old-consist-there", "no-pid"}
    assert ix.reap_interrupted() == []  # nothing twice


def test_a_run_that_finished_meanwhile_is_not_reaped(ix: SQLiteIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    running(ix, "r", HOST, dead_pid(), time.time())
    real_query = ix.query

    def finished_between(sql: str, params=()):  # the run completes between the look and the mark
        rows = real_query(sql, params)
        if "r.status = 'running'" in sql:
            ix.upsert_run(run_row("r", status="completed"))
        return rows

    monkeypatch.setattr(ix, "query", finished_between)
    assert ix.reap_interrupted() == []
    assert ix.run("r")["status"] == "completed"


# --------------------------------------------------------------------- retried transactions


class Flaky(SQLiteIndex):
    """An index whose first ``fail`` transactions lose their connection."""

    def __init__(self, path: Path, fail: int, retryable: bool = True) -> None:
        super().__init__(path)
        self.fail, self.retry_ok, self.reconnects, self.seen = fail, retryable, 0, []

    def _retryable(self, exc: BaseException) -> bool:
        self.seen.append(exc)
        return self.retry_ok and isinstance(exc, ConnectionError)

    def _reconnect(self) -> None:
        self.reconnects += 1


def test_a_lost_connection_runs_the_transaction_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(index_mod.time, "sleep", sleeps.append)
    ix = Flaky(tmp_path / "i.sqlite", fail=3)
    calls = []

    def write() -> str:
        calls.append(1)
        ix._run("INSERT INTO index_meta VALUES (?, ?)", (f"k{len(calls)}", "v"))
        if len(calls) <= ix.fail:
            raise ConnectionError("server closed the connection")
        return "done"

    assert ix.atomic(write, stamp=False) == "done"
    assert len(calls) == 4 and ix.reconnects == 3
    assert sleeps == [0.2, 0.4, 0.8]
    # Only the last attempt's write was committed; the failed ones were rolled back.
    assert ix.meta("k4") == "v" and ix.meta("k1") is None and ix.meta("k3") is None
    ix.close()


def test_retries_back_off_to_at_most_five_seconds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(index_mod.time, "sleep", sleeps.append)
    ix = Flaky(tmp_path / "i.sqlite", fail=8)

    def write() -> None:
        raise ConnectionError("lost")

    with pytest.raises(ConnectionError):
        ix.atomic(write, attempts=8)
    assert sleeps == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert ix.reconnects == 7
    ix.close()


def test_retries_stop_after_the_attempts_and_raise_the_last_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_mod.time, "sleep", lambda s: None)
    ix = Flaky(tmp_path / "i.sqlite", fail=99)
    n = []

    def write() -> None:
        n.append(1)
        raise ConnectionError(f"lost {len(n)}")

    with pytest.raises(ConnectionError, match="lost 5"):
        ix.atomic(write)
    assert len(n) == 5 and ix.reconnects == 4
    ix.close()


def test_other_errors_are_never_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_mod.time, "sleep", lambda s: pytest.fail("slept"))
    ix = Flaky(tmp_path / "i.sqlite", fail=0)
    n = []

    def write() -> None:
        n.append(1)
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        ix.atomic(write)
    assert n == [1] and ix.reconnects == 0
    ix.close()


def test_a_store_error_is_retried_on_its_cause(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_mod.time, "sleep", lambda s: None)
    ix = Flaky(tmp_path / "i.sqlite", fail=0)
    n = []

    def write() -> str:
        n.append(1)
        if len(n) == 1:
            raise StoreError("the server went away", "restart", "retry") from ConnectionError("reset")
        return "ok"

    assert ix.atomic(write) == "ok"
    assert isinstance(ix.seen[0], ConnectionError)
    # A StoreError without a cause is judged as itself (not retryable here).
    with pytest.raises(StoreError):
        ix.atomic(lambda: (_ for _ in ()).throw(StoreError("x", "y", "z")))
    assert isinstance(ix.seen[-1], StoreError)
    ix.close()


def test_a_transaction_inside_another_is_joined_not_retried(tmp_path: Path) -> None:
    ix = Flaky(tmp_path / "i.sqlite", fail=0)
    with pytest.raises(ConnectionError), ix.write() as seq:
        assert seq is not None
        assert ix.atomic(lambda: ix._seq) == seq  # joins: the same sequence number
        ix.atomic(lambda: (_ for _ in ()).throw(ConnectionError("lost")))
    assert ix.reconnects == 0
    ix.close()


def test_a_nested_stamped_write_takes_a_sequence_number_in_an_unstamped_one(ix: SQLiteIndex) -> None:
    start = ix.max_seq()
    with ix.write(stamp=False) as outer:
        assert outer is None
        with ix.write() as inner:
            assert inner == start + 1
        with ix.write() as again:
            assert again == inner  # one number per transaction
    assert ix.max_seq() == start + 1
    with ix.write(stamp=False):
        pass
    assert ix.max_seq() == start + 1


def test_a_read_is_tried_once_more_after_a_lost_connection(tmp_path: Path) -> None:
    ix = Flaky(tmp_path / "i.sqlite", fail=0)
    n = []

    def read() -> int:
        n.append(1)
        if len(n) == 1:
            raise ConnectionError("lost")
        return 42

    assert ix._read(read) == 42 and ix.reconnects == 1
    n.clear()
    with pytest.raises(ConnectionError):  # twice lost: the error is raised
        ix._read(lambda: (n.append(1), (_ for _ in ()).throw(ConnectionError("lost")))[1])
    with pytest.raises(ConnectionError), ix.write():  # inside a transaction: never retried
        ix._read(lambda: (_ for _ in ()).throw(ConnectionError("lost")))
    assert ix.reconnects == 2
    ix.close()


# --------------------------------------------------------------------- leases, metadata, adoption


def test_a_threads_next_restore_lease_replaces_its_last(ix: SQLiteIndex) -> None:
    ix.lease_restoring([("sha256:a", "file"), ("sha256:b", "dir")])
    [first] = {r["taken_at"] for r in ix.query("SELECT taken_at FROM lease")}
    rows = ix.query("SELECT hash, kind, run_id, host, pid, thread FROM lease ORDER BY hash")
    assert rows == [
        {"hash": "sha256:a", "kind": "file", "run_id": None, "host": HOST, "pid": os.getpid(),
         "thread": threading.get_ident()},
        {"hash": "sha256:b", "kind": "dir", "run_id": None, "host": HOST, "pid": os.getpid(),
         "thread": threading.get_ident()},
    ]  # fmt: skip
    assert first > time.time() - 5
    ix.lease_restoring([])  # nothing to restore: the lease is kept
    assert len(ix.query("SELECT * FROM lease")) == 2
    ix.lease_restoring([("sha256:c", "file")])
    assert [r["hash"] for r in ix.query("SELECT hash FROM lease")] == ["sha256:c"]
    ix.end_restore_lease()
    assert ix.query("SELECT * FROM lease") == []


def test_a_written_lease_registers_the_object_and_holds_the_run(ix: SQLiteIndex) -> None:
    seq = ix.max_seq()
    ix.lease_written("r", "sha256:x", "file", "/store", 12)
    assert ix.object_stores("sha256:x") == ["/store"]
    [lease] = ix.query("SELECT * FROM lease")
    assert (lease["hash"], lease["kind"], lease["run_id"], lease["host"], lease["pid"], lease["thread"]) == (
        "sha256:x", "file", "r", HOST, os.getpid(), None,
    )  # fmt: skip
    assert ix.max_seq() == seq


def test_restore_leases_expire(ix: SQLiteIndex) -> None:
    ix.lease_restoring([("sha256:a", "file")])
    live, ended = ix.leases()
    assert [r["hash"] for r in live] == ["sha256:a"] and ended == []
    live, ended = ix.leases(now=time.time() + RESTORE_LEASE_S + 1)
    assert live == [] and len(ended) == 1


def test_metadata_is_set_read_and_replaced(ix: SQLiteIndex) -> None:
    assert ix.meta("k") is None and ix.merged_seq() is None
    ix.set_meta("k", "1")
    ix.set_meta("k", "2")
    ix.set_meta("merged_seq", "17")
    assert ix.meta("k") == "2" and ix.merged_seq() == 17
    assert ix.max_seq() == 0  # metadata takes no sequence number


def test_the_generation_is_made_once_and_kept(tmp_path: Path) -> None:
    a = SQLiteIndex(tmp_path / "i.sqlite")
    b = SQLiteIndex(tmp_path / "i.sqlite")
    assert len(a.generation) == 32 and a.generation == b.generation == a._generation()
    assert SQLiteIndex(tmp_path / "j.sqlite").generation != a.generation
    a.close()
    b.close()


def test_adopted_rows_never_replace_rows_written_here(ix: SQLiteIndex) -> None:
    ix.upsert_run(run_row("own", name="written here"))
    counts = ix.adopt(
        [run_row("own", name="from duckdb"), run_row("copied", name="v1")],
        [art_row("a1")],
        [{"run_id": "copied", "artifact_id": "a1", "direction": "output", "key": "out"}],
    )
    assert counts == {"run": 1, "artifact": 1, "run_artifact": 1}
    assert ix.run("own")["name"] == "written here"
    assert ix.run("copied")["seq"] == 0 and ix.run("copied")["name"] == "v1"
    counts = ix.adopt([run_row("copied", name="v2")], [], [])
    assert counts == {"run": 1, "artifact": 0, "run_artifact": 0}
    assert ix.run("copied")["name"] == "v2"  # a copied row is refreshed
    assert [r["link_key"] for r in ix.links_of("copied")] == ["out"]
    assert ix.max_seq() == 1


# --------------------------------------------------------------------- what the index says and refuses


def test_bookkeeping_writes_take_no_sequence_number(ix: SQLiteIndex) -> None:
    ix.add_object("sha256:a", "/store", 1)
    ix.register_objects([("sha256:b", "/store", 2)])
    ix.drop_objects([("sha256:a", "/store")])
    ix.lease_written("r", "sha256:c", "file", "/store", 3)
    ix.lease_restoring([("sha256:d", "file")])
    ix.end_restore_lease()
    ix.try_claim("sig", "r")
    ix.beat()
    ix.release_claim("sig", "r")
    assert ix.max_seq() == 0
    assert ix.object_stores("sha256:a") == [] and ix.object_stores("sha256:b") == ["/store"]


def test_an_embedded_index_never_retries_a_failed_transaction(ix: SQLiteIndex) -> None:
    n = []

    def write() -> None:
        n.append(1)
        raise ConnectionError("lost")

    with pytest.raises(ConnectionError):
        ix.atomic(write)
    assert n == [1]
    assert index_mod.RunIndex()._retryable(ConnectionError()) is False


def test_a_newer_index_is_refused_saying_what_to_do(tmp_path: Path) -> None:
    err = index_mod.no_such_schema("/data/index.sqlite", 9, 4)
    assert str(err) == (
        "The run index /data/index.sqlite has schema version 9; this consist understands up to 4. "
        "Likely cause: a newer consist wrote this database. "
        "Fix: upgrade consist (pip install -U consist) on every machine that uses it."
    )


def test_a_read_only_index_that_is_missing_or_unreadable_says_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / ".p.duckdb.consist" / "index.sqlite"
    with pytest.raises(StoreError) as err:
        SQLiteIndex(path, read_only=True)
    assert str(err.value) == (
        f"There is no run index at {path}. "
        "Likely cause: no tracker has recorded a run with this database yet, or the path is wrong. "
        "Fix: pass the DuckDB file the trackers use (its index is the hidden folder beside it)."
    )
    path.parent.mkdir()
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(StoreError) as err:
        SQLiteIndex(path, read_only=True)
    text = str(err.value)
    assert text.startswith(f"Cannot read the run index {path}: file is not a database. ")
    assert "Likely cause: the file is damaged, is not a consist index, or this user may not read it. " in text
    assert text.endswith(
        "Fix: check its permissions; a damaged index is rebuilt by "
        f"consist.store.rebuild_index({str(tmp_path / 'p.duckdb')!r})."
    )
    assert isinstance(err.value.__cause__, Exception)


def test_a_read_only_index_of_a_newer_version_names_both_versions(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    SQLiteIndex(path).close()
    import sqlite3

    con = sqlite3.connect(path)
    con.execute("PRAGMA user_version = 99")
    con.close()
    with pytest.raises(
        StoreError, match=f"{path} has schema version 99; this consist understands up to {SCHEMA_VERSION}"
    ):
        SQLiteIndex(path, read_only=True)


def test_a_read_only_index_is_read_from_other_threads_and_waits_for_writers(tmp_path: Path) -> None:
    """The web view reads one index from a pool of threads, while trackers write to it."""
    path = tmp_path / "index.sqlite"
    writer = SQLiteIndex(path)
    writer.upsert_run(run_row("r1"))
    reader = SQLiteIndex(path, read_only=True)
    assert reader.query_one("PRAGMA busy_timeout")["timeout"] == 60000
    seen: list = []
    t = threading.Thread(target=lambda: seen.append(reader.run("r1")["id"]))
    t.start()
    t.join()
    assert seen == ["r1"]
    reader.close()
    writer.close()


def test_a_read_only_index_without_a_generation_has_an_empty_one(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    SQLiteIndex(path).close()
    import sqlite3

    con = sqlite3.connect(path)
    con.execute("DELETE FROM index_meta")
    con.commit()
    con.close()
    assert SQLiteIndex(path, read_only=True).generation == ""


def test_every_use_of_a_closed_index_says_what_to_do(tmp_path: Path) -> None:
    index = SQLiteIndex(tmp_path / "i.sqlite")
    index.close()
    index.close()  # closing twice is harmless
    for use in (lambda: index.run("x"), lambda: index.upsert_run(run_row("x")), index.max_seq):
        with pytest.raises(consist_errors.RunStateError) as err:
            use()
        assert str(err.value) == (
            "This Tracker is closed. Likely cause: close() ran, or its `with` block ended, before this call. "
            "Fix: open a new Tracker on the same run_dir and database; past runs and cached outputs "
            "are kept."
        )


def test_an_upgrade_script_is_split_into_whole_statements() -> None:
    from consist.store.sqlite import _statements

    script = """
    CREATE TABLE a (x);
    CREATE TRIGGER t AFTER INSERT ON a BEGIN INSERT INTO b VALUES (1); INSERT INTO b VALUES (2); END;
    ;
    CREATE INDEX i ON a (x)
    """
    got = list(_statements(script))
    assert got == [
        "CREATE TABLE a (x);",
        "CREATE TRIGGER t AFTER INSERT ON a BEGIN INSERT INTO b VALUES (1); INSERT INTO b VALUES (2); END;",
        "CREATE INDEX i ON a (x)\n    ;",
    ]


def test_an_index_knows_where_it_is_and_names_it_when_refusing_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    ix = SQLiteIndex(path)
    assert ix.location == str(path) and ix.path == path
    ix.close()
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 3}")
    con.close()
    with pytest.raises(StoreError, match=f"The run index {path} has schema version {SCHEMA_VERSION + 3}"):
        SQLiteIndex(path)


def test_reaping_goes_past_runs_it_cannot_judge(ix: SQLiteIndex) -> None:
    """Runs without a process id, or of another host without heartbeats, come first here: the rest are reaped."""
    running(ix, "a-no-pid", HOST, None, None)
    running(ix, "b-old-consist-there", "elsewhere", 7, None)
    running(ix, "c-ended-here", HOST, dead_pid(), time.time())
    assert ix.reap_interrupted() == ["c-ended-here"]


def test_switching_a_new_index_to_wal_waits_for_a_lock_then_gives_up_clearly(tmp_path: Path) -> None:
    from consist.store.sqlite import _switch_to_wal

    path = tmp_path / "new.sqlite"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE x (a)")
    holder.execute("BEGIN EXCLUSIVE")  # another process creating the index holds the file
    db = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
    db.row_factory = lambda cur, row: {d[0]: v for d, v in zip(cur.description, row)}
    started = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="could not switch to WAL within 0 s"):
        _switch_to_wal(db, wait_s=0.3)
    assert 0.3 <= time.monotonic() - started < 5  # it tried again until the deadline, no longer
    releaser = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
    releaser.start()
    _switch_to_wal(db, wait_s=10)  # the holder lets go: the switch succeeds
    releaser.join()
    assert db.execute("PRAGMA journal_mode").fetchone()["journal_mode"] == "wal"
    db.close()
    holder.close()
    broken = sqlite3.connect(":memory:")
    broken.close()
    with pytest.raises(sqlite3.ProgrammingError):  # anything but a lock is raised at once
        _switch_to_wal(broken, wait_s=10)
