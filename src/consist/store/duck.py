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

Which rows are new is known from two numbers: the sequence number the DuckDB
file was last merged up to, recorded in the file together with the index's
*generation* (a random id given to every new index), and the same position
recorded in the index. When they agree, a merge reads only the rows after that
position. When they do not (the index was moved away and recreated, restored
from a copy, or the DuckDB file was replaced), the merge reconciles the two by
primary key: the DuckDB file's rows that the index lacks are copied into the
index (sequence number 0, see :meth:`RunIndex.adopt`), so they are cache hits and
their run ids are never reused, and every row of the index is written into
DuckDB. :func:`rebuild_index` does the same on purpose, for an index that is
damaged.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import ConsistWarning, StoreError, StoreLockedError
from . import csvload
from .columns import ARTIFACT_COLUMNS, JSON_COLUMNS, LINK_COLUMNS, RUN_COLUMNS, TIMESTAMP_COLUMNS
from .index import RunIndex
from .sqlite import SQLiteIndex, index_path_for

DUCK_SCHEMA_VERSION = 3

_DUCK_DDL = """
CREATE TABLE IF NOT EXISTS consist_meta (key VARCHAR PRIMARY KEY, value BIGINT);
CREATE TABLE IF NOT EXISTS consist_index (key VARCHAR PRIMARY KEY, value VARCHAR);
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


def _index_select(cols: tuple[str, ...]) -> str:
    """DuckDB columns as the index stores them: epoch seconds, 0/1, JSON text."""

    def one(c: str) -> str:
        if c in TIMESTAMP_COLUMNS:
            return f"epoch_us({c}) / 1000000.0 AS {c}"
        if c == "cache_hit":
            return f"CAST({c} AS INTEGER) AS {c}"
        if c in JSON_COLUMNS:
            return f"CAST({c} AS VARCHAR) AS {c}"
        return c

    return ", ".join(one(c) for c in cols)


def _is_lock_conflict(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "could not set lock" in text or "conflicting lock" in text


def _looks_damaged(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(sign in text for sign in _DAMAGE_SIGNS)


_DAMAGE_SIGNS = ("corrupt database file", "checksum", "not a valid duckdb database", "could not read enough bytes")


def _out_of_memory(exc: BaseException | None) -> bool:
    """Whether DuckDB ran out of its memory limit somewhere in this chain of exceptions."""
    while exc is not None:
        if "out of memory" in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class _WindowOutOfMemory(Exception):
    """A merge window did not fit in :data:`MERGE_MEMORY_MB` (rolled back; see DuckStore._merge)."""


def _no_space(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "no space left on device" in text or "disk is full" in text or "disk full" in text


#: About how many runs one merge transaction carries (memory stays bounded by it; see DuckStore._merge).
MERGE_WINDOW_RUNS = 5000
#: DuckDB's memory limit while merging (MB): beyond it, DuckDB writes pages out instead of holding them.
MERGE_MEMORY_MB = 64


class DuckStore:
    """The DuckDB file of a tracker, merged from its run index on demand."""

    def __init__(self, db_path: Path, index: SQLiteIndex, lock_timeout: float = 120.0) -> None:
        self.db_path = db_path
        self.index = index
        self.lock_path = index.path.parent / "duckdb.lock"
        self.lock_timeout = lock_timeout
        self._engine: Any = None
        self._synced_seq = -1

    # ---------------------------------------------------------------- errors

    def _full_error(self, exc: BaseException) -> StoreError:
        return StoreError(
            f"No space left on device for the provenance database {self.db_path}: {exc}",
            "the file system that holds it is full",
            f"free space there (df -h {self.db_path.parent}) and call tracker.sync() or query again; the merge "
            "was rolled back, the DuckDB file keeps what it had and the runs wait in the run index",
        )

    def _open_error(self, exc: BaseException) -> StoreError:
        """Why the DuckDB file cannot be opened or read, when it is not another program's lock."""
        if _no_space(exc):
            return self._full_error(exc)
        if "permission denied" in str(exc).lower():
            return StoreError(
                f"Cannot open the provenance database {self.db_path}: {exc}",
                "this user may not read or write the file or its folder",
                "fix the permissions, or use a db_path this user owns",
            )
        return StoreError(
            f"The provenance database {self.db_path} is damaged: {exc}",
            "the file was truncated or overwritten (a full disk or a crash while it was written or copied), "
            "or another program wrote it",
            f"move it away (mv {self.db_path} {self.db_path}.damaged); the next query or tracker.sync() rebuilds "
            "it from the run index, which holds every run",
        )

    # ---------------------------------------------------------------- connections

    def _connect(self, timeout: float | None = None) -> Any:
        import duckdb

        deadline = time.monotonic() + (self.lock_timeout if timeout is None else timeout)
        delay = 0.01
        while True:
            try:
                return duckdb.connect(str(self.db_path))
            except duckdb.Error as exc:
                if not _is_lock_conflict(exc):
                    raise self._open_error(exc) from exc
                if time.monotonic() > deadline:
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

    @contextmanager
    def _open(self, timeout: float | None = None) -> Iterator[Any]:
        """The DuckDB file, locked and open, with consist's tables in place."""
        with self._locked(timeout):
            con = self._connect(timeout)
            try:
                try:
                    con.execute(_DUCK_DDL)
                except Exception as exc:
                    raise self._open_error(exc) from exc
                yield con
            finally:
                con.close()

    # ---------------------------------------------------------------- sync

    def pending(self) -> bool:
        """True when the index holds rows that were not merged into DuckDB yet."""
        return self.index.max_seq() != self._synced_seq or not self.db_path.exists()

    def merge_later(self) -> bool:
        """Hand the pending merge to a detached process (:mod:`consist.store.merger`); False: merge here.

        Done only when this process has not loaded DuckDB (importing it and merging would be
        most of a short script's run time) and ``CONSIST_MERGE_ON_CLOSE`` is not ``wait``. The
        DuckDB file is then current for outside readers (the DuckDB CLI, pandas) about half a
        second after the process ends, or as soon as another program that holds the file
        lets go; queries through consist merge what is pending themselves, so they see
        every completed run at once.
        """
        if os.environ.get("CONSIST_MERGE_ON_CLOSE", "").strip().lower() == "wait" or "duckdb" in sys.modules:
            return False
        if self.db_path.exists() and self.index.max_seq() == self.index.merged_seq():
            return True  # nothing pending
        # `setsid -f` forks the merger off and returns at once: it is nobody's child to reap.
        try:
            subprocess.run(
                ["setsid", "-f", sys.executable, "-m", "consist.store.merger", str(self.db_path)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                close_fds=True, cwd="/", check=True, timeout=10,
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return False
        return True

    def sync(self, timeout: float | None = None) -> int:
        """Merge new index rows into the DuckDB file; returns how many rows were merged."""
        if not self.pending():
            return 0
        with self._open(timeout) as con:
            return self._merge(con)

    def _position(self, con: Any) -> tuple[int | None, str | None]:
        """Up to which sequence number, of which index generation, the DuckDB file was merged."""
        try:
            seq = con.execute("SELECT value FROM consist_meta WHERE key = 'synced_seq'").fetchone()
            gen = con.execute("SELECT value FROM consist_index WHERE key = 'generation'").fetchone()
        except Exception as exc:
            raise self._open_error(exc) from exc
        return (int(seq[0]) if seq else None), (gen[0] if gen else None)

    def _merge(self, con: Any, reconcile: bool = False) -> int:
        """Bring the DuckDB file up to the index, a window of about :data:`MERGE_WINDOW_RUNS` runs at a time.

        Each window is one DuckDB transaction that also records how far the file is merged, so
        memory stays bounded however many runs wait, and a merge that stops half-way (a full
        disk, a killed process) loses nothing: the next one continues after the last window.
        """
        last, generation = self._position(con)
        # The normal case: this index was merged into this file up to `last`, and both say so.
        known = not reconcile and generation == self.index.generation and last == self.index.merged_seq()
        top = self.index.max_seq()
        if known and top == last:
            self._synced_seq = top
            return 0
        done = last if known and last is not None else -1
        merged = 0
        first = True
        # DuckDB keeps the pages a merge writes in memory, up to most of the machine's, unless told otherwise.
        # The limit is a preference, never a reason to fail: a window that does not fit in it (one
        # transaction of very many rows, or primary-key indexes of a large file, which DuckDB cannot
        # write out) is rolled back and merged again without the limit.
        csvload.remove_stale(self.index.path.parent)
        con.execute(f"SET memory_limit = '{MERGE_MEMORY_MB}MB'")
        limited = True
        try:
            while first or done < top:
                upto = self.index.merge_window(done, top, MERGE_WINDOW_RUNS)
                try:
                    merged += self._merge_window(con, done, upto, adopt=first and not known)
                except _WindowOutOfMemory as exc:
                    if not limited:
                        raise self._merge_error(exc.__cause__ or exc) from exc.__cause__
                    con.execute("RESET memory_limit")
                    limited = False
                    continue
                done, first = upto, False
        finally:
            if limited:
                con.execute("RESET memory_limit")
        return merged

    def _merge_window(self, con: Any, after: int, upto: int, adopt: bool) -> int:
        lines = self.index.merge_lines(after, upto)
        folder = self.index.path.parent
        con.execute("BEGIN TRANSACTION")
        try:
            if adopt:
                # A new or replaced index, or a replaced DuckDB file: reconcile by primary key.
                self._adopt(con)
            for table, table_lines in lines.items():
                csvload.load(con, table, table_lines, folder)
            con.execute(
                "INSERT OR REPLACE INTO consist_meta VALUES ('synced_seq', ?), ('schema_version', ?)",
                [upto, DUCK_SCHEMA_VERSION],
            )
            con.execute("INSERT OR REPLACE INTO consist_index VALUES ('generation', ?)", [self.index.generation])
            con.execute("COMMIT")
        except Exception as exc:
            _rollback(con)
            if isinstance(exc, StoreError):
                raise
            if _no_space(exc) or _looks_damaged(exc):
                raise self._open_error(exc) from exc
            if _out_of_memory(exc):
                raise _WindowOutOfMemory() from exc
            raise self._merge_error(exc) from exc
        # Written out now, so that the next window starts from a small WAL and DuckDB lets go of
        # this window's pages. The window is committed already: a checkpoint that fails can wait.
        try:
            con.execute("CHECKPOINT")
        except Exception:  # e.g. another connection's transaction is open
            pass
        # Recorded after the commit: if this process dies in between, the next merge reconciles.
        self.index.set_meta("merged_seq", str(upto))
        self._synced_seq = upto
        return sum(len(v) for v in lines.values())

    def _merge_error(self, exc: BaseException) -> StoreError:
        return StoreError(
            f"Merging runs into {self.db_path} failed: {exc}",
            "the DuckDB file is damaged or was written by an incompatible program",
            "move the file away: the next query rebuilds it from the run index, which holds every run",
        )

    def _adopt(self, con: Any) -> dict[str, int]:
        """Copy the DuckDB file's rows that the index lacks into the index."""

        def rows(table: str, cols: tuple[str, ...]) -> list[dict[str, Any]]:
            cur = con.execute(f"SELECT {_index_select(cols)} FROM {table}")
            return [dict(zip(cols, r)) for r in cur.fetchall()]

        return self.index.adopt(
            rows("run", RUN_COLUMNS), rows("artifact", ARTIFACT_COLUMNS), rows("run_artifact", LINK_COLUMNS)
        )

    # ---------------------------------------------------------------- rebuilding the index

    def rebuild(
        self,
        timeout: float | None = None,
        object_stores: Iterable[str | os.PathLike[str]] = (),
        *,
        only_if_new: bool = False,
    ) -> dict[str, int] | None:
        """Reconcile the index with the DuckDB file now, whatever both record.

        Copies every run, artifact and link of the DuckDB file that the index lacks
        into the index, merges every index row into DuckDB, and registers the objects
        found in the object stores of the runs' run_dirs (and ``object_stores``).
        Returns how many rows and objects were added. ``only_if_new``: do nothing (and
        return None) when the index was merged into a DuckDB file before, as found
        under the lock (another process may have just done it).
        """
        with self._open(timeout) as con:
            if only_if_new and self.index.merged_seq() is not None:
                return None
            before = {t: self._count(t) for t in ("run", "artifact", "run_artifact")}
            self._merge(con, reconcile=True)
            run_dirs = [
                r[0] for r in con.execute("SELECT DISTINCT run_dir FROM run WHERE run_dir IS NOT NULL").fetchall()
            ]
        report = {t: self._count(t) - before[t] for t in before}
        roots = [Path(d) / ".consist" / "objects" for d in run_dirs] + [Path(p) for p in object_stores]
        report["objects"] = self._register_objects(roots)
        return {"runs": report["run"], "artifacts": report["artifact"], "links": report["run_artifact"],
                "objects": report["objects"]}  # fmt: skip

    def _count(self, table: str) -> int:
        row = self.index.query_one(f"SELECT count(*) AS n FROM {table}")
        return int(row["n"]) if row else 0

    def _register_objects(self, roots: Iterable[Path]) -> int:
        from ..objects import ObjectStore

        added = 0
        for root in dict.fromkeys(roots):  # once each, in order
            if not root.is_dir():
                continue
            items = []
            for digest, path in ObjectStore(root).all_objects():
                try:
                    items.append((digest, str(root), path.stat().st_size))
                except FileNotFoundError:
                    continue
            added += self.index.register_objects(items)
        return added

    def reconcile(self, timeout: float = 5.0) -> dict[str, int] | None:
        """Before a new run index records anything, copy the DuckDB file's past runs into it.

        Does nothing for an index that was merged into the DuckDB file before, or when
        there is no DuckDB file. A new index beside an existing DuckDB file means the
        old index was moved away (or lost): without this, past runs would not be cache
        hits and their run ids could be given out again. When the DuckDB file cannot
        be opened now, this warns and the next merge reconciles instead.
        """
        if self.index.merged_seq() is not None or not self.db_path.exists():
            return None
        try:
            return self.rebuild(timeout, only_if_new=True)
        except StoreError as exc:
            warnings.warn(
                f"The run index {self.index.path} is new, and the past runs in {self.db_path} could not be copied "
                f"into it yet ({exc}). Until they are (at the next merge), they are not cache hits.",
                ConsistWarning,
                stacklevel=3,
            )
            return None

    # ---------------------------------------------------------------- reading

    @contextmanager
    def read(self) -> Iterator[Any]:
        """A DuckDB connection on an up-to-date database, closed afterwards."""
        with self._open() as con:
            if self.pending():
                self._merge(con)
            try:
                yield con
            except Exception as exc:
                if _looks_damaged(exc):
                    raise self._open_error(exc) from exc
                raise

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


def _rollback(con: Any) -> None:
    """Roll back if a transaction is still open (a failed COMMIT has ended it already)."""
    try:
        con.execute("ROLLBACK")
    except Exception:
        pass


def _index_damaged(path: Path) -> bool:
    """Whether the index file exists and cannot be read as a database."""
    if not path.exists():
        return False
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60.0)
        try:
            return con.execute("PRAGMA quick_check").fetchone()[0] != "ok"
        finally:
            con.close()
    except sqlite3.DatabaseError:
        return True


def rebuild_index(
    db_path: str | os.PathLike[str],
    *,
    object_stores: Iterable[str | os.PathLike[str]] = (),
    timeout: float = 120.0,
) -> dict[str, Any]:
    """Rebuild the run index of the DuckDB file ``db_path`` from that file.

    For an index that is damaged or lost. A damaged index (and its ``-wal`` and
    ``-shm`` files) is moved aside to ``index.sqlite.damaged-<time>``, never
    deleted; then every run, artifact and link of the DuckDB file is copied into
    the index (an intact index keeps its own rows and gets the ones it lacks), and
    the objects in the stores of every recorded run_dir (plus ``object_stores``)
    are registered again. Runs that were only in the damaged index, not yet merged
    into DuckDB, cannot be recovered. The hash memo starts empty: each input is
    read once more when next hashed, each stored object when next restored.

    Stop the processes that use the database first. Returns how many runs,
    artifacts, links and objects were added, and where a damaged index was moved.
    """
    db = Path(db_path).resolve()
    if not db.is_file():
        raise StoreError(
            f"There is no provenance database at {db}",
            "the path is wrong, or the DuckDB file was deleted",
            "pass the db_path the trackers use; without the DuckDB file there is nothing to rebuild from",
        )
    path = index_path_for(db)
    moved = None
    if _index_damaged(path):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        moved = path.with_name(f"{path.name}.damaged-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            part = Path(f"{path}{suffix}")
            if part.exists():
                os.replace(part, f"{moved}{suffix}")
    index = SQLiteIndex(path)
    try:
        report: dict[str, Any] = DuckStore(db, index, lock_timeout=timeout).rebuild(timeout, object_stores) or {}
    finally:
        index.close()
    report["moved_aside"] = str(moved) if moved else None
    return report


def export_duckdb(index: RunIndex, path: str | os.PathLike[str]) -> dict[str, int]:
    """Write every run, artifact and link of ``index`` into a new DuckDB file at ``path``.

    For offline analysis of a history kept elsewhere (a PostgreSQL server): the file
    has the same tables as a tracker's own DuckDB file. It is written under a
    temporary name and renamed when complete, so a failed export leaves nothing.
    An existing file is never overwritten. Returns how many rows of each table.
    """
    import duckdb

    target = Path(path).resolve()
    if target.exists():
        raise StoreError(
            f"Cannot export the run history to {target}: the file exists",
            None,
            "choose a new path, or delete the old export first",
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    _top, runs, arts, links = index.changes_since(-1)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        con = duckdb.connect(str(tmp))
        try:
            con.execute(_DUCK_DDL)
            con.execute("BEGIN TRANSACTION")
            for table, rows in (("run", runs), ("artifact", arts), ("run_artifact", links)):
                csvload.load(con, table, csvload.lines_of(table, rows), target.parent)
            con.execute("INSERT OR REPLACE INTO consist_meta VALUES ('schema_version', ?)", [DUCK_SCHEMA_VERSION])
            con.execute("COMMIT")
        finally:
            con.close()
        os.replace(tmp, target)
    finally:
        for leftover in (tmp, Path(f"{tmp}.wal")):
            leftover.unlink(missing_ok=True)
    return {"runs": len(runs), "artifacts": len(arts), "links": len(links)}


__all__ = ["DUCK_SCHEMA_VERSION", "DuckStore", "export_duckdb", "rebuild_index"]
