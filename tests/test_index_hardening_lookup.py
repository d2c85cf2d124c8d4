"""A miss's lookup of earlier runs does not grow with the model's cache hits; older indexes upgrade in place.

Every miss explains itself with the newest executed runs of its model
(Index.recent_runs_of_model). Those are read through a partial index of
executed, completed runs, so however many hits the model has, the lookup reads
the same rows. Checked with SQLite's query plan and by counting the virtual
machine steps of the lookup (no timing). Schema 3 adds that index, the lease
table and the index metadata to a schema-2 index in place.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import duckdb

from consist.store.columns import RUN_COLUMNS
from consist.store.sqlite import SCHEMA_VERSION, SQLiteIndex, index_path_for

# The schema-2 index, as consist wrote it before schema 3.
_V2_DDL = """
CREATE TABLE counter (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL);
INSERT INTO counter VALUES (1, 0);
CREATE TABLE run (
    id TEXT PRIMARY KEY, name TEXT, model TEXT, status TEXT, parent_run_id TEXT,
    year INTEGER, iteration INTEGER, tags TEXT, signature TEXT, code_version TEXT,
    config_hash TEXT, input_hash TEXT, config TEXT, identity TEXT,
    cache_hit INTEGER, cache_source TEXT, cache_epoch INTEGER, error TEXT, meta TEXT,
    run_dir TEXT, pid INTEGER, host TEXT, started_at REAL, ended_at REAL,
    seq INTEGER NOT NULL);
CREATE INDEX run_by_signature ON run (signature, status, cache_hit, ended_at);
CREATE INDEX run_by_model ON run (model, ended_at);
CREATE INDEX run_by_status ON run (status);
CREATE INDEX run_by_seq ON run (seq);
CREATE INDEX run_by_parent ON run (parent_run_id);
CREATE TABLE artifact (
    id TEXT PRIMARY KEY, key TEXT, uri TEXT, hash TEXT, size INTEGER, kind TEXT,
    driver TEXT, run_id TEXT, created_at REAL, meta TEXT, seq INTEGER NOT NULL, location TEXT);
CREATE INDEX artifact_by_hash ON artifact (hash);
CREATE INDEX artifact_by_key ON artifact (key);
CREATE INDEX artifact_by_seq ON artifact (seq);
CREATE TABLE run_artifact (
    run_id TEXT NOT NULL, artifact_id TEXT NOT NULL, direction TEXT NOT NULL, key TEXT NOT NULL,
    seq INTEGER NOT NULL, PRIMARY KEY (run_id, direction, key));
CREATE INDEX link_by_artifact ON run_artifact (artifact_id);
CREATE INDEX link_by_seq ON run_artifact (seq);
CREATE TABLE object (hash TEXT NOT NULL, store TEXT NOT NULL, size INTEGER, PRIMARY KEY (hash, store));
CREATE TABLE hash_memo (
    dev INTEGER NOT NULL, ino INTEGER NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    algo TEXT NOT NULL, hash TEXT NOT NULL, PRIMARY KEY (dev, ino, size, mtime_ns, algo)) WITHOUT ROWID;
