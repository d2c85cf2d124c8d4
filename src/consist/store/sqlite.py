"""The embedded run index: a SQLite (WAL) database beside the DuckDB file.

DuckDB lets one process write a database file and then nobody else may open it,
while modellers routinely run several scenario processes against one database.
So every tracker writes its records here first: SQLite in WAL mode takes short
write transactions from many processes (about 0.03 ms a commit on local disk)
and readers never block. Each write stamps its rows with a sequence number
taken from a counter under the same write lock, so sequence order is commit
order. The DuckDB file (see :mod:`consist.store`) is brought up to date from
these rows, in sequence order, by whichever process holds the sync lock.

The tables and what is done with them are described in :mod:`consist.store.index`;
this module opens the file, creates and upgrades its schema (``PRAGMA
user_version``) and turns SQLite's storage errors into messages that say what to do.

Rows copied back from the DuckDB file when an index is rebuilt carry sequence
number 0: they came from DuckDB and are not merged into it again, except into
a DuckDB file that lacks them.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import RunStateError, StoreError
from .csvload import TABLE_COLUMNS, csv_type, line_order, lines_of, value_text
from .index import RunIndex, no_such_schema
from .lookups import _meta_key

SCHEMA_VERSION = 5
_V3 = """
CREATE TABLE IF NOT EXISTS index_meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS lease (
    hash TEXT NOT NULL, kind TEXT, run_id TEXT, host TEXT NOT NULL, pid INTEGER NOT NULL, thread INTEGER,
    taken_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS lease_by_run ON lease (run_id);
CREATE INDEX IF NOT EXISTS run_producers_by_model ON run (model, ended_at) WHERE cache_hit = 0 AND status = 'completed';
"""
_V4 = """
CREATE TABLE IF NOT EXISTS heartbeat (run_id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL,
    beat_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS claim (signature TEXT PRIMARY KEY, run_id TEXT NOT NULL, host TEXT NOT NULL,
    pid INTEGER NOT NULL, beat_at REAL NOT NULL);
"""
# Lookups (consist.lookups) answer through these, newest first: an index per filter, ordered by started_at,
# so that a filter and the order come from one index and a LIMIT stops the scan early. Stage and phase
# are keys of the meta JSON: the lookups filter on exactly these expressions. run_tag holds each run's
# tags, kept by triggers (tags are JSON text, which no index reaches).
_V5 = """
CREATE INDEX IF NOT EXISTS run_by_started ON run (started_at);
CREATE INDEX IF NOT EXISTS run_by_status_started ON run (status, started_at);
CREATE INDEX IF NOT EXISTS run_by_parent_started ON run (parent_run_id, started_at);
CREATE INDEX IF NOT EXISTS run_by_model_started ON run (model, started_at);
CREATE INDEX IF NOT EXISTS run_by_year_started ON run (year, started_at);
CREATE INDEX IF NOT EXISTS run_by_stage ON run (json_extract(meta, '$.stage'), started_at);
CREATE INDEX IF NOT EXISTS run_by_phase ON run (json_extract(meta, '$.phase'), started_at);
CREATE INDEX IF NOT EXISTS run_by_config_hash ON run (config_hash, started_at);
CREATE INDEX IF NOT EXISTS run_by_input_hash ON run (input_hash, started_at);
CREATE INDEX IF NOT EXISTS run_by_code_version ON run (code_version, started_at);
CREATE INDEX IF NOT EXISTS artifact_by_hash_created ON artifact (hash, created_at);
CREATE INDEX IF NOT EXISTS artifact_by_key_created ON artifact (key, created_at);
CREATE INDEX IF NOT EXISTS artifact_produced_by_key ON artifact (key, created_at) WHERE run_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS artifact_by_uri ON artifact (uri, created_at);
CREATE INDEX IF NOT EXISTS artifact_by_run ON artifact (run_id, created_at);
CREATE INDEX IF NOT EXISTS artifact_by_created ON artifact (created_at);
CREATE INDEX IF NOT EXISTS link_by_artifact_direction ON run_artifact (artifact_id, direction);
CREATE TABLE IF NOT EXISTS run_tag (run_id TEXT NOT NULL, tag TEXT NOT NULL, started_at REAL,
    PRIMARY KEY (run_id, tag)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS run_tag_by_tag ON run_tag (tag, started_at);
CREATE TRIGGER IF NOT EXISTS run_tag_insert AFTER INSERT ON run WHEN NEW.tags IS NOT NULL BEGIN
    INSERT OR IGNORE INTO run_tag (run_id, tag, started_at)
    SELECT DISTINCT NEW.id, j.value, NEW.started_at FROM json_each(
        CASE WHEN json_valid(NEW.tags) THEN CASE json_type(NEW.tags) WHEN 'array' THEN NEW.tags END END) j
    WHERE j.type = 'text';
END;
CREATE TRIGGER IF NOT EXISTS run_tag_update AFTER UPDATE OF id, tags, started_at ON run
WHEN OLD.id IS NOT NEW.id OR OLD.tags IS NOT NEW.tags OR OLD.started_at IS NOT NEW.started_at BEGIN
    DELETE FROM run_tag WHERE run_id = OLD.id;
    INSERT OR IGNORE INTO run_tag (run_id, tag, started_at)
    SELECT DISTINCT NEW.id, j.value, NEW.started_at FROM json_each(
        CASE WHEN json_valid(NEW.tags) THEN CASE json_type(NEW.tags) WHEN 'array' THEN NEW.tags END END) j
    WHERE j.type = 'text';
END;
CREATE TRIGGER IF NOT EXISTS run_tag_delete AFTER DELETE ON run BEGIN
    DELETE FROM run_tag WHERE run_id = OLD.id;
END;
"""
# What each schema version adds to the one before, applied in order to older indexes.
_UPGRADES = {
    2: "ALTER TABLE artifact ADD COLUMN location TEXT;",
    # index_meta: the generation id (a new id for every new index) and the merge position;
    # lease: objects held by runs in progress; run_producers_by_model: the miss explanation's
    # lookup of earlier executed runs, which must not walk the model's cache hits.
    3: _V3,
    # heartbeat: running runs' liveness (interrupted runs of other hosts); claim: one execution per signature.
    4: _V4,
    # The lookups' indexes; five older indexes are replaced by ones that also give the newest first.
    5: """
DROP INDEX IF EXISTS run_by_status;
DROP INDEX IF EXISTS run_by_parent;
DROP INDEX IF EXISTS artifact_by_hash;
DROP INDEX IF EXISTS artifact_by_key;
DROP INDEX IF EXISTS link_by_artifact;
"""
    + _V5
    + """
INSERT OR IGNORE INTO run_tag (run_id, tag, started_at)
SELECT DISTINCT run.id, j.value, run.started_at FROM run, json_each(
    CASE WHEN json_valid(run.tags) THEN CASE json_type(run.tags) WHEN 'array' THEN run.tags END END) j
WHERE j.type = 'text';
""",
}

_DDL = f"""
CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL);
INSERT OR IGNORE INTO counter VALUES (1, 0);
CREATE TABLE IF NOT EXISTS run (
    id TEXT PRIMARY KEY, name TEXT, model TEXT, status TEXT, parent_run_id TEXT,
    year INTEGER, iteration INTEGER, tags TEXT, signature TEXT, code_version TEXT,
    config_hash TEXT, input_hash TEXT, config TEXT, identity TEXT,
    cache_hit INTEGER, cache_source TEXT, cache_epoch INTEGER, error TEXT, meta TEXT,
    run_dir TEXT, pid INTEGER, host TEXT, started_at REAL, ended_at REAL,
    seq INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS run_by_signature ON run (signature, status, cache_hit, ended_at);
CREATE INDEX IF NOT EXISTS run_by_model ON run (model, ended_at);
CREATE INDEX IF NOT EXISTS run_by_seq ON run (seq);
CREATE TABLE IF NOT EXISTS artifact (
    id TEXT PRIMARY KEY, key TEXT, uri TEXT, hash TEXT, size INTEGER, kind TEXT,
    driver TEXT, run_id TEXT, created_at REAL, meta TEXT, seq INTEGER NOT NULL, location TEXT);
CREATE INDEX IF NOT EXISTS artifact_by_seq ON artifact (seq);
CREATE TABLE IF NOT EXISTS run_artifact (
    run_id TEXT NOT NULL, artifact_id TEXT NOT NULL, direction TEXT NOT NULL, key TEXT NOT NULL,
    seq INTEGER NOT NULL, PRIMARY KEY (run_id, direction, key));
CREATE INDEX IF NOT EXISTS link_by_seq ON run_artifact (seq);
CREATE TABLE IF NOT EXISTS object (
    hash TEXT NOT NULL, store TEXT NOT NULL, size INTEGER, PRIMARY KEY (hash, store));
CREATE TABLE IF NOT EXISTS hash_memo (
    dev INTEGER NOT NULL, ino INTEGER NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    algo TEXT NOT NULL, hash TEXT NOT NULL, PRIMARY KEY (dev, ino, size, mtime_ns, algo)) WITHOUT ROWID;
{_V3}
{_V4}
{_V5}
PRAGMA user_version = {SCHEMA_VERSION};
"""


def _statements(script: str) -> Iterator[str]:
    """The statements of an SQL script, one by one (a trigger's body keeps its semicolons)."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip() != ";":
                yield pending.strip()
            pending = ""


def _row_dict(cursor: sqlite3.Cursor, row: Sequence[Any]) -> dict[str, Any]:
    return {d[0]: v for d, v in zip(cursor.description, row)}


class _ClosedConnection:
    """Stands in for the SQLite connection once the tracker is closed."""

    def __getattr__(self, name: str) -> Any:
        raise RunStateError(
            "This Tracker is closed",
            "close() ran, or its `with` block ended, before this call",
            "open a new Tracker on the same run_dir and database; past runs and cached outputs are kept",
        )


def _disk_full(exc: sqlite3.Error, path: Path) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary == sqlite3.SQLITE_FULL or "disk is full" in str(exc):
        return True
    # Some file systems report a write that found no space as an I/O error.
    return primary == sqlite3.SQLITE_IOERR and _nearly_full(path.parent)


def _disk_full_error(exc: BaseException, path: Path) -> StoreError:
    return StoreError(
        f"No space left on device for the run index {path} ({exc})",
        "the file system that holds the database is full",
        f"free space there (df -h {path.parent}; tracker.prune_store() frees stored outputs) and run the step "
        "again; the write that failed was rolled back, nothing of it was recorded",
    )


def _storage_problem(exc: sqlite3.Error, path: Path) -> StoreError | None:
    """A clear error for a full disk or a damaged index file; None for anything else."""
    if _disk_full(exc, path):
        return _disk_full_error(exc, path)
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB) or "malformed" in str(exc):
        return StoreError(
            f"The run index {path} is damaged ({exc})",
            "the file was truncated or overwritten (a crash during a copy, a disk error)",
            f"run consist.store.rebuild_index({str(_db_path_of(path))!r}): it moves the damaged index aside and "
            "rebuilds it from the DuckDB file",
        )
    return None


def _nearly_full(directory: Path) -> bool:
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < (1 << 20)


class SQLiteIndex(RunIndex):
    """The run index in a SQLite file (WAL mode): one machine, many processes."""

    # The lookup of a model's executed runs reads the partial index, never the model's cache hits.
    _producers_hint = "INDEXED BY run_producers_by_model "
    #: Before schema version 5 (a read-only look at an older index): tags as JSON text.
    TAG_CONTAINS = "EXISTS (SELECT 1 FROM json_each(run.tags) WHERE value = ?)"

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        super().__init__()
        self.path = path
        self.location = str(path)
        #: The schema version of the file (older than :data:`SCHEMA_VERSION` only when opened read-only).
        self.schema_version = SCHEMA_VERSION
        if read_only:
            self._open_read_only(path)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(str(path), timeout=60.0, isolation_level=None, check_same_thread=False)
            self._db.row_factory = _row_dict
            self._db.execute("PRAGMA busy_timeout = 60000")
            if self._db.execute("PRAGMA journal_mode").fetchone()["journal_mode"] != "wal":
                _switch_to_wal(self._db)
            # WAL with NORMAL: a commit survives the death of any process; FULL (make_durable) also a power failure.
            self._db.execute("PRAGMA synchronous = NORMAL")
            version = self._db.execute("PRAGMA user_version").fetchone()["user_version"]
            if version == 0:
                # Idempotent DDL: two processes creating the index at once both succeed.
                self._db.executescript(_DDL)
            elif version < SCHEMA_VERSION:
                self._upgrade(version)
            elif version > SCHEMA_VERSION:
                raise no_such_schema(str(path), version, SCHEMA_VERSION)
            #: A random id given to this index when it was created: the DuckDB file records the
            #: generation it was merged from, so a new or replaced index is recognised as such.
            self.generation = self._generation()
        except sqlite3.DatabaseError as exc:
            if _disk_full(exc, path):
                raise _disk_full_error(exc, path) from exc
            raise StoreError(
                f"Cannot open the run index {path}: {exc}",
                "the file is damaged or is not a consist index",
                f"run consist.store.rebuild_index({str(_db_path_of(path))!r}): it moves the damaged index aside "
                "and rebuilds it from the DuckDB file, which keeps every merged run",
            ) from exc

    def _open_read_only(self, path: Path) -> None:
        """For looking only (the command line): never creates, upgrades or writes anything."""
        if not path.is_file():
            raise StoreError(
                f"There is no run index at {path}",
                "no tracker has recorded a run with this database yet, or the path is wrong",
                "pass the DuckDB file the trackers use (its index is the hidden folder beside it)",
            )
        try:
            self._db = sqlite3.connect(
                f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=60.0, isolation_level=None,
                check_same_thread=False,
            )  # fmt: skip
            self._db.row_factory = _row_dict
            self._db.execute("PRAGMA busy_timeout = 60000")
            version = self._db.execute("PRAGMA user_version").fetchone()["user_version"]
            if version > SCHEMA_VERSION:
                raise no_such_schema(str(path), version, SCHEMA_VERSION)
            self.schema_version = version
            row = self._db.execute("SELECT value FROM index_meta WHERE key = 'generation'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"Cannot read the run index {path}: {exc}",
                "the file is damaged, is not a consist index, or this user may not read it",
                f"check its permissions; a damaged index is rebuilt by consist.store.rebuild_index"
                f"({str(_db_path_of(path))!r})",
            ) from exc
        self.generation = row["value"] if row else ""

    def _upgrade(self, version: int) -> None:
        """Bring an older index to this schema, in one transaction (a second process waits, then skips)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            current = self._db.execute("PRAGMA user_version").fetchone()["user_version"]
            for target in range(current + 1, SCHEMA_VERSION + 1):
                # One statement at a time: executescript() would commit half-way.
                for stmt in _statements(_UPGRADES[target]):
                    self._db.execute(stmt)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    # ---------------------------------------------------------------- backend hooks

    @property
    def has_lookup_indexes(self) -> bool:
        return self.schema_version >= 5

    def meta_field(self, key: str) -> str:
        return f"json_extract(meta, '$.{_meta_key(key)}')"

    def indexed_by(self, index: str) -> str:
        # SQLite keeps no statistics here: told which index leads, it never sorts a whole table for a LIMIT.
        return f"INDEXED BY {index} " if self.has_lookup_indexes else ""

    def make_durable(self) -> None:
        """Wait for every commit to reach the disk (``PRAGMA synchronous = FULL``)."""
        with self._lock:
            self._db.execute("PRAGMA synchronous = FULL")

    def close(self) -> None:
        self._beat_stop.set()
        with self._lock:
            if not isinstance(self._db, _ClosedConnection):
                self._db.close()
                self._db = _ClosedConnection()

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn a full disk or a damaged file into a StoreError that says so."""
        try:
            yield
        except sqlite3.Error as exc:
            err = _storage_problem(exc, self.path)
            if err is None:
                raise
            raise err from exc

    def _run(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._db.execute(sql, params)

    def merge_lines(self, after: int, upto: int) -> dict[str, list[str]]:
        """The window's rows as CSV lines, formatted by SQLite itself (see :mod:`.csvload`), in one snapshot."""
        with self._lock, self._guard():
            self._begin_snapshot()
            try:
                return {table: self._table_lines(table, after, upto) for table in TABLE_COLUMNS}
            finally:
                self._end(commit=True)

    def _table_lines(self, table: str, after: int, upto: int) -> list[str]:
        quoted, reals = line_order(table)
        numeric = ("INTEGER", "BIGINT")
        head = "||','||".join(
            f"quote(CAST({c} AS INTEGER))" if csv_type(c) in numeric else f"quote({c})" for c in quoted
        )
        # quote() ends a text at a NUL character: such rows (rare) are written by Python instead.
        texts = [c for c in quoted if csv_type(c) == "VARCHAR"]
        nul = " + ".join(f"coalesce(instr(CAST({c} AS BLOB), X'00'), 0)" for c in texts) + " > 0"
        where = f"FROM {table} WHERE seq > ? AND seq <= ?"
        cursor = self._db.cursor()
        cursor.row_factory = None  # plain tuples: no dict per row
        cursor.execute(f"SELECT {', '.join([head, *reals])} {where} AND NOT ({nul})", (after, upto))
        # The timestamps (REAL) as repr: SQLite's own text for a REAL is not always the exact double.
        lines = [first + "".join(f",{value_text(v)}" for v in rest) for first, *rest in cursor]
        odd = self._run(f"SELECT * {where} AND {nul}", (after, upto)).fetchall()
        return lines + lines_of(table, odd) if odd else lines

    def _run_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        # The rows the statement changed itself: total_changes would add those its triggers change (run_tag).
        return max(self._db.executemany(sql, rows).rowcount, 0)

    def _begin_write(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")  # takes the write lock now, not at the first write

    def _begin_snapshot(self) -> None:
        self._db.execute("BEGIN")

    def _end(self, commit: bool) -> None:
        if commit:
            self._db.execute("COMMIT")
        elif self._db.in_transaction:  # a failed COMMIT (a full disk) has already rolled back
            self._db.execute("ROLLBACK")


def _switch_to_wal(db: sqlite3.Connection, wait_s: float = 60.0) -> None:
    """Put a new index in WAL mode, also when several processes create it at the same moment.

    Changing the journal mode needs the file to itself, and SQLite answers "database
    is locked" at once, without its busy timeout, while another connection is
    doing the same: so it is tried again for up to ``wait_s`` seconds.
    """
    deadline = time.monotonic() + wait_s
    delay = 0.005
    while True:
        try:
            if db.execute("PRAGMA journal_mode = WAL").fetchone()["journal_mode"] == "wal":
                return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
        if time.monotonic() > deadline:
            raise sqlite3.OperationalError(f"database is locked: could not switch to WAL within {wait_s:.0f} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def _db_path_of(index_path: Path) -> Path:
    """The DuckDB file an index belongs to (the inverse of :func:`index_path_for`)."""
    folder = index_path.parent.name
    if folder.startswith(".") and folder.endswith(".consist"):
        return index_path.parent.parent / folder[1 : -len(".consist")]
    return index_path.parent / "provenance.duckdb"


def index_path_for(db_path: Path) -> Path:
    """Where the index of a DuckDB file lives: a hidden folder beside it."""
    return db_path.parent / f".{db_path.name}.consist" / "index.sqlite"
