"""The run index and the provenance tables on a PostgreSQL server.

For runs spread over many nodes (Slurm jobs, Dask workers) that share one
history and one cache: ``Tracker(run_dir, db_url="postgresql://user@host/db")``.
SQLite must not be shared over NFS, Lustre or GPFS (its WAL mode needs memory
shared on one host); a PostgreSQL server takes writes from every node.

Two schemas are created in the database:

- ``consist_index``: the run index, with the same tables as the embedded one
  (:mod:`consist.store.index`), written by every tracker; its ``schema_version``
  table records which migrations ran, so an older consist refuses a newer schema.
- ``consist``: the query tables ``run``, ``artifact`` and ``run_artifact``, as views
  of the index with JSON and timestamp columns, the same columns as a tracker's
  DuckDB file. ``Session(tracker.engine)``, :meth:`Tracker.history` and
  ``load_df`` read them directly: there is no DuckDB file to merge into
  (:meth:`Tracker.export_duckdb` writes one for offline analysis).

Writes take one transaction-scoped advisory lock, as SQLite's write lock does,
so sequence order stays commit order and prune_store() sees every lease. A
transaction that fails because the connection was lost is rolled back by the
server and tried again on a new connection (:meth:`RunIndex.atomic`): a run is
recorded whole or not at all.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import StoreError
from .columns import ARTIFACT_COLUMNS, JSON_COLUMNS, LINK_COLUMNS, RUN_COLUMNS, TIMESTAMP_COLUMNS
from .index import RunIndex, no_such_schema
from .lookups import _meta_key

SCHEMA_VERSION = 2
INDEX_SCHEMA = "consist_index"
QUERY_SCHEMA = "consist"
#: The advisory lock every write transaction takes ("consist" in ASCII).
_WRITE_LOCK = 0x636F6E73697374

_INDEX_TABLES = """
CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY CHECK (id = 1), seq BIGINT NOT NULL);
INSERT INTO counter VALUES (1, 0) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS run (
    id TEXT PRIMARY KEY, name TEXT, model TEXT, status TEXT, parent_run_id TEXT,
    year INTEGER, iteration INTEGER, tags TEXT, signature TEXT, code_version TEXT,
    config_hash TEXT, input_hash TEXT, config TEXT, identity TEXT,
    cache_hit INTEGER, cache_source TEXT, cache_epoch INTEGER, error TEXT, meta TEXT,
    run_dir TEXT, pid BIGINT, host TEXT, started_at DOUBLE PRECISION, ended_at DOUBLE PRECISION,
    seq BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS run_by_signature ON run (signature, status, cache_hit, ended_at);
CREATE INDEX IF NOT EXISTS run_by_model ON run (model, ended_at);
CREATE INDEX IF NOT EXISTS run_by_status ON run (status);
CREATE INDEX IF NOT EXISTS run_by_seq ON run (seq);
CREATE INDEX IF NOT EXISTS run_by_parent ON run (parent_run_id);
CREATE INDEX IF NOT EXISTS run_producers_by_model ON run (model, ended_at) WHERE cache_hit = 0 AND status = 'completed';
CREATE TABLE IF NOT EXISTS artifact (
    id TEXT PRIMARY KEY, key TEXT, uri TEXT, hash TEXT, size BIGINT, kind TEXT,
    driver TEXT, run_id TEXT, created_at DOUBLE PRECISION, meta TEXT, seq BIGINT NOT NULL, location TEXT);
CREATE INDEX IF NOT EXISTS artifact_by_hash ON artifact (hash);
CREATE INDEX IF NOT EXISTS artifact_by_key ON artifact (key);
CREATE INDEX IF NOT EXISTS artifact_by_seq ON artifact (seq);
CREATE TABLE IF NOT EXISTS run_artifact (
    run_id TEXT NOT NULL, artifact_id TEXT NOT NULL, direction TEXT NOT NULL, key TEXT NOT NULL,
    seq BIGINT NOT NULL, PRIMARY KEY (run_id, direction, key));
CREATE INDEX IF NOT EXISTS link_by_artifact ON run_artifact (artifact_id);
CREATE INDEX IF NOT EXISTS link_by_seq ON run_artifact (seq);
CREATE TABLE IF NOT EXISTS object (hash TEXT NOT NULL, store TEXT NOT NULL, size BIGINT, PRIMARY KEY (hash, store));
CREATE TABLE IF NOT EXISTS hash_memo (
    dev NUMERIC NOT NULL, ino NUMERIC NOT NULL, size BIGINT NOT NULL, mtime_ns BIGINT NOT NULL,
    algo TEXT NOT NULL, hash TEXT NOT NULL, PRIMARY KEY (dev, ino, size, mtime_ns, algo));
CREATE TABLE IF NOT EXISTS lease (
    rowid BIGSERIAL PRIMARY KEY, hash TEXT NOT NULL, kind TEXT, run_id TEXT, host TEXT NOT NULL,
    pid BIGINT NOT NULL, thread BIGINT, taken_at DOUBLE PRECISION NOT NULL);
CREATE INDEX IF NOT EXISTS lease_by_run ON lease (run_id);
CREATE TABLE IF NOT EXISTS index_meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS heartbeat (run_id TEXT PRIMARY KEY, host TEXT NOT NULL, pid BIGINT NOT NULL,
    beat_at DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS claim (signature TEXT PRIMARY KEY, run_id TEXT NOT NULL, host TEXT NOT NULL,
    pid BIGINT NOT NULL, beat_at DOUBLE PRECISION NOT NULL);
"""


def _view(table: str, cols: Sequence[str]) -> str:
    def one(c: str) -> str:
        if c in JSON_COLUMNS:
            return f"{c}::json AS {c}"
        if c in TIMESTAMP_COLUMNS:
            return f"to_timestamp({c}) AT TIME ZONE 'UTC' AS {c}"
        if c == "cache_hit":
            return f"({c} <> 0) AS {c}"
        return c

    return (
        f"CREATE OR REPLACE VIEW {QUERY_SCHEMA}.{table} AS "
        f"SELECT {', '.join(one(c) for c in cols)} FROM {INDEX_SCHEMA}.{table}"
    )


# The lookups' indexes (see consist.store.sqlite: the same, with the same names). A run's tags go to
# run_tag through a trigger; five indexes of version 1 give way to ones that also give the newest first.
_LOOKUP_INDEXES = """
DROP INDEX IF EXISTS run_by_status;
DROP INDEX IF EXISTS run_by_parent;
DROP INDEX IF EXISTS artifact_by_hash;
DROP INDEX IF EXISTS artifact_by_key;
DROP INDEX IF EXISTS link_by_artifact;
CREATE INDEX IF NOT EXISTS run_by_started ON run (started_at);
CREATE INDEX IF NOT EXISTS run_by_status_started ON run (status, started_at);
CREATE INDEX IF NOT EXISTS run_by_parent_started ON run (parent_run_id, started_at);
CREATE INDEX IF NOT EXISTS run_by_model_started ON run (model, started_at);
CREATE INDEX IF NOT EXISTS run_by_year_started ON run (year, started_at);
CREATE INDEX IF NOT EXISTS run_by_stage ON run ((meta::jsonb ->> 'stage'), started_at);
CREATE INDEX IF NOT EXISTS run_by_phase ON run ((meta::jsonb ->> 'phase'), started_at);
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
CREATE TABLE IF NOT EXISTS run_tag (run_id TEXT NOT NULL, tag TEXT NOT NULL, started_at DOUBLE PRECISION,
    PRIMARY KEY (run_id, tag));
CREATE INDEX IF NOT EXISTS run_tag_by_tag ON run_tag (tag, started_at);
INSERT INTO run_tag (run_id, tag, started_at)
SELECT DISTINCT r.id, e #>> '{}', r.started_at FROM run r
CROSS JOIN LATERAL jsonb_array_elements(CASE WHEN jsonb_typeof(r.tags::jsonb) = 'array' THEN r.tags::jsonb
    ELSE '[]'::jsonb END) e
WHERE jsonb_typeof(e) = 'string' ON CONFLICT DO NOTHING
"""
_TAG_TRIGGER = [
    f"""CREATE OR REPLACE FUNCTION {INDEX_SCHEMA}.run_tag_sync() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        DELETE FROM {INDEX_SCHEMA}.run_tag WHERE run_id = OLD.id;
    END IF;
    IF TG_OP <> 'DELETE' AND jsonb_typeof(NEW.tags::jsonb) = 'array' THEN
        INSERT INTO {INDEX_SCHEMA}.run_tag (run_id, tag, started_at)
        SELECT DISTINCT NEW.id, e #>> '{{}}', NEW.started_at FROM jsonb_array_elements(NEW.tags::jsonb) e
        WHERE jsonb_typeof(e) = 'string' ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END $$""",
    f"CREATE TRIGGER run_tag_insert AFTER INSERT ON {INDEX_SCHEMA}.run FOR EACH ROW WHEN (NEW.tags IS NOT NULL) "
    f"EXECUTE FUNCTION {INDEX_SCHEMA}.run_tag_sync()",
    # A run's completion writes its row again with the same tags: the WHEN clause spares it the function call.
    f"CREATE TRIGGER run_tag_update AFTER UPDATE OF id, tags, started_at ON {INDEX_SCHEMA}.run FOR EACH ROW "
    "WHEN (OLD.id IS DISTINCT FROM NEW.id OR OLD.tags IS DISTINCT FROM NEW.tags "
    f"OR OLD.started_at IS DISTINCT FROM NEW.started_at) EXECUTE FUNCTION {INDEX_SCHEMA}.run_tag_sync()",
    f"CREATE TRIGGER run_tag_delete AFTER DELETE ON {INDEX_SCHEMA}.run FOR EACH ROW "
    f"EXECUTE FUNCTION {INDEX_SCHEMA}.run_tag_sync()",
]

# What each schema version adds to the one before, in order.
_MIGRATIONS: dict[int, list[str]] = {
    1: [
        *(s.strip() for s in _INDEX_TABLES.split(";") if s.strip()),
        f"CREATE SCHEMA IF NOT EXISTS {QUERY_SCHEMA}",
        _view("run", RUN_COLUMNS),
        _view("artifact", ARTIFACT_COLUMNS),
        _view("run_artifact", LINK_COLUMNS),
    ],
    2: [*(s.strip() for s in _LOOKUP_INDEXES.split(";") if s.strip()), *_TAG_TRIGGER],
}


def redact(url: str) -> str:
    """The URL without its password, for messages and records."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{netloc[-1]}"))


