"""The run index: a SQLite (WAL) database beside the DuckDB file.

DuckDB lets one process write a database file and then nobody else may open it,
while modellers routinely run several scenario processes against one database.
So every tracker writes its records here first: SQLite in WAL mode takes short
write transactions from many processes (about 0.03 ms a commit on local disk)
and readers never block. Each write stamps its rows with a sequence number
taken from a counter under the same write lock, so sequence order is commit
order. The DuckDB file (see :mod:`consist.store`) is brought up to date from
these rows, in sequence order, by whichever process holds the sync lock.

Tables: ``run``, ``artifact`` and ``run_artifact`` (mirrored into DuckDB),
``object`` (which object stores hold which content), ``hash_memo``, ``lease``
(objects that runs in progress are writing or restoring, which prune_store()
must keep) and ``index_meta`` (the index's generation id and the last sequence
number merged into DuckDB, see :mod:`consist.store`).

Rows copied back from the DuckDB file when an index is rebuilt carry sequence
number 0: they came from DuckDB and are not merged into it again, except into
a DuckDB file that lacks them.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import RunStateError, StoreError

SCHEMA_VERSION = 3
_V3 = """
CREATE TABLE IF NOT EXISTS index_meta (key TEXT PRIMARY KEY, value TEXT);
INSERT OR IGNORE INTO index_meta VALUES ('generation', lower(hex(randomblob(16))));
CREATE TABLE IF NOT EXISTS lease (
    hash TEXT NOT NULL, kind TEXT, run_id TEXT, host TEXT NOT NULL, pid INTEGER NOT NULL, thread INTEGER,
    taken_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS lease_by_run ON lease (run_id);
CREATE INDEX IF NOT EXISTS run_producers_by_model ON run (model, ended_at) WHERE cache_hit = 0 AND status = 'completed';
"""
# What each schema version adds to the one before, applied in order to older indexes.
_UPGRADES = {
    2: "ALTER TABLE artifact ADD COLUMN location TEXT;",
    # index_meta: the generation id (a new id for every new index) and the merge position;
    # lease: objects held by runs in progress; run_producers_by_model: the miss explanation's
    # lookup of earlier executed runs, which must not walk the model's cache hits.
    3: _V3,
}

HOST = socket.gethostname()
#: A lease taken for a restore (no run id yet) protects its objects this long at most.
RESTORE_LEASE_S = 24 * 3600.0

RUN_COLUMNS = (
    "id", "name", "model", "status", "parent_run_id", "year", "iteration", "tags",
    "signature", "code_version", "config_hash", "input_hash", "config", "identity",
    "cache_hit", "cache_source", "cache_epoch", "error", "meta", "run_dir", "pid", "host",
    "started_at", "ended_at",
)  # fmt: skip
ARTIFACT_COLUMNS = ("id", "key", "uri", "hash", "size", "kind", "driver", "run_id", "created_at", "meta", "location")
LINK_COLUMNS = ("run_id", "artifact_id", "direction", "key")

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
CREATE INDEX IF NOT EXISTS run_by_status ON run (status);
CREATE INDEX IF NOT EXISTS run_by_seq ON run (seq);
CREATE INDEX IF NOT EXISTS run_by_parent ON run (parent_run_id);
CREATE TABLE IF NOT EXISTS artifact (
    id TEXT PRIMARY KEY, key TEXT, uri TEXT, hash TEXT, size INTEGER, kind TEXT,
    driver TEXT, run_id TEXT, created_at REAL, meta TEXT, seq INTEGER NOT NULL, location TEXT);
CREATE INDEX IF NOT EXISTS artifact_by_hash ON artifact (hash);
CREATE INDEX IF NOT EXISTS artifact_by_key ON artifact (key);
CREATE INDEX IF NOT EXISTS artifact_by_seq ON artifact (seq);
CREATE TABLE IF NOT EXISTS run_artifact (
    run_id TEXT NOT NULL, artifact_id TEXT NOT NULL, direction TEXT NOT NULL, key TEXT NOT NULL,
    seq INTEGER NOT NULL, PRIMARY KEY (run_id, direction, key));
CREATE INDEX IF NOT EXISTS link_by_artifact ON run_artifact (artifact_id);
CREATE INDEX IF NOT EXISTS link_by_seq ON run_artifact (seq);
CREATE TABLE IF NOT EXISTS object (
    hash TEXT NOT NULL, store TEXT NOT NULL, size INTEGER, PRIMARY KEY (hash, store));
CREATE TABLE IF NOT EXISTS hash_memo (
    dev INTEGER NOT NULL, ino INTEGER NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    algo TEXT NOT NULL, hash TEXT NOT NULL, PRIMARY KEY (dev, ino, size, mtime_ns, algo)) WITHOUT ROWID;
{_V3}
PRAGMA user_version = {SCHEMA_VERSION};
"""


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


class Index:
    """A connection to the shared run index. Thread-safe through one lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(str(path), timeout=60.0, isolation_level=None, check_same_thread=False)
            self._db.row_factory = _row_dict
            self._db.execute("PRAGMA busy_timeout = 60000")
            if self._db.execute("PRAGMA journal_mode").fetchone()["journal_mode"] != "wal":
                self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            version = self._db.execute("PRAGMA user_version").fetchone()["user_version"]
            if version == 0:
                # Idempotent DDL: two processes creating the index at once both succeed.
                self._db.executescript(_DDL)
            elif version < SCHEMA_VERSION:
                self._upgrade(version)
            elif version > SCHEMA_VERSION:
                raise StoreError(
                    f"The run index {path} has schema version {version}; "
                    f"this consist understands up to {SCHEMA_VERSION}",
                    "a newer consist wrote this database",
                    "upgrade consist (pip install -U consist)",
                )
            row = self._db.execute("SELECT value FROM index_meta WHERE key = 'generation'").fetchone()
            #: A random id given to this index when it was created: the DuckDB file records the
            #: generation it was merged from, so a new or replaced index is recognised as such.
            self.generation: str = row["value"]
        except sqlite3.DatabaseError as exc:
            if _disk_full(exc, path):
                raise _disk_full_error(exc, path) from exc
            raise StoreError(
                f"Cannot open the run index {path}: {exc}",
                "the file is damaged or is not a consist index",
                f"run consist.store.rebuild_index({str(_db_path_of(path))!r}): it moves the damaged index aside "
                "and rebuilds it from the DuckDB file, which keeps every merged run",
            ) from exc
        self._lock = threading.RLock()
        self._in_tx = False
        self._seq: int | None = None

    def _upgrade(self, version: int) -> None:
        """Bring an older index to this schema, in one transaction (a second process waits, then skips)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            current = self._db.execute("PRAGMA user_version").fetchone()["user_version"]
            for target in range(current + 1, SCHEMA_VERSION + 1):
                # One statement at a time: executescript() would commit half-way.
                for stmt in filter(None, (s.strip() for s in _UPGRADES[target].split(";"))):
                    self._db.execute(stmt)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    # ---------------------------------------------------------------- plumbing

    def close(self) -> None:
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

    @contextmanager
    def write(self, stamp: bool = True) -> Iterator[Any]:
        """A write transaction; yields the sequence number stamped on its rows.

        ``stamp=False`` takes no sequence number (bookkeeping that is not merged into
        DuckDB: leases, the object registry, index metadata) and yields None; a
        nested ``write()`` that needs one takes it then, in the same transaction.
        """
        with self._lock:
            if self._in_tx:  # nested: join the outer transaction
                if stamp and self._seq is None:
                    self._seq = self._next_seq()
                yield self._seq
                return
            with self._guard():
                self._db.execute("BEGIN IMMEDIATE")
                self._in_tx = True
                self._seq = None
                try:
                    if stamp:
                        self._seq = self._next_seq()
                    yield self._seq
                    self._db.execute("COMMIT")
                except BaseException:
                    # A failed COMMIT (a full disk) has already rolled the transaction back.
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
                finally:
                    self._in_tx = False
                    self._seq = None

    def _next_seq(self) -> int:
        return int(self._db.execute("UPDATE counter SET seq = seq + 1 WHERE id = 1 RETURNING seq").fetchone()["seq"])

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._lock, self._guard():
            return self._db.execute(sql, params).fetchall()

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        with self._lock, self._guard():
            return self._db.execute(sql, params).fetchone()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self._lock, self._guard():
            self._db.execute(sql, params)

    # ---------------------------------------------------------------- writes

    def upsert_run(self, row: dict[str, Any]) -> None:
        with self.write() as seq:
            cols = [*RUN_COLUMNS, "seq"]
            vals = [row.get(c) for c in RUN_COLUMNS] + [seq]
            self._db.execute(
                f"INSERT OR REPLACE INTO run ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})", vals
            )
            if row.get("status") != "running":
                # The run ended: its outputs are referenced by its record from now on (or not needed),
                # and any restore this thread began before has ended too.
                self._db.execute(
                    "DELETE FROM lease WHERE run_id = ? OR (run_id IS NULL AND host = ? AND pid = ? AND thread = ?)",
                    (row.get("id"), HOST, os.getpid(), threading.get_ident()),
                )

    def claim_run_id(self, wanted: str, row: dict[str, Any]) -> str:
        """Insert a new run under ``wanted`` or, if taken, ``wanted~2``, ``wanted~3``, ...

        Earlier runs with the same id are never touched.
        """
        with self.write() as seq:
            run_id = wanted
            n = 1
            while self._db.execute("SELECT 1 FROM run WHERE id = ?", (run_id,)).fetchone():
                n += 1
                run_id = f"{wanted}~{n}"
            row = {**row, "id": run_id}
            cols = [*RUN_COLUMNS, "seq"]
            vals = [row.get(c) for c in RUN_COLUMNS] + [seq]
            self._db.execute(f"INSERT INTO run ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})", vals)
            return run_id

    def add_artifact(self, row: dict[str, Any], *, replace: bool = False) -> None:
        with self.write() as seq:
            verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
            cols = [*ARTIFACT_COLUMNS, "seq"]
            self._db.execute(
                f"{verb} INTO artifact ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})",
                [row.get(c) for c in ARTIFACT_COLUMNS] + [seq],
            )

    def link(self, run_id: str, artifact_id: str, direction: str, key: str) -> None:
        with self.write() as seq:
            self._db.execute(
                "INSERT OR REPLACE INTO run_artifact VALUES (?, ?, ?, ?, ?)",
                (run_id, artifact_id, direction, key, seq),
            )

    def add_object(self, digest: str, store: str, size: int) -> None:
        with self.write():
            self._db.execute("INSERT OR IGNORE INTO object VALUES (?, ?, ?)", (digest, store, size))

    def register_objects(self, items: Iterable[tuple[str, str, int]]) -> int:
        """Record (hash, store, size) rows in the object registry; returns how many were new."""
        with self.write(stamp=False):
            before = self._db.total_changes
            self._db.executemany("INSERT OR IGNORE INTO object VALUES (?, ?, ?)", list(items))
            return self._db.total_changes - before

    def drop_objects(self, items: Iterable[tuple[str, str]]) -> None:
        with self.write():
            self._db.executemany("DELETE FROM object WHERE hash = ? AND store = ?", list(items))

    def object_stores(self, digest: str) -> list[str]:
        return [r["store"] for r in self.query("SELECT store FROM object WHERE hash = ?", (digest,))]

    # ---------------------------------------------------------------- leases

    def lease_written(self, run_id: str, digest: str, kind: str, store: str, size: int) -> None:
        """Register a stored output of the running run ``run_id`` and keep it from prune_store().

        The lease ends when the run's record gets its final status (see :meth:`upsert_run`),
        which references the output from then on, or when its process is found dead.
        """
        with self.write(stamp=False):
            self._db.execute("INSERT OR IGNORE INTO object VALUES (?, ?, ?)", (digest, store, size))
            self._db.execute(
                "INSERT INTO lease VALUES (?, ?, ?, ?, ?, NULL, ?)",
                (digest, kind, run_id, HOST, os.getpid(), time.time()),
            )

    def lease_restoring(self, items: Iterable[tuple[str, str]]) -> None:
        """Keep the objects ``(hash, kind)`` about to be restored from prune_store().

        Each thread holds one such lease at a time: the thread's next restore lease
        or the next run it records with a final status ends it (by then the restore
        has ended). It also ends with the process, and after :data:`RESTORE_LEASE_S`
        at most.
        """
        rows = list(items)
        if not rows:
            return
        me = (HOST, os.getpid(), threading.get_ident())
        now = time.time()
        with self.write(stamp=False):
            self._db.execute("DELETE FROM lease WHERE run_id IS NULL AND host = ? AND pid = ? AND thread = ?", me)
            self._db.executemany(
                "INSERT INTO lease VALUES (?, ?, NULL, ?, ?, ?, ?)", [(h, kind, *me, now) for h, kind in rows]
            )

    def leases(self, now: float | None = None) -> tuple[list[dict[str, Any]], list[int]]:
        """The leases in force, as ``(hash, kind)`` rows, and the rowids of those that ended.

        A lease of a run holds while that run is ``running``; a restore's lease for
        :data:`RESTORE_LEASE_S`. On this host either ends when its process is gone
        (other hosts' processes cannot be checked: their runs hold until reaped there).
        """
        now = time.time() if now is None else now
        rows = self.query(
            "SELECT l.rowid AS rowid, l.hash, l.kind, l.run_id, l.host, l.pid, l.taken_at, r.status "
            "FROM lease l LEFT JOIN run r ON r.id = l.run_id"
        )
        live: list[dict[str, Any]] = []
        ended: list[int] = []
        alive: dict[int, bool] = {}
        for r in rows:
            if r["run_id"] is not None and r["status"] is not None:
                holds = r["status"] == "running"
            else:  # a restore, or a run whose record is not there (yet)
                holds = r["taken_at"] > now - RESTORE_LEASE_S
            if holds and r["host"] == HOST:
                pid = int(r["pid"])
                if pid not in alive:
                    alive[pid] = pid_alive(pid)
                holds = alive[pid]
            (live.append(r) if holds else ended.append(r["rowid"]))
        return live, ended

    # ---------------------------------------------------------------- index metadata

    def meta(self, key: str) -> str | None:
        row = self.query_one("SELECT value FROM index_meta WHERE key = ?", (key,))
        return None if row is None else row["value"]

    def set_meta(self, key: str, value: str) -> None:
        with self.write(stamp=False):
            self._db.execute("INSERT OR REPLACE INTO index_meta VALUES (?, ?)", (key, value))

    def merged_seq(self) -> int | None:
        """The sequence number this index was last merged into DuckDB up to (None: never merged)."""
        value = self.meta("merged_seq")
        return None if value is None else int(value)

    def adopt(
        self, runs: Sequence[dict[str, Any]], arts: Sequence[dict[str, Any]], links: Sequence[dict[str, Any]]
    ) -> dict[str, int]:
        """Copy rows of the DuckDB file into the index, stamped with sequence number 0.

        Rows this index wrote itself (sequence number above 0) are never replaced;
        rows copied before are refreshed. Returns how many rows of each table were
        added or refreshed.
        """
        counts = {}
        with self.write(stamp=False):
            for table, cols, key, rows in (
                ("run", RUN_COLUMNS, "id", runs),
                ("artifact", ARTIFACT_COLUMNS, "id", arts),
                ("run_artifact", LINK_COLUMNS, "run_id, direction, key", links),
            ):
                update = ", ".join(f"{c} = excluded.{c}" for c in cols)
                sql = (
                    f"INSERT INTO {table} ({','.join(cols)}, seq) VALUES ({','.join('?' * len(cols))}, 0) "
                    f"ON CONFLICT ({key}) DO UPDATE SET {update} WHERE {table}.seq = 0"
                )
                before = self._db.total_changes
                self._db.executemany(sql, [[r.get(c) for c in cols] for r in rows])
                counts[table] = self._db.total_changes - before
        return counts

    # ---------------------------------------------------------------- hash memo

    def memo_get(self, key: tuple[int, int, int, int], algo: str) -> str | None:
        row = self.query_one(
            "SELECT hash FROM hash_memo WHERE dev=? AND ino=? AND size=? AND mtime_ns=? AND algo=?", (*key, algo)
        )
        return row["hash"] if row else None

    def memo_put(self, key: tuple[int, int, int, int], algo: str, digest: str) -> None:
        # The memo needs no sequence number: a plain autocommit statement (or the open transaction) is enough.
        with self._lock, self._guard():
            self._db.execute("INSERT OR REPLACE INTO hash_memo VALUES (?,?,?,?,?,?)", (*key, algo, digest))

    # ---------------------------------------------------------------- reads

    def run(self, run_id: str) -> dict[str, Any] | None:
        return self.query_one("SELECT * FROM run WHERE id = ?", (run_id,))

    def producers(self, signature: str, limit: int = 5) -> list[dict[str, Any]]:
        """Completed runs that executed (not cache hits) with this signature, newest first."""
        return self.query(
            "SELECT * FROM run WHERE signature = ? AND status = 'completed' AND cache_hit = 0 "
            "ORDER BY ended_at DESC LIMIT ?",
            (signature, limit),
        )

    def outputs_of(self, run_id: str) -> list[dict[str, Any]]:
        return self.links_of(run_id, "output")

    def links_of(self, run_id: str, direction: str | None = None) -> list[dict[str, Any]]:
        sql = (
            "SELECT l.key AS link_key, l.direction, a.* FROM run_artifact l "
            "JOIN artifact a ON a.id = l.artifact_id WHERE l.run_id = ?"
        )
        params: list[Any] = [run_id]
        if direction:
            sql += " AND l.direction = ?"
            params.append(direction)
        return self.query(sql + " ORDER BY l.seq, l.key", params)

    def members_of(self, run_id: str, dir_artifact_id: str) -> list[dict[str, Any]]:
        """The member artifacts (files) a run recorded for one of its directory outputs."""
        return [m for m in self.links_of(run_id, "member") if m["meta"] and dir_artifact_id in m["meta"]]

    def recent_runs_of_model(self, model: str, limit: int = 50) -> list[dict[str, Any]]:
        """The newest completed runs of ``model`` that executed (not cache hits).

        Read through the partial index of executed runs, so the model's cache hits,
        however many, are never walked (a miss asks this to explain itself).
        """
        return self.query(
            "SELECT * FROM run INDEXED BY run_producers_by_model "
            "WHERE model = ? AND cache_hit = 0 AND status = 'completed' ORDER BY ended_at DESC LIMIT ?",
            (model, limit),
        )

    def output_artifact_with_hash(self, digest: str) -> dict[str, Any] | None:
        """The newest artifact produced by a completed run with this content."""
        return self.query_one(
            "SELECT a.* FROM artifact a JOIN run r ON r.id = a.run_id "
            "WHERE a.hash = ? AND r.status = 'completed' ORDER BY a.created_at DESC LIMIT 1",
            (digest,),
        )

    def max_seq(self) -> int:
        row = self.query_one("SELECT seq FROM counter WHERE id = 1")
        return int(row["seq"]) if row else 0

    def changes_since(self, seq: int) -> tuple[int, list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        """The current sequence number and the rows written after ``seq``, read in one snapshot.

        ``seq=-1`` includes the rows copied from a DuckDB file (sequence number 0).
        """
        with self._lock, self._guard():
            self._db.execute("BEGIN")
            try:
                top = int(self._db.execute("SELECT seq FROM counter WHERE id = 1").fetchone()["seq"])
                runs = self._db.execute("SELECT * FROM run WHERE seq > ?", (seq,)).fetchall()
                arts = self._db.execute("SELECT * FROM artifact WHERE seq > ?", (seq,)).fetchall()
                links = self._db.execute("SELECT * FROM run_artifact WHERE seq > ?", (seq,)).fetchall()
            finally:
                self._db.execute("COMMIT")
        return top, runs, arts, links


def _db_path_of(index_path: Path) -> Path:
    """The DuckDB file an index belongs to (the inverse of :func:`index_path_for`)."""
    folder = index_path.parent.name
    if folder.startswith(".") and folder.endswith(".consist"):
        return index_path.parent.parent / folder[1 : -len(".consist")]
    return index_path.parent / "provenance.duckdb"


def index_path_for(db_path: Path) -> Path:
    """Where the index of a DuckDB file lives: a hidden folder beside it."""
    return db_path.parent / f".{db_path.name}.consist" / "index.sqlite"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
