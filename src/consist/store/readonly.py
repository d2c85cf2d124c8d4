"""The query side of a read-only tracker: the DuckDB file opened for reading, never merged or created.

A read-only tracker (``Tracker(..., read_only=True)``) is for analysis notebooks
that must not change anything: it neither merges pending runs into the DuckDB
file nor takes the merge lock. Lookups that read the run index (``find_runs``,
``get_run``, ...) see every completed run; SQL through ``read()``/``engine`` sees
the runs merged so far (every tracker merges its runs when it closes).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import StoreError, StoreLockedError
from .duck import _DUCK_DDL, _is_lock_conflict


class ReadOnlyDuck:
    """Reads the DuckDB file without writing it (an empty in-memory copy of the tables when there is none yet)."""

    def __init__(self, db_path: Path, lock_timeout: float = 30.0) -> None:
        self.db_path = db_path
        self.lock_timeout = lock_timeout
        self._engine: Any = None

    def _connect(self) -> Any:
        import duckdb

        if not self.db_path.exists():
            con = duckdb.connect(":memory:")
            con.execute(_DUCK_DDL)
            return con
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                return duckdb.connect(str(self.db_path), read_only=True)
            except duckdb.Error as exc:
                if not _is_lock_conflict(exc):
                    raise StoreError(f"Cannot read the provenance database {self.db_path}: {exc}") from exc
                if time.monotonic() > deadline:
                    raise StoreLockedError(
                        f"Cannot read the provenance database {self.db_path}: {exc}",
                        "a tracker is merging runs into it, or another program keeps it open for writing",
                        "try again in a moment, or close that program's connection",
                    ) from exc
                time.sleep(0.05)

    @contextmanager
    def read(self) -> Iterator[Any]:
        con = self._connect()
        try:
            yield con
        finally:
            con.close()

    @property
    def engine(self) -> Any:
        """An SQLAlchemy engine that opens the DuckDB file read-only."""
        if self._engine is None:
            from duckdb_engine import ConnectionWrapper
            from sqlalchemy import create_engine
            from sqlalchemy.pool import NullPool

            self._engine = create_engine(
                f"duckdb:///{self.db_path}", creator=lambda: ConnectionWrapper(self._connect()), poolclass=NullPool
            )
        return self._engine

    def pending(self) -> bool:
        return False

    def sync(self, timeout: float | None = None) -> int:
        return 0  # never writes

    def reconcile(self, timeout: float = 5.0) -> None:
        return None

    def rebuild(self, *args: Any, **kwargs: Any) -> dict[str, int]:
        raise StoreError(
            "rebuild_index() writes the run index; this tracker is read-only",
            None,
            "open a Tracker without read_only=True to rebuild the index",
        )

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