def libpq_url(url: str) -> str:
    """``postgresql+psycopg://`` and ``postgres://`` URLs as libpq takes them."""
    return re.sub(r"^postgres(?:ql)?(?:\+\w+)?://", "postgresql://", url)


def is_postgres_url(url: str) -> bool:
    return re.match(r"^postgres(?:ql)?(?:\+\w+)?://", url) is not None


@lru_cache(maxsize=512)
def _translate(sql: str) -> str:
    """SQLite-style placeholders as psycopg takes them (consist's SQL has no ``?`` or ``%`` literals)."""
    return sql.replace("%", "%%").replace("?", "%s")


def _params(params: Sequence[Any]) -> list[Any]:
    # The index keeps flags as integers, as SQLite does.
    return [int(v) if isinstance(v, bool) else v for v in params]


def _connect(url: str, schema: str, location: str, read_only: bool = False) -> Any:
    try:
        import psycopg
        from psycopg.rows import dict_row
    except ImportError as exc:
        raise StoreError(
            "A PostgreSQL db_url needs the psycopg package",
            "consist was installed without its cluster extra",
            "pip install 'consist[cluster]'",
        ) from exc
    try:
        return psycopg.connect(
            libpq_url(url), autocommit=True, row_factory=dict_row,
            options=f"-c search_path={schema}" + (" -c default_transaction_read_only=on" if read_only else ""),
            connect_timeout=30, application_name="consist",
        )  # fmt: skip
    except psycopg.Error as exc:
        raise StoreError(
            f"Cannot connect to the PostgreSQL database {location}: {str(exc).strip()}",
            "the server is not running or not reachable from this node, or the user, password or database is wrong",
            "check the URL (postgresql://user:password@host:port/database) with psql, and that the server "
            "accepts connections from this host (listen_addresses, pg_hba.conf)",
        ) from exc


