"""The DuckDB provenance database and its sync from the run index.

The DuckDB file holds every run, artifact and link for SQL queries
(``Session(tracker.engine)``, :meth:`Tracker.history`, DuckDB's own CLI). Trackers
write to the run index first (:mod:`consist.index`); this module merges index
rows into DuckDB in sequence order. Only one process may open a DuckDB file for
writing, so a merge takes a file lock, opens the database, applies all rows not
yet merged in one transaction, and closes it again at once, leaving the file
free for the next process. Merges happen when a tracker closes (and at
interpreter exit) and before every query, so a query always sees every run
completed so far by any process. A merge that cannot get the file (another
program keeps it open) leaves the rows in the index for a later merge: nothing
is lost.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import StoreError, StoreLockedError
from .index import ARTIFACT_COLUMNS, LINK_COLUMNS, RUN_COLUMNS, Index

DUCK_SCHEMA_VERSION = 2

_DUCK_DDL = """
CREATE TABLE IF NOT EXISTS consist_meta (key VARCHAR PRIMARY KEY, value BIGINT);
CREATE TABLE IF NOT EXISTS run (
    id VARCHAR PRIMARY KEY, name VARCHAR, model VARCHAR, status VARCHAR, parent_run_id VARCHAR,
    year INTEGER, iteration INTEGER, tags JSON, signature VARCHAR, code_version VARCHAR,
    config_hash VARCHAR, input_hash VARCHAR, config JSON, identity JSON,
    cache_hit BOOLEAN, cache_source VARCHAR, cache_epoch INTEGER, error VARCHAR, meta JSON,
    run_dir VARCHAR, pid INTEGER, host VARCHAR, started_at TIMESTAMP, ended_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS artifact (
    id VARCHAR PRIMARY KEY, key VARCHAR, uri VARCHAR, hash VARCHAR, size BIGINT, kind VARCHAR,
    driver VARCHAR, run_id VARCHAR, created_at TIMESTAMP, meta JSON, location VARCHAR);
ALTER TABLE artifact ADD COLUMN IF NOT EXISTS location VARCHAR;
CREATE TABLE IF NOT EXISTS run_artifact (
    run_id VARCHAR, artifact_id VARCHAR, direction VARCHAR, key VARCHAR,
    PRIMARY KEY (run_id, direction, key));
"""

_TS_RUN = (RUN_COLUMNS.index("started_at"), RUN_COLUMNS.index("ended_at"))
_BOOL_RUN = RUN_COLUMNS.index("cache_hit")
_TS_ART = ARTIFACT_COLUMNS.index("created_at")


def _ts(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    return dt.datetime.fromtimestamp(float(value), dt.UTC).replace(tzinfo=None)


def _run_tuple(row: dict[str, Any]) -> tuple[Any, ...]:
    vals = [row.get(c) for c in RUN_COLUMNS]
    for i in _TS_RUN:
        vals[i] = _ts(vals[i])
    vals[_BOOL_RUN] = bool(vals[_BOOL_RUN])
    return tuple(vals)


def _art_tuple(row: dict[str, Any]) -> tuple[Any, ...]:
    vals = [row.get(c) for c in ARTIFACT_COLUMNS]
    vals[_TS_ART] = _ts(vals[_TS_ART])
    return tuple(vals)


class DuckStore:
    """The DuckDB file of a tracker, merged from its run index on demand."""

    def __init__(self, db_path: Path, index: Index, lock_timeout: float = 120.0) -> None:
        self.db_path = db_path
        self.index = index
        self.lock_path = index.path.parent / "duckdb.lock"
        self.lock_timeout = lock_timeout
        self._engine: Any = None
        self._synced_seq = -1

    # ---------------------------------------------------------------- connections

    def _connect(self, timeout: float | None = None) -> Any:
        import duckdb

        deadline = time.monotonic() + (self.lock_timeout if timeout is None else timeout)
        delay = 0.01
        while True:
            try:
                return duckdb.connect(str(self.db_path))
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise StoreLockedError(
                        f"Cannot open the provenance database {self.db_path}: {exc}",
                        "another program (a DuckDB shell, a notebook) keeps the file open for writing",
                        "close that program's connection; runs stay safe in the run index meanwhile",
                    ) from exc
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    @contextmanager
    def _locked(self, timeout: float | None = None) -> Iterator[None]:
        from filelock import FileLock, Timeout

        lock = FileLock(str(self.lock_path))
        try:
            lock.acquire(timeout=self.lock_timeout if timeout is None else timeout)
        except Timeout as exc:
            raise StoreLockedError(
                f"Waited {self.lock_timeout:.0f} s for the database lock {self.lock_path}",
                "another consist process is merging a very large batch of runs, or hangs",
                "wait and retry; if no consist process runs, delete the lock file",
            ) from exc
        try:
            yield
        finally:
            lock.release()

    # ---------------------------------------------------------------- sync

    def pending(self) -> bool:
        """True when the index holds rows that were not merged into DuckDB yet."""
        return self.index.max_seq() != self._synced_seq or not self.db_path.exists()

    def sync(self, timeout: float | None = None) -> int:
        """Merge new index rows into the DuckDB file; returns how many rows were merged."""
        if not self.pending():
            return 0
        with self._locked(timeout):
            con = self._connect(timeout)
            try:
                return self._merge(con)
            finally:
                con.close()

    def _merge(self, con: Any) -> int:
        con.execute(_DUCK_DDL)
        row = con.execute("SELECT value FROM consist_meta WHERE key = 'synced_seq'").fetchone()
        last = int(row[0]) if row else 0
        top, runs, arts, links = self.index.changes_since(last)
        if top == last:
            self._synced_seq = top
            return 0
        con.execute("BEGIN TRANSACTION")
        try:
            if runs:
                self._upsert(con, "run", RUN_COLUMNS, [_run_tuple(r) for r in runs])
            if arts:
                self._upsert(con, "artifact", ARTIFACT_COLUMNS, [_art_tuple(a) for a in arts])
            if links:
                self._upsert(con, "run_artifact", LINK_COLUMNS, [tuple(lk[c] for c in LINK_COLUMNS) for lk in links])
            con.execute(
                "INSERT OR REPLACE INTO consist_meta VALUES ('synced_seq', ?), ('schema_version', ?)",
                [top, DUCK_SCHEMA_VERSION],
            )
            con.execute("COMMIT")
        except Exception as exc:
            con.execute("ROLLBACK")
            raise StoreError(
                f"Merging runs into {self.db_path} failed: {exc}",
                "the DuckDB file is damaged or was written by an incompatible program",
                "move the file away: the next query rebuilds it from the run index",
            ) from exc
        self._synced_seq = top
        return len(runs) + len(arts) + len(links)

    @staticmethod
    def _upsert(con: Any, table: str, cols: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        placeholders = ",".join("?" * len(cols))
        sql = f"INSERT OR REPLACE INTO {table} ({','.join(cols)}) VALUES ({placeholders})"
        if len(rows) < 200:
            con.executemany(sql, rows)
            return
        # Large batches go through Arrow: executemany costs ~0.1 ms a row, Arrow ~1 µs.
        import pyarrow as pa

        columns = list(zip(*rows))
        batch = pa.table({c: pa.array(list(v)) for c, v in zip(cols, columns)})
        con.register("consist_batch", batch)
        try:
            con.execute(f"INSERT OR REPLACE INTO {table} ({','.join(cols)}) SELECT * FROM consist_batch")
        finally:
            con.unregister("consist_batch")

    # ---------------------------------------------------------------- reading

    @contextmanager
    def read(self) -> Iterator[Any]:
        """A DuckDB connection on an up-to-date database, closed afterwards."""
        with self._locked():
            con = self._connect()
            try:
                if self.pending():
                    self._merge(con)
                else:
                    con.execute(_DUCK_DDL)
                yield con
            finally:
                con.close()

    @property
    def engine(self) -> Any:
        """An SQLAlchemy engine on the DuckDB file; each new connection merges first."""
        if self._engine is None:
            from duckdb_engine import ConnectionWrapper
            from sqlalchemy import create_engine
            from sqlalchemy.pool import NullPool

            def creator() -> Any:
                self.sync()
                return ConnectionWrapper(self._connect())

            # NullPool: a connection closes with its session, so the file is not held
            # open and other processes can still merge their runs.
            self._engine = create_engine(f"duckdb:///{self.db_path}", creator=creator, poolclass=NullPool)
            self.sync()
        return self._engine

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