PRAGMA user_version = 2;
"""


def run_row(run_id: str, **kw: object) -> dict:
    row: dict = {c: None for c in RUN_COLUMNS}
    row.update(id=run_id, name=run_id, model="m", status="completed", signature=f"sig-{run_id}", cache_hit=0)
    row.update(kw)
    return row


def add_runs(ix: SQLiteIndex, rows: list[dict]) -> None:
    with ix.write():
        for row in rows:
            ix.upsert_run(row)


def lookup_sql(ix: SQLiteIndex, model: str) -> str:
    """The statement recent_runs_of_model() executes, with its parameters bound."""
    seen: list[str] = []
    ix._db.set_trace_callback(seen.append)
    try:
        ix.recent_runs_of_model(model)
    finally:
        ix._db.set_trace_callback(None)
    (sql,) = [s for s in seen if "FROM run" in s]
    return sql


def lookup_steps(ix: SQLiteIndex, model: str) -> int:
    """How many SQLite virtual-machine steps (in hundreds) the lookup takes."""
    count = [0]

    def tick() -> int:
        count[0] += 1
        return 0

    ix._db.set_progress_handler(tick, 100)
    try:
        ix.recent_runs_of_model(model)
    finally:
        ix._db.set_progress_handler(None, 0)
    return count[0]


def test_the_lookup_uses_the_index_of_executed_runs(tmp_path: Path) -> None:
    ix = SQLiteIndex(tmp_path / "index.sqlite")
    try:
        add_runs(ix, [run_row(f"p{i}", ended_at=float(i)) for i in range(10)])
        plan = [r["detail"] for r in ix.query("EXPLAIN QUERY PLAN " + lookup_sql(ix, "m"))]
        assert plan == ["SEARCH run USING INDEX run_producers_by_model (model=?)"], plan
        ddl = ix.query_one("SELECT sql FROM sqlite_master WHERE name = 'run_producers_by_model'")["sql"]
        assert "WHERE cache_hit = 0 AND status = 'completed'" in ddl
    finally:
        ix.close()


def test_the_lookup_reads_as_much_with_40000_hits_as_with_none(tmp_path: Path) -> None:
    ix = SQLiteIndex(tmp_path / "index.sqlite")
    try:
        add_runs(ix, [run_row(f"p{i}", ended_at=float(i)) for i in range(60)])  # more than the 50 it returns
        add_runs(ix, [run_row(f"x{i}", model="other", ended_at=1e6 + i) for i in range(500)])
        before = lookup_steps(ix, "m")
        expected = [r["id"] for r in ix.recent_runs_of_model("m")]
        # 40,000 hits of the same model, all newer than every executed run, and a few failures.
        add_runs(ix, [run_row(f"h{i}", cache_hit=1, cache_source="p59", ended_at=1e3 + i) for i in range(40_000)])
        add_runs(ix, [run_row(f"f{i}", status="failed", ended_at=1e5 + i) for i in range(100)])
        after = lookup_steps(ix, "m")
        assert ix.recent_runs_of_model("m") and [r["id"] for r in ix.recent_runs_of_model("m")] == expected
        assert after <= before + 2, (before, after)  # flat, not growing with the hits
    finally:
        ix.close()


def test_a_schema_2_index_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    con = sqlite3.connect(path)
    con.executescript(_V2_DDL)
    cols = ",".join(RUN_COLUMNS)
    for i, hit in enumerate([0, 1, 0]):
        row = run_row(f"r{i}", cache_hit=hit, ended_at=float(i))
        con.execute(f"INSERT INTO run ({cols}, seq) VALUES ({','.join('?' * len(RUN_COLUMNS))}, ?)",
                    [row[c] for c in RUN_COLUMNS] + [i + 1])  # fmt: skip
    con.execute("UPDATE counter SET seq = 3")
    con.commit()
    con.close()

    ix = SQLiteIndex(path)
    try:
        assert ix.query_one("PRAGMA user_version")["user_version"] == SCHEMA_VERSION == 5
        names = {r["name"] for r in ix.query("SELECT name FROM sqlite_master")}
        assert {"index_meta", "lease", "lease_by_run", "run_producers_by_model"} <= names
        assert len(ix.generation) == 32 and int(ix.generation, 16) >= 0
        assert [r["id"] for r in ix.recent_runs_of_model("m")] == ["r2", "r0"]  # rows kept
        assert ix.max_seq() == 3 and ix.merged_seq() is None
        assert "run_producers_by_model" in ix.query("EXPLAIN QUERY PLAN " + lookup_sql(ix, "m"))[0]["detail"]
    finally:
        ix.close()
    again = SQLiteIndex(path)
    try:
        assert again.generation == ix.generation  # upgraded once; the id stays
    finally:
        again.close()


def test_a_duckdb_file_merged_before_the_upgrade_is_reconciled_once(tmp_path: Path, make_tracker) -> None:
    t = make_tracker(code_version="v1")
    for n in range(5):
        t.run(lambda n: None, name="s", config={"n": n})
    t.close()
    db = tmp_path / "provenance.duckdb"
    # Turn both files into what the previous consist left: no generation, no merge position in the index.
    con = duckdb.connect(str(db))
    con.execute("DROP TABLE consist_index")
    con.execute("UPDATE consist_meta SET value = 2 WHERE key = 'schema_version'")
    con.close()
    sq = sqlite3.connect(index_path_for(db))
    sq.executescript(
        "DROP TABLE index_meta; DROP TABLE lease; DROP INDEX run_producers_by_model; PRAGMA user_version = 2;"
    )
    sq.close()

    t = make_tracker(code_version="v1")  # upgrades the index, then reconciles with the DuckDB file
    assert t._index.merged_seq() == t._index.max_seq()
    assert len(t.find_runs(limit=None)) == 5
    t.run(lambda n: None, name="s", config={"n": 5})
    assert 0 < t.sync() <= 3  # incremental again
    assert len(t.find_runs(limit=None)) == 6
