"""The run index: what every backend records, and the logic they share.

A tracker writes each run, artifact and link to its run index first. The index
also holds what only the cache needs: which object stores hold which content
(``object``), the hash memo (``hash_memo``), the objects that runs in progress
are writing or restoring (``lease``, kept by prune_store()), the heartbeats of
running runs (``heartbeat``), the claims that make identical runs execute once
(``claim``), the index's own metadata (``index_meta``) and, for lookups by tag,
each run's tags (``run_tag``, kept by triggers on ``run``).

:class:`RunIndex` holds all of that logic once. A backend supplies a connection
and a handful of hooks: :class:`consist.store.sqlite.SQLiteIndex` (one machine,
SQLite in WAL mode beside the DuckDB file) and
:class:`consist.store.postgres.PostgresIndex` (a PostgreSQL server shared by many
nodes). SQL is written once, with ``?`` placeholders and the ``INSERT ... ON
CONFLICT`` forms both databases understand; a backend may translate it.

Each write stamps its rows with a sequence number taken from a counter under the
same write lock, so sequence order is commit order: the DuckDB mirror merges rows
in that order and prune_store() knows what was recorded while it looked.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from ..errors import StoreError
from .columns import ARTIFACT_COLUMNS, HOST, LINK_COLUMNS, RESTORE_LEASE_S, RUN_COLUMNS, pid_alive
from .lookups import IndexLookups

T = TypeVar("T")

#: How often a process refreshes the heartbeats of its running runs and claims (seconds).
HEARTBEAT_S = float(os.environ.get("CONSIST_HEARTBEAT_S", "10"))
#: A run or claim whose heartbeat is older than this is taken as dead (its host or process is gone).
#: Other hosts' processes cannot be checked directly, so this is what frees their claims.
EXPIRY_S = float(os.environ.get("CONSIST_LEASE_EXPIRY_S", "60"))


def _upsert(table: str, cols: Sequence[str], key: str) -> str:  # pragma: no mutate block
    update = ", ".join(f"{c} = excluded.{c}" for c in cols if c not in key.split(", "))
    marks = ",".join("?" * len(cols))
    return f"INSERT INTO {table} ({','.join(cols)}) VALUES ({marks}) ON CONFLICT ({key}) DO UPDATE SET {update}"


def _insert_new(table: str, cols: Sequence[str]) -> str:  # pragma: no mutate block
    return f"INSERT INTO {table} ({','.join(cols)}) VALUES ({','.join('?' * len(cols))}) ON CONFLICT DO NOTHING"


_RUN_UPSERT = _upsert("run", [*RUN_COLUMNS, "seq"], "id")
_RUN_INSERT = f"INSERT INTO run ({','.join([*RUN_COLUMNS, 'seq'])}) VALUES ({','.join('?' * (len(RUN_COLUMNS) + 1))})"
_ART_UPSERT = _upsert("artifact", [*ARTIFACT_COLUMNS, "seq"], "id")
_ART_INSERT = _insert_new("artifact", [*ARTIFACT_COLUMNS, "seq"])
_LINK_UPSERT = _upsert("run_artifact", ["run_id", "artifact_id", "direction", "key", "seq"], "run_id, direction, key")
_OBJECT_INSERT = _insert_new("object", ["hash", "store", "size"])
_LEASE_COLUMNS = ["hash", "kind", "run_id", "host", "pid", "thread", "taken_at"]
_LEASE_INSERT = f"INSERT INTO lease ({','.join(_LEASE_COLUMNS)}) VALUES ({','.join('?' * len(_LEASE_COLUMNS))})"
_HEARTBEAT_UPSERT = _upsert("heartbeat", ["run_id", "host", "pid", "beat_at"], "run_id")
_CLAIM_INSERT = _insert_new("claim", ["signature", "run_id", "host", "pid", "beat_at"])
_META_INSERT = _insert_new("index_meta", ["key", "value"])
_MEMO_UPSERT = _upsert(
    "hash_memo", ["dev", "ino", "size", "mtime_ns", "algo", "hash"], "dev, ino, size, mtime_ns, algo"
)
_META_UPSERT = _upsert("index_meta", ["key", "value"], "key")


class RunIndex(IndexLookups):
    """The shared run index logic. Thread-safe through one lock per connection.

    Subclasses open the connection and implement the hooks marked below.
    """

    #: Where the index lives, for messages (a file path, or a server URL without its password).
    location: str
    #: A random id given to the index when it was created (see :mod:`consist.store.duck`).
    generation: str
    #: SQLite-only: which index the lookup of a model's executed runs reads.
    _producers_hint = ""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._in_tx = False
        self._seq: int | None = None
        self._beating: set[str] = set()  # ids of this process's running runs (heartbeats, claims)
        self._running: set[str] = set()  # of those, the runs (the others are claim tokens)
        self._claims: dict[str, set[str]] = {}  # the signatures each holder claimed here
        self._beat_thread: threading.Thread | None = None
        self._beat_stop = threading.Event()

    # ---------------------------------------------------------------- backend hooks

    def _run(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Execute one statement; returns a cursor (``fetchall``/``fetchone`` give dicts, ``rowcount``)."""
        raise NotImplementedError

    def _run_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        """Execute one statement per row; returns how many rows it changed."""
        raise NotImplementedError

    def make_durable(self) -> None:
        """Make every commit wait until it is on disk (a server database does so already)."""

    def _begin_write(self) -> None:
        """Begin a transaction that holds the index's write lock until it ends."""
        raise NotImplementedError

    def _begin_snapshot(self) -> None:
        """Begin a transaction whose reads all see one snapshot."""
        raise NotImplementedError

    def _end(self, commit: bool) -> None:
        raise NotImplementedError

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn the backend's storage errors into StoreErrors that say what to do."""
        yield

    def _retryable(self, exc: BaseException) -> bool:
        """Whether a failed transaction may be run again (a lost connection, a serialization failure)."""
        return False

    def _reconnect(self) -> None:
        """Open the connection again after it was lost."""

    def close(self) -> None:
        raise NotImplementedError

    # ---------------------------------------------------------------- transactions

    @contextmanager
    def write(self, stamp: bool = True) -> Iterator[Any]:
        """A write transaction; yields the sequence number stamped on its rows.

        ``stamp=False`` takes no sequence number (bookkeeping that is not merged into
        DuckDB: leases, the object registry, index metadata) and yields None; a
        nested ``write()`` that needs one takes it then, in the same transaction.
        Prefer :meth:`atomic`, which also retries after a lost connection.
        """
        with self._lock:
            if self._in_tx:  # nested: join the outer transaction
                if stamp and self._seq is None:
                    self._seq = self._next_seq()
                yield self._seq
                return
            with self._guard():
                self._begin_write()
                self._in_tx = True
                self._seq = None
                try:
                    if stamp:
                        self._seq = self._next_seq()
                    yield self._seq
                    self._end(commit=True)
                except BaseException:
                    # A failed COMMIT has already ended the transaction; _end(False) tolerates that.
                    self._end(commit=False)
                    raise
                finally:
                    self._in_tx = False
                    self._seq = None

    def atomic(self, fn: Callable[[], T], stamp: bool = True, attempts: int = 5) -> T:
        """Run ``fn`` in one write transaction: all of its writes are recorded, or none.

        When the transaction fails because the connection was lost (a database
        server restarted, a network blip), it is rolled back and ``fn`` runs again on
        a new connection, up to ``attempts`` times. ``fn`` must therefore only write
        through this index. Inside another transaction it simply joins it.
        """
        if self._in_tx:
            with self.write(stamp):
                return fn()
        delay = 0.2
        for attempt in range(1, attempts + 1):
            try:
                with self.write(stamp):
                    return fn()
            except Exception as exc:
                # _guard() may have wrapped the backend's error in a StoreError that says what to do.
                cause = exc.__cause__ if isinstance(exc, StoreError) and exc.__cause__ is not None else exc
                if attempt == attempts or not self._retryable(cause):
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                self._reconnect()
        raise AssertionError("unreachable")

    def _next_seq(self) -> int:
        return int(self._run("UPDATE counter SET seq = seq + 1 WHERE id = 1 RETURNING seq").fetchone()["seq"])

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return self._read(lambda: self._run(sql, params).fetchall())

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        return self._read(lambda: self._run(sql, params).fetchone())

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        with self._lock, self._guard():
            self._run(sql, params)

    def _read(self, fn: Callable[[], T]) -> T:
        """A read; outside a transaction it is tried again once on a new connection if that was lost."""
        with self._lock, self._guard():
            try:
                return fn()
            except Exception as exc:
                if self._in_tx or not self._retryable(exc):
                    raise
            self._reconnect()
            return fn()

    # ---------------------------------------------------------------- writes

    def upsert_run(self, row: dict[str, Any], changed: Sequence[str] | None = None) -> None:
        """Record ``row`` as the run's whole record (inserted, or replacing the one under its id).

        ``changed`` names the only columns that differ from the record already under
        its id: just those are written (with the new sequence number), which leaves
        every index over the other columns untouched. Without such a record the whole
        row is inserted.
        """

        def write() -> None:
            if changed is None or not self._update_run(row, changed):
                self._run(_RUN_UPSERT, [row.get(c) for c in RUN_COLUMNS] + [self._seq])
            if row.get("status") != "running":
                # The run ended: its outputs are referenced by its record from now on (or not needed),
                # and any restore this thread began before has ended too. Its heartbeat and claim end.
                self._run(
                    "DELETE FROM lease WHERE run_id = ? OR (run_id IS NULL AND host = ? AND pid = ? AND thread = ?)",
                    (row.get("id"), HOST, os.getpid(), threading.get_ident()),
                )
                self._run("DELETE FROM heartbeat WHERE run_id = ?", (row.get("id"),))
                self._run("DELETE FROM claim WHERE run_id = ?", (row.get("id"),))

        self.atomic(write)
        if row.get("status") != "running":
            self._stop_beating(row.get("id"))

    def _update_run(self, row: dict[str, Any], changed: Sequence[str]) -> bool:
        """Write the ``changed`` columns of the run under ``row["id"]``; False if there is no such run."""
        cols = [c for c in changed if c in RUN_COLUMNS and c != "id"]
        sets = "".join(f"{c} = ?, " for c in cols)
        cursor = self._run(
            f"UPDATE run SET {sets}seq = ? WHERE id = ?", [*(row.get(c) for c in cols), self._seq, row["id"]]
        )
        return bool(cursor.rowcount)

    def claim_run_id(self, wanted: str, row: dict[str, Any], claim: tuple[str, str] | None = None) -> str:
        """Insert a new run under ``wanted`` or, if taken, ``wanted~2``, ``wanted~3``, ...

        Earlier runs with the same id are never touched. A running run gets a heartbeat;
        ``claim`` (signature, token), held under a token until now, passes to the run.
        """

        def write() -> str:
            run_id = wanted
            n = 1
            while self._run("SELECT 1 AS x FROM run WHERE id = ?", (run_id,)).fetchone():
                n += 1
                run_id = f"{wanted}~{n}"
            values = {**row, "id": run_id}
            self._run(_RUN_INSERT, [values.get(c) for c in RUN_COLUMNS] + [self._seq])
            if values.get("status") == "running":
                self._run(
                    _HEARTBEAT_UPSERT,
                    (run_id, HOST, os.getpid(), time.time()),
                )
            if claim is not None:
                self._run("UPDATE claim SET run_id = ? WHERE signature = ? AND run_id = ?", (run_id, *claim))
            return run_id

        run_id = self.atomic(write)
        if row.get("status") == "running":
            self._running.add(run_id)
            self._start_beating(run_id)
        if claim is not None:
            self._claims.get(claim[1], set()).discard(claim[0])
            self._claims.setdefault(run_id, set()).add(claim[0])
            self._stop_beating_if_idle(claim[1])  # the claim beats as the run's from now on
        return run_id

    def add_artifact(self, row: dict[str, Any], *, replace: bool = False) -> None:
        sql = _ART_UPSERT if replace else _ART_INSERT
        self.atomic(lambda: self._run(sql, [row.get(c) for c in ARTIFACT_COLUMNS] + [self._seq]))

    def link(self, run_id: str, artifact_id: str, direction: str, key: str) -> None:
        self.atomic(lambda: self._run(_LINK_UPSERT, (run_id, artifact_id, direction, key, self._seq)))

    def add_artifacts(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert many new artifacts in one statement batch (the members of a directory output)."""
        if rows:
            self.atomic(
                lambda: self._run_many(_ART_INSERT, [[r.get(c) for c in ARTIFACT_COLUMNS] + [self._seq] for r in rows])
            )

    def link_many(self, run_id: str, links: Sequence[tuple[str, str]], direction: str) -> None:
        """Link many ``(artifact id, key)`` pairs to a run in one direction, in one statement batch."""
        if links:
            self.atomic(
                lambda: self._run_many(_LINK_UPSERT, [(run_id, art, direction, key, self._seq) for art, key in links])
            )

    def add_object(self, digest: str, store: str, size: int) -> None:
        self.atomic(lambda: self._run(_OBJECT_INSERT, (digest, store, size)), stamp=False)

    def register_objects(self, items: Iterable[tuple[str, str, int]]) -> int:
        """Record (hash, store, size) rows in the object registry; returns how many were new."""
        rows = list(items)
        return self.atomic(lambda: self._run_many(_OBJECT_INSERT, rows), stamp=False)

    def drop_objects(self, items: Iterable[tuple[str, str]]) -> None:
        rows = list(items)
        self.atomic(lambda: self._run_many("DELETE FROM object WHERE hash = ? AND store = ?", rows), stamp=False)

    def object_stores(self, digest: str) -> list[str]:
        return [r["store"] for r in self.query("SELECT store FROM object WHERE hash = ?", (digest,))]

    # ---------------------------------------------------------------- leases

    def lease_written(self, run_id: str, digest: str, kind: str, store: str, size: int) -> None:
        """Register a stored output of the running run ``run_id`` and keep it from prune_store().

        The lease ends when the run's record gets its final status (see :meth:`upsert_run`),
        which references the output from then on, or when its process is found dead.
        """

        def write() -> None:
            self._run(_OBJECT_INSERT, (digest, store, size))
            self._run(_LEASE_INSERT, (digest, kind, run_id, HOST, os.getpid(), None, time.time()))

        self.atomic(write, stamp=False)

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

        def write() -> None:
            self._run("DELETE FROM lease WHERE run_id IS NULL AND host = ? AND pid = ? AND thread = ?", me)
            self._run_many(_LEASE_INSERT, [(h, kind, None, *me, now) for h, kind in rows])

        self.atomic(write, stamp=False)

    def end_restore_lease(self) -> None:
        """End the restore lease of this thread (see :meth:`lease_restoring`)."""
        me = (HOST, os.getpid(), threading.get_ident())
        self.atomic(
            lambda: self._run("DELETE FROM lease WHERE run_id IS NULL AND host = ? AND pid = ? AND thread = ?", me),
            stamp=False,
        )

    def leases(self, now: float | None = None) -> tuple[list[dict[str, Any]], list[int]]:
        """The leases in force, as ``(hash, kind)`` rows, and the rowids of those that ended.

        A lease of a run holds while that run is ``running``; a restore's lease for
        :data:`RESTORE_LEASE_S`. On this host either ends when its process is gone
        (other hosts' processes cannot be checked: their runs hold until reaped).
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

    # ---------------------------------------------------------------- heartbeats and interrupted runs

    def _start_beating(self, run_id: str) -> None:
        with self._lock:
            self._beating.add(run_id)
            if self._beat_thread is None or not self._beat_thread.is_alive():
                self._beat_stop.clear()
                self._beat_thread = threading.Thread(target=self._beat_loop, name="consist-heartbeat", daemon=True)
                self._beat_thread.start()

    def _stop_beating(self, run_id: Any) -> None:
        """The run ``run_id`` ended: its heartbeat and its claims are gone."""
        with self._lock:
            self._running.discard(run_id)
            self._claims.pop(run_id, None)
            self._beating.discard(run_id)

    def _beat_loop(self) -> None:
        while not self._beat_stop.wait(HEARTBEAT_S):
            try:
                self.beat()
            except Exception:  # a lost connection: the next beat tries again
                continue

    def beat(self) -> None:
        """Refresh the heartbeats and claims of this process's running runs."""
        if not self._beating:
            return
        now = time.time()

        def write() -> None:
            self._run("UPDATE heartbeat SET beat_at = ? WHERE host = ? AND pid = ?", (now, HOST, os.getpid()))
            self._run("UPDATE claim SET beat_at = ? WHERE host = ? AND pid = ?", (now, HOST, os.getpid()))

        self.atomic(write, stamp=False)

    def _gone(self, row: dict[str, Any], now: float) -> bool:
        """Whether the process behind a heartbeat or claim row has ended."""
        if row["host"] == HOST and int(row["pid"]) != os.getpid():
            return not pid_alive(int(row["pid"]))
        if row["host"] == HOST:
            return False  # this process: ended runs delete their rows themselves
        return row["beat_at"] < now - EXPIRY_S  # another host: only its heartbeat can tell

    def reap_interrupted(self) -> list[str]:
        """Mark running runs whose process ended as ``interrupted``; returns their ids.

        On this host a run's process is checked directly; a run of another host is
        taken as dead when its heartbeat stopped for :data:`EXPIRY_S` (its node
        crashed or lost the network). Pids alone would mislead: they repeat across nodes.
        """
        now = time.time()
        rows = self.query(
            "SELECT r.id, r.pid, r.host, h.beat_at FROM run r LEFT JOIN heartbeat h ON h.run_id = r.id "
            "WHERE r.status = 'running'"
        )
        reaped = []
        for row in rows:
            if row["pid"] is None or row["host"] is None:
                continue
            if row["beat_at"] is None and row["host"] != HOST:
                continue  # written by an older consist without heartbeats: cannot tell
            if not self._gone({**row, "beat_at": row["beat_at"] or 0.0}, now):
                continue
            reason = (
                f"process {row['pid']} ended before the run finished"
                if row["host"] == HOST
                else f"no heartbeat from {row['host']} (process {row['pid']}) for {EXPIRY_S:.0f} s"
            )

            def mark(run_id: str = row["id"], why: str = reason) -> bool:
                full = self._run("SELECT * FROM run WHERE id = ?", (run_id,)).fetchone()
                if not full or full["status"] != "running":
                    return False
                full.update(status="interrupted", ended_at=time.time(), error=why)
                self._run(_RUN_UPSERT, [full.get(c) for c in RUN_COLUMNS] + [self._seq])
                self._run("DELETE FROM heartbeat WHERE run_id = ?", (run_id,))
                self._run("DELETE FROM claim WHERE run_id = ?", (run_id,))
                return True

            if self.atomic(mark):
                reaped.append(row["id"])
        return reaped

    # ---------------------------------------------------------------- claims (one execution per signature)

    def try_claim(self, signature: str, run_id: str) -> tuple[bool, dict[str, Any] | None]:
        """Claim the execution of ``signature`` for ``run_id``: ``(claimed, previous holder)``.

        ``(True, None)``: the claim was free and is now this run's. ``(True, row)``: it
        was taken over from a holder that is gone (its process ended, or its heartbeat
        stopped for :data:`EXPIRY_S`). ``(False, row)``: ``row`` (``run_id``, ``host``,
        ``pid``, ``beat_at``) holds it.
        """
        now = time.time()
        me = (signature, run_id, HOST, os.getpid(), now)

        def write() -> tuple[bool, dict[str, Any] | None]:
            holder = self._run("SELECT * FROM claim WHERE signature = ?", (signature,)).fetchone()
            if holder is None:
                self._run(_CLAIM_INSERT, me)
                return True, None
            if holder["run_id"] == run_id:
                return True, None
            if not self._gone(holder, now):
                return False, holder
            self._run(
                "UPDATE claim SET run_id = ?, host = ?, pid = ?, beat_at = ? WHERE signature = ?",
                (run_id, HOST, os.getpid(), now, signature),
            )
            return True, holder

        claimed, holder = self.atomic(write, stamp=False)
        if claimed:
            self._claims.setdefault(run_id, set()).add(signature)
            self._start_beating(run_id)
        return claimed, holder

    def release_claim(self, signature: str, run_id: str) -> None:
        self.atomic(
            lambda: self._run("DELETE FROM claim WHERE signature = ? AND run_id = ?", (signature, run_id)), stamp=False
        )
        self._claims.get(run_id, set()).discard(signature)
        self._stop_beating_if_idle(run_id)

    def _stop_beating_if_idle(self, holder: str) -> None:
        """Stop refreshing ``holder`` (a claim token) once it holds no claim here and is no running run."""
        with self._lock:
            if not self._claims.get(holder) and holder not in self._running:
                self._claims.pop(holder, None)
                self._beating.discard(holder)

    def claim_of(self, signature: str) -> dict[str, Any] | None:
        return self.query_one("SELECT * FROM claim WHERE signature = ?", (signature,))

    # ---------------------------------------------------------------- index metadata

    def meta(self, key: str) -> str | None:
        row = self.query_one("SELECT value FROM index_meta WHERE key = ?", (key,))
        return None if row is None else row["value"]

    def set_meta(self, key: str, value: str) -> None:
        self.atomic(lambda: self._run(_META_UPSERT, (key, value)), stamp=False)

    def merged_seq(self) -> int | None:
        """The sequence number this index was last merged into DuckDB up to (None: never merged)."""
        value = self.meta("merged_seq")
        return None if value is None else int(value)

    def _generation(self) -> str:
        """The index's generation id, created with the index (first writer wins)."""
        value = self.meta("generation")
        if value is not None:
            return value
        self.atomic(lambda: self._run(_META_INSERT, ("generation", uuid.uuid4().hex)),
                    stamp=False)  # fmt: skip
        value = self.meta("generation")
        assert value is not None
        return value

    def adopt(
        self, runs: Sequence[dict[str, Any]], arts: Sequence[dict[str, Any]], links: Sequence[dict[str, Any]]
    ) -> dict[str, int]:
        """Copy rows of a DuckDB file into the index, stamped with sequence number 0.

        Rows this index wrote itself (sequence number above 0) are never replaced;
        rows copied before are refreshed. Returns how many rows of each table were
        added or refreshed.
        """

        def write() -> dict[str, int]:
            counts = {}
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
                counts[table] = self._run_many(sql, [[r.get(c) for c in cols] for r in rows])
            return counts

        return self.atomic(write, stamp=False)

    # ---------------------------------------------------------------- hash memo

    def memo_get(self, key: tuple[int, int, int, int], algo: str) -> str | None:
        row = self.query_one(
            "SELECT hash FROM hash_memo WHERE dev=? AND ino=? AND size=? AND mtime_ns=? AND algo=?", (*key, algo)
        )
        return row["hash"] if row else None

    def memo_put(self, key: tuple[int, int, int, int], algo: str, digest: str) -> None:
        # The memo needs no sequence number: a plain autocommit statement (or the open transaction) is enough.
        with self._lock, self._guard():
            self._run(_MEMO_UPSERT, (*key, algo, digest))

    def memo_put_many(self, items: Sequence[tuple[tuple[int, int, int, int], str, str]]) -> None:
        """Remember many ``(stat key, algo, hash)`` at once, in one transaction."""
        rows = [(*key, algo, digest) for key, algo, digest in items]
        if rows:
            self.atomic(lambda: self._run_many(_MEMO_UPSERT, rows), stamp=False)

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
        """The newest completed runs of ``model`` that executed (not cache hits): id and identity.

        Read through the partial index of executed runs, so the model's cache hits,
        however many, are never walked (a miss asks this to explain itself, and
        needs only these two columns of each; the config, which can be large, only
        of the nearest, from :meth:`run`).
        """
        return self.query(
            f"SELECT id, identity FROM run {self._producers_hint}"
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

    def merge_window(self, after: int, top: int, runs: int = 5000) -> int:
        """The end of the next window of rows to merge after sequence number ``after``.

        About ``runs`` runs, ``2 * runs`` artifacts or ``4 * runs`` links, whichever comes first
        (a run with a directory output of many files records as many member artifacts and links).
        A window always ends at a whole transaction's sequence number (never beyond ``top``), so
        merging window by window keeps each transaction's rows together.
        """
        end = top
        for table, rows in (("run", runs), ("artifact", 2 * runs), ("run_artifact", 4 * runs)):
            sql = f"SELECT seq FROM {table} WHERE seq > ? ORDER BY seq LIMIT 1 OFFSET ?"
            row = self.query_one(sql, (after, rows - 1))
            if row is not None:
                end = min(end, int(row["seq"]))
        return end

    def changes_between(
        self, after: int, upto: int
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        """The runs, artifacts and links written with a sequence number in ``(after, upto]``, in one snapshot.

        A row written again later carries a later sequence number: it is left for the next merge.
        """
        with self._lock, self._guard():
            self._begin_snapshot()
            try:
                window = (after, upto)
                runs = self._run("SELECT * FROM run WHERE seq > ? AND seq <= ?", window).fetchall()
                arts = self._run("SELECT * FROM artifact WHERE seq > ? AND seq <= ?", window).fetchall()
                links = self._run("SELECT * FROM run_artifact WHERE seq > ? AND seq <= ?", window).fetchall()
            finally:
                self._end(commit=True)
        return runs, arts, links

    def merge_lines(self, after: int, upto: int) -> dict[str, list[str]]:
        """:meth:`changes_between` as the CSV lines a merge loads into DuckDB (see :mod:`.csvload`), by table."""
        from .csvload import lines_of

        runs, arts, links = self.changes_between(after, upto)
        return {"run": lines_of("run", runs), "artifact": lines_of("artifact", arts),
                "run_artifact": lines_of("run_artifact", links)}  # fmt: skip

    def changes_since(self, seq: int) -> tuple[int, list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        """The current sequence number and the rows written after ``seq``, read in one snapshot.

        ``seq=-1`` includes the rows copied from a DuckDB file (sequence number 0).
        """
        with self._lock, self._guard():
            self._begin_snapshot()
            try:
                top = int(self._run("SELECT seq FROM counter WHERE id = 1").fetchone()["seq"])
                runs = self._run("SELECT * FROM run WHERE seq > ?", (seq,)).fetchall()
                arts = self._run("SELECT * FROM artifact WHERE seq > ?", (seq,)).fetchall()
                links = self._run("SELECT * FROM run_artifact WHERE seq > ?", (seq,)).fetchall()
            finally:
                self._end(commit=True)
        return top, runs, arts, links


def no_such_schema(location: str, version: int, supported: int) -> StoreError:
    return StoreError(
        f"The run index {location} has schema version {version}; this consist understands up to {supported}",
        "a newer consist wrote this database",
        "upgrade consist (pip install -U consist) on every machine that uses it",
    )
