"""Where runs are recorded: the run index and the provenance tables, on two backends.

- Embedded (the default): the run index is a SQLite file (WAL mode) beside the
  DuckDB file (:mod:`consist.store.sqlite`), and the DuckDB file is merged from it
  for queries (:mod:`consist.store.duck`). One machine, many processes.
- PostgreSQL (``db_url="postgresql://..."`` or ``CONSIST_DB_URL``): the run index and
  the query tables live on a server that every node reaches
  (:mod:`consist.store.postgres`).

Both index backends share their logic (:mod:`consist.store.index`); a backend only
opens connections, creates its schema and maps its errors. The tracker talks to a
pair: a :class:`~consist.store.index.RunIndex` for recording and cache lookups, and
a query side (``read()``, ``engine``, ``sync()``) for SQL over the history.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .duck import DUCK_SCHEMA_VERSION, DuckStore, export_duckdb, rebuild_index
from .index import RunIndex


def open_backend(db_path: Path, db_url: str | None, read_only: bool = False) -> tuple[RunIndex, Any]:
    """The run index and query side for a DuckDB file, or for a PostgreSQL URL when one is given.

    ``read_only`` opens both for reading only: nothing is created, upgraded, merged or written.
    """
    if db_url:
        from .postgres import PostgresIndex, PostgresQueries, is_postgres_url

        if not is_postgres_url(db_url):
            from ..errors import StoreError

            raise StoreError(
                f"Unsupported db_url {db_url.split('://')[0]}://...",
                None,
                "use postgresql://user:password@host:port/database, or leave db_url unset for the "
                "embedded DuckDB file (db_path)",
            )
        index = PostgresIndex(db_url, read_only=read_only)
        return index, PostgresQueries(index)
    from .sqlite import SQLiteIndex, index_path_for

    if read_only:
        from .readonly import ReadOnlyDuck

        return SQLiteIndex(index_path_for(db_path), read_only=True), ReadOnlyDuck(db_path)
    index = SQLiteIndex(index_path_for(db_path))
    return index, DuckStore(db_path, index)


__all__ = ["DUCK_SCHEMA_VERSION", "DuckStore", "RunIndex", "export_duckdb", "open_backend", "rebuild_index"]