class PostgresIndex(RunIndex):
    """The run index in a PostgreSQL database, shared by every node."""

    #: Before schema version 2 (a read-only look at an older database): tags as JSON text.
    TAG_CONTAINS = "jsonb_exists(run.tags::jsonb, ?)"
    # As an equality, the planner would drop the leading filter's column from the ORDER BY and could read
    # the newest runs of all instead, filtering them: for a value whose runs are old (an earlier code
    # version), most of the table. As a range of one value, only the leading filter's index gives the order.
    LEADS = "{0} >= ? AND {0} <= ?"
    _ORDER_BY_LEAD = True

    def __init__(self, url: str, *, read_only: bool = False) -> None:
        super().__init__()
        self.url = url
        self.location = redact(url)
        #: The schema version of the database (older than :data:`SCHEMA_VERSION` only when opened read-only).
        self.schema_version = SCHEMA_VERSION
        self._conn = _connect(url, INDEX_SCHEMA, self.location, read_only=read_only)
        if read_only:  # for looking only (the command line): no schema is created or upgraded
            self.generation = self._read_only_generation()
            return
        self._migrate()
        self.generation = self._generation()

    def _read_only_generation(self) -> str:
        exists = self._conn.execute("SELECT to_regclass(%s) AS t", (f"{INDEX_SCHEMA}.schema_version",)).fetchone()
        if exists["t"] is None:
            raise StoreError(
                f"There is no consist history in the PostgreSQL database {self.location}",
                "no tracker has recorded a run there yet, or the URL names another database",
                "check the URL; a Tracker with this db_url creates the tables on its first use",
            )
        row = self._conn.execute(f"SELECT max(version) AS v FROM {INDEX_SCHEMA}.schema_version").fetchone()
        if int(row["v"] or 0) > SCHEMA_VERSION:
            raise no_such_schema(self.location, int(row["v"]), SCHEMA_VERSION)
        self.schema_version = int(row["v"] or 0)
        meta = self._conn.execute("SELECT value FROM index_meta WHERE key = 'generation'").fetchone()
        return meta["value"] if meta else ""

    def _migrate(self) -> None:
        """Create or upgrade the schema, once, under the write lock (other clients wait)."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))
                self._conn.execute(f"CREATE SCHEMA IF NOT EXISTS {INDEX_SCHEMA}")
                self._conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {INDEX_SCHEMA}.schema_version "
                    "(version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
                )
                row = self._conn.execute(f"SELECT max(version) AS v FROM {INDEX_SCHEMA}.schema_version").fetchone()
                current = int(row["v"] or 0)
                if current > SCHEMA_VERSION:
                    raise no_such_schema(self.location, current, SCHEMA_VERSION)
                for version in range(current + 1, SCHEMA_VERSION + 1):
                    for stmt in _MIGRATIONS[version]:
                        self._conn.execute(stmt)
                    self._conn.execute(
                        f"INSERT INTO {INDEX_SCHEMA}.schema_version VALUES (%s, %s)", (version, time.time())
                    )
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback_quietly()
                raise

    # ---------------------------------------------------------------- backend hooks

    @property
    def has_lookup_indexes(self) -> bool:
        return self.schema_version >= 2

    def meta_field(self, key: str) -> str:
        return f"(meta::jsonb ->> '{_meta_key(key)}')"

    def close(self) -> None:
        self._beat_stop.set()
        with self._lock:
            self._conn.close()

    def _run(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._conn.execute(_translate(sql), _params(params))

    def _run_planned(self, sql: str, params: Sequence[Any] = ()) -> Any:
        # psycopg prepares a statement it ran five times, and the server may then keep one generic plan for
        # it that ignores the values. Unprepared, each execution is planned with its values.
        return self._conn.execute(_translate(sql), _params(params), prepare=False)

    def _run_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        if not rows:
            return 0
        with self._conn.cursor() as cur:
            cur.executemany(_translate(sql), [_params(r) for r in rows])
            return max(cur.rowcount, 0)

    def _begin_write(self) -> None:
        self._conn.execute("BEGIN")
        self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))

    def _begin_snapshot(self) -> None:
        self._conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def _end(self, commit: bool) -> None:
        if commit:
            self._conn.execute("COMMIT")
        else:
            self._rollback_quietly()

    def _rollback_quietly(self) -> None:
        from psycopg.pq import TransactionStatus

        if not self._conn.closed and self._conn.info.transaction_status != TransactionStatus.IDLE:
            try:
                self._conn.execute("ROLLBACK")
            except Exception:
                pass  # the connection is gone: the server has rolled the transaction back

    @contextmanager
    def _guard(self) -> Iterator[None]:
        import psycopg

        try:
            yield
        except psycopg.OperationalError as exc:
            raise StoreError(
                f"Lost the connection to the PostgreSQL database {self.location}: {str(exc).strip()}",
                "the server restarted or the network dropped, and a new connection failed too",
                "check the server, then run the step again; nothing half-written was recorded",
            ) from exc

    def _retryable(self, exc: BaseException) -> bool:
        import psycopg
        from psycopg import errors

        if isinstance(exc, errors.SerializationFailure | errors.DeadlockDetected):
            return True
        return isinstance(exc, psycopg.OperationalError) and (self._conn.closed or self._conn.broken)

    def _reconnect(self) -> None:
        if self._conn.closed or self._conn.broken:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = _connect(self.url, INDEX_SCHEMA, self.location)


class _Cursor:
    """The part of a DuckDB cursor the queries use, over a psycopg cursor."""

    def __init__(self, cur: Any) -> None:
        self._cur = cur
        self.description = cur.description

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._cur.fetchall()

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._cur.fetchone()

    def df(self) -> Any:
        import pandas as pd

        cols = [d[0] for d in self.description or ()]
        return pd.DataFrame(self._cur.fetchall(), columns=cols)


class _Connection:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Cursor:
        return _Cursor(self._conn.execute(_translate(sql), list(params)))


class PostgresQueries:
    """Queries on the ``consist`` schema's views: always up to date, nothing to merge."""

    def __init__(self, index: PostgresIndex) -> None:
        self.index = index
        self.location = index.location
        self._engine: Any = None

    @contextmanager
    def read(self) -> Iterator[Any]:
        """A connection for queries, closed afterwards."""
        conn = _connect(self.index.url, QUERY_SCHEMA, self.location)
        try:
            from psycopg.rows import tuple_row

            conn.row_factory = tuple_row
            yield _Connection(conn)
        finally:
            conn.close()

    @property
    def engine(self) -> Any:
        """An SQLAlchemy engine on the database, searching the ``consist`` schema first."""
        if self._engine is None:
            from sqlalchemy import create_engine

            url = re.sub(r"^postgres(?:ql)?(?:\+\w+)?://", "postgresql+psycopg://", self.index.url)
            self._engine = create_engine(url, connect_args={"options": f"-c search_path={QUERY_SCHEMA},public"})
        return self._engine

    def pending(self) -> bool:
        return False

    def sync(self, timeout: float | None = None) -> int:
        return 0  # every write is visible to queries at once

    def reconcile(self, timeout: float = 5.0) -> None:
        return None

    def rebuild(self, *args: Any, **kwargs: Any) -> dict[str, int]:
        raise StoreError(
            f"rebuild_index() is for the embedded store; the run index at {self.location} is PostgreSQL's own",
            None,
            "restore the PostgreSQL database from its backups if it was damaged",
        )

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


__all__ = ["SCHEMA_VERSION", "PostgresIndex", "PostgresQueries", "is_postgres_url", "redact"]
