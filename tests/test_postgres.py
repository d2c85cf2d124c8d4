"""The PostgreSQL store on a real server: cross-node hits, many writers, one execution per
identical run, interrupted runs, schema versions, lost connections and exports."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import duckdb
import pytest

import consist
from consist import Tracker
from consist.errors import StoreError
from engines import need
from scaleout import fresh_pg_database

WORKER = Path(__file__).with_name("cluster_worker.py")


@pytest.fixture
def pg(request: pytest.FixtureRequest) -> str:
    need("postgres")
    return fresh_pg_database(f"t_{uuid.uuid4().hex[:12]}")


def _psql(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as con:
        cur = con.execute(sql, params)
        return cur.fetchall() if cur.description else []


def write_table(path: str) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("zone,trips\n1,10\n2,20\n")
    return p


def test_a_run_on_one_node_is_a_hit_on_another_and_restores_there(pg: str, tmp_path: Path) -> None:
    store = tmp_path / "shared" / "objects"
    calls = []

    def step(out: str) -> Path:
        calls.append(out)
        return write_table(out)

    with Tracker(tmp_path / "node_a", db_url=pg, store_dir=store, code_version="v1") as a:
        first = a.run(step, config={"out": str(tmp_path / "node_a" / "trips.csv")}, outputs=["trips"], tags=["base"])
    assert not first.cache_hit
    with Tracker(tmp_path / "node_b", db_url=pg, store_dir=store, code_version="v1") as b:
        second = b.run(step, config={"out": str(tmp_path / "node_a" / "trips.csv")}, outputs=["trips"])
        assert second.cache_hit and second.cache_source == first.run_id
        assert len(calls) == 1
        # Queries read PostgreSQL directly: history, find_runs by tag, the guide's Session + select(Run), load_df.
        hist = b.history()
        assert list(hist["id"]) == [second.run_id, first.run_id]
        assert [r.id for r in b.find_runs(tags=["base"])] == [first.run_id]
        from sqlmodel import Session, select

        from consist.models import Run

        with Session(b.engine) as s:
            rows = {r.id: r for r in s.exec(select(Run))}
        assert rows[second.run_id].cache_hit is True and rows[first.run_id].cache_hit is False
        assert rows[first.run_id].config == {"out": str(tmp_path / "node_a" / "trips.csv")}
        started = rows[first.run_id].started_at
        assert started is not None and started.utcoffset() in (None, dt.timedelta(0))  # UTC, as with DuckDB
        assert abs(started.replace(tzinfo=dt.UTC).timestamp() - time.time()) < 120
        assert list(consist.load_df(second.output)["trips"]) == [10, 20]
    # Nothing was written beside either run_dir: there is no DuckDB file with a PostgreSQL store.
    assert not (tmp_path / "node_a" / "provenance.duckdb").exists()
    assert not (tmp_path / "node_b" / "provenance.duckdb").exists()


def test_a_hit_on_another_node_restores_into_that_nodes_workspace(pg: str, tmp_path: Path) -> None:
    store = tmp_path / "shared"

    def step() -> Path:
        return write_table("out/trips.csv")  # relative: inside the node's run_dir

    for node in ("a", "b"):
        (tmp_path / node).mkdir()
    os.chdir(tmp_path / "a")
    with Tracker(tmp_path / "a", db_url=pg, store_dir=store, code_version="v1") as a:
        first = a.run(step, outputs=["trips"])
    os.chdir(tmp_path / "b")
    with Tracker(tmp_path / "b", db_url=pg, store_dir=store, code_version="v1") as b:
        hit = b.run(step, outputs=["trips"])
    assert hit.cache_hit and hit.cache_source == first.run_id
    assert hit.output_path("trips") == tmp_path / "b" / "out" / "trips.csv"
    assert (tmp_path / "b" / "out" / "trips.csv").read_text() == "zone,trips\n1,10\n2,20\n"


def test_four_processes_record_25_runs_each_and_nothing_is_lost(pg: str, tmp_path: Path) -> None:
    store = tmp_path / "objects"
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), "many", pg, str(tmp_path / f"w{w}"), str(store), str(w)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(4)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    ids = [r["id"] for out, _ in outs for r in json.loads(out)]
    assert len(ids) == len(set(ids)) == 100
    rows = _psql(pg, "SELECT id, status, cache_hit FROM consist.run")
    assert sorted(r[0] for r in rows) == sorted(ids)
    assert {(r[1], r[2]) for r in rows} == {("completed", False)}
    links = _psql(pg, "SELECT count(*) FROM consist.run_artifact WHERE direction = 'output'")
    assert links[0][0] == 100
    assert _psql(pg, "SELECT count(*) FROM consist_index.claim")[0][0] == 0
    assert _psql(pg, "SELECT count(*) FROM consist_index.heartbeat")[0][0] == 0


@pytest.mark.parametrize("backend", ["postgresql", "embedded"])
def test_four_processes_starting_one_identical_run_execute_it_once(backend: str, tmp_path: Path) -> None:
    db = fresh_pg_database(f"t_{uuid.uuid4().hex[:12]}") if backend == "postgresql" else str(tmp_path / "p.duckdb")
    if backend == "postgresql":
        need("postgres")
    store = tmp_path / "shared" / "objects"
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), "slow", db, str(tmp_path / f"w{w}"), str(store), str(w)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(4)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results += json.loads(out)
    executions = (tmp_path / "shared" / "executions.log").read_text().split()
    assert len(executions) == 1
    executed = [r for r in results if not r["hit"]]
    assert len(executed) == 1
    hits = [r for r in results if r["hit"]]
    assert len(hits) == 3
    assert {r["source"] for r in hits} == {executed[0]["id"]}
    # The waiters say whom they waited for (a worker that started after the execution ended just hit).
    assert {r["waited"] for r in hits} <= {executed[0]["id"], None}
    assert any(r["waited"] == executed[0]["id"] for r in hits)


def test_a_killed_holder_is_taken_over_and_its_run_marked_interrupted(pg: str, tmp_path: Path) -> None:
    store = tmp_path / "shared" / "objects"
    log = tmp_path / "shared" / "executions.log"
    holder = subprocess.Popen(
        [sys.executable, str(WORKER), "hang", pg, str(tmp_path / "w0"), str(store), "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (log.exists() and log.read_text().strip()):
        assert time.monotonic() < deadline and holder.poll() is None, holder.stderr.read() if holder.stderr else ""
        time.sleep(0.1)
    waiter = subprocess.Popen(
        [sys.executable, str(WORKER), "slow", pg, str(tmp_path / "w1"), str(store), "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(2.0)  # the waiter is waiting: the holder's process is alive
    assert waiter.poll() is None
    assert len(log.read_text().split()) == 1
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait()
    out, err = waiter.communicate(timeout=120)
    assert waiter.returncode == 0, err
    (result,) = json.loads(out)
    assert result["hit"] is False  # it took the claim over and executed
    assert len(log.read_text().split()) == 2
    statuses = dict(_psql(pg, "SELECT status, count(*) FROM consist.run GROUP BY status"))
    assert statuses == {"interrupted": 1, "completed": 1}
    (error,) = _psql(pg, "SELECT error FROM consist.run WHERE status = 'interrupted'")
    assert f"process {holder.pid} ended" in error[0]


def test_a_claim_of_a_silent_node_expires_then_a_waiter_executes(
    pg: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import consist.store.index as index_mod

    monkeypatch.setattr(index_mod, "EXPIRY_S", 1.5)
    calls = []

    def step() -> Path:
        calls.append(1)
        return write_table("out.csv")

    os.chdir(tmp_path)
    with Tracker(tmp_path / "rd", db_url=pg, code_version="v1") as t:
        plan_sig = _signature_of(t, step)
        # Another node holds the claim and has just sent a heartbeat; then it goes silent.
        t._index.execute(
            "INSERT INTO claim VALUES (?, ?, ?, ?, ?)", (plan_sig, "node-b-run", "node-b", 4242, time.time())
        )
        started = time.monotonic()
        r = t.run(step, outputs=["out"])
        waited = time.monotonic() - started
    assert not r.cache_hit and calls == [1]
    assert r.waited_for == "node-b-run"
    assert waited >= 1.0  # it waited for the expiry, not less


def test_overwrite_does_not_wait_for_a_claim(pg: str, tmp_path: Path) -> None:
    os.chdir(tmp_path)

    def step() -> Path:
        return write_table("out.csv")

    with Tracker(tmp_path / "rd", db_url=pg, code_version="v1") as t:
        sig = _signature_of(t, step)
        t._index.execute("INSERT INTO claim VALUES (?, ?, ?, ?, ?)", (sig, "other", "node-b", 1, time.time()))
        started = time.monotonic()
        r = t.run(step, outputs=["out"], cache_mode="overwrite")
        assert time.monotonic() - started < 5 and not r.cache_hit and r.waited_for is None


def _signature_of(t: Tracker, fn: object) -> str:
    plan = t._plan(fn=fn, source=None, name="step", model="step", config=None, inputs=None, year=None,  # type: ignore[arg-type]
                   iteration=None, cache_mode="reuse", code_version=None)  # fmt: skip
    return plan.signature


def test_a_run_of_another_host_is_interrupted_only_when_its_heartbeat_stops(
    pg: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import consist.store.index as index_mod

    monkeypatch.setattr(index_mod, "EXPIRY_S", 30.0)
    with Tracker(tmp_path / "a", db_url=pg, code_version="v1") as t:
        cols = "id, name, model, status, pid, host, started_at, cache_hit, seq"
        now = time.time()
        for run_id, beat in (("silent", now - 120), ("alive", now - 5)):
            t._index.execute(f"INSERT INTO run ({cols}) VALUES (?, ?, ?, 'running', ?, ?, ?, 0, 1)",
                             (run_id, run_id, "m", os.getpid(), "node-b", now - 200))  # fmt: skip
            t._index.execute("INSERT INTO heartbeat VALUES (?, ?, ?, ?)", (run_id, "node-b", os.getpid(), beat))
    # The same pid on another node says nothing about this host's processes: only heartbeats count.
    with Tracker(tmp_path / "b", db_url=pg, code_version="v1") as t2:
        silent, alive = t2.get_run("silent"), t2.get_run("alive")
    assert silent is not None and silent.status == "interrupted"
    assert "no heartbeat from node-b" in (silent.error or "")
    assert alive is not None and alive.status == "running"


def test_a_newer_schema_is_refused_with_what_to_do(pg: str, tmp_path: Path) -> None:
    Tracker(tmp_path / "a", db_url=pg).close()
    _psql(pg, "INSERT INTO consist_index.schema_version VALUES (99, 0)")
    with pytest.raises(StoreError) as err:
        Tracker(tmp_path / "b", db_url=pg)
    assert "schema version 99" in str(err.value) and "pip install -U consist" in str(err.value)
    assert ":consist@" not in str(err.value)  # the password is never shown


def test_two_trackers_creating_the_schema_at_once_both_succeed(pg: str, tmp_path: Path) -> None:
    procs = [
        subprocess.Popen([sys.executable, "-c", f"from consist import Tracker; Tracker({str(tmp_path / str(i))!r}, "
                          f"db_url={pg!r}).close()"], stderr=subprocess.PIPE, text=True)
        for i in range(4)
    ]  # fmt: skip
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert _psql(pg, "SELECT version FROM consist_index.schema_version ORDER BY version") == [(1,), (2,)]


def test_a_lost_connection_mid_run_is_retried_and_the_run_recorded_whole(pg: str, tmp_path: Path) -> None:
    os.chdir(tmp_path)
    admin = pg

    def step() -> Path:
        # The server drops every connection of this database while the step runs.
        dropped = _psql(
            admin,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        assert dropped, "no consist connection was open"
        return write_table("out.csv")

    with Tracker(tmp_path / "rd", db_url=pg, code_version="v1") as t:
        before = t._index._conn
        r = t.run(step, outputs=["out"])
        assert t._index._conn is not before and before.closed  # the write found the connection gone
        run = t.get_run(r.run_id)
        assert run is not None and run.status == "completed"
        assert set(t.get_artifacts_for_run(r.run_id).outputs) == {"out"}
        again = t.run(step, outputs=["out"])
        assert again.cache_hit


def test_export_duckdb_writes_the_whole_history_and_never_overwrites(pg: str, tmp_path: Path) -> None:
    os.chdir(tmp_path)
    with Tracker(tmp_path / "rd", db_url=pg, code_version="v1") as t:
        for n in range(3):
            t.run(write_table, name="make", config={"path": f"t{n}.csv"}, outputs=["table"], tags=["x"])
        t.run(write_table, name="make", config={"path": "t0.csv"}, outputs=["table"])
        out = tmp_path / "export" / "history.duckdb"
        counts = t.export_duckdb(out)
        assert counts == {"runs": 4, "artifacts": 3, "links": 4}
        with pytest.raises(StoreError, match="the file exists"):
            t.export_duckdb(out)
    con = duckdb.connect(str(out), read_only=True)
    assert con.execute("SELECT count(*), sum(CAST(cache_hit AS INT)) FROM run").fetchone() == (4, 1)
    assert con.execute("SELECT count(*) FROM run WHERE list_contains(CAST(tags AS VARCHAR[]), 'x')").fetchone() == (3,)
    con.close()
    assert not [p for p in out.parent.iterdir() if p.name != "history.duckdb"]  # no temporary left
    # The export is a DuckDB file a tracker can open: its runs are hits there too.
    with Tracker(tmp_path / "rd", db_path=out, code_version="v1") as offline:
        assert offline.run(write_table, name="make", config={"path": "t1.csv"}, outputs=["table"]).cache_hit


def test_a_wrong_password_names_the_server_never_the_password(pg: str, tmp_path: Path) -> None:
    bad = pg.replace(":consist@", ":s3cret-wrong@")
    with pytest.raises(StoreError) as err:
        Tracker(tmp_path, db_url=bad)
    text = str(err.value)
    assert "s3cret-wrong" not in text and "127.0.0.1" in text and "check the URL" in text


def test_an_unsupported_db_url_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="Unsupported db_url mysql://"):
        Tracker(tmp_path, db_url="mysql://u:p@h/db")


def test_consist_db_url_in_the_environment_selects_postgresql(
    pg: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSIST_DB_URL", pg)
    os.chdir(tmp_path)
    with Tracker(tmp_path / "rd", code_version="v1") as t:
        r = t.run(write_table, config={"path": "a.csv"}, outputs=["t"])
    assert _psql(pg, "SELECT id FROM consist.run") == [(r.run_id,)]


def test_prune_store_on_postgresql_keeps_what_completed_runs_need(pg: str, tmp_path: Path) -> None:
    os.chdir(tmp_path)
    store = tmp_path / "objects"

    def make(text: str, fail: bool) -> Path:
        p = Path(f"{text}.txt")
        p.write_text(text * 100)
        if fail:
            raise RuntimeError("failed after writing")
        return p

    with Tracker(tmp_path / "rd", db_url=pg, store_dir=store, code_version="v1") as t:
        t.run(make, config={"text": "kept", "fail": False}, outputs=["o"])
        before = {p.name for p in store.rglob("*") if p.is_file()}
        # An object no completed run references: stored by hand, as a failed run's output would be.
        orphan = tmp_path / "orphan.bin"
        orphan.write_bytes(b"orphan" * 100)
        from consist.hashing import FileHasher

        digest, _size = t._objects.put_file(orphan, FileHasher(t._index))
        assert t.prune_store(dry_run=True)["removed"] == 1 and t._objects.has(digest)
        report = t.prune_store()
        assert report["removed"] == 1 and not t._objects.has(digest)
        assert {p.name for p in store.rglob("*") if p.is_file()} == before
        (tmp_path / "kept.txt").unlink()
        assert t.run(make, config={"text": "kept", "fail": False}, outputs=["o"]).cache_hit
        assert (tmp_path / "kept.txt").read_text() == "kept" * 100
