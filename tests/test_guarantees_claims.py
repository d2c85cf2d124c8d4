"""Guarantees of the run index's liveness bookkeeping: claims, heartbeats, reaping, retries.

One execution per signature rests on claims; interrupted runs are found through
heartbeats; a lost connection is survived by running a transaction again. The
multi-process and PostgreSQL tests show these end to end; these tests check each
rule in one process against a real SQLite index, so that a wrong comparison or a
missing row is caught directly.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import consist.errors as consist_errors
import consist.store.index as index_mod
from consist.errors import StoreError
from consist.store.columns import HOST, RESTORE_LEASE_S
from consist.store.sqlite import SQLiteIndex
from test_guarantees_index import art_row, run_row


@pytest.fixture
def ix(tmp_path: Path):
    index = SQLiteIndex(tmp_path / "index.sqlite")
    yield index
    index.close()


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
    with pytest.raises(StoreError, match=f"{path} has schema version 99; this consist understands up to 4"):
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
