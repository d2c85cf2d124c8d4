"""What the command line reads: the run index, opened read-only, and the rows it needs.

The command line reads the run index (SQLite beside the DuckDB file, or
PostgreSQL) directly: it holds every run the moment it is recorded, opening it
needs no lock on the DuckDB file, and it loads no heavy module, so the first
line of ``consist runs`` appears quickly on any database.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConsistError
from ..records import artifact_record, loads, run_record
from ..store.index import RunIndex

__all__ = ["artifact_record", "loads", "run_record"]  # re-exported for the commands


class NotFound(ConsistError):
    """A run, scenario or artifact that the database does not hold (exit code 1)."""


def find_database(db: str | None, db_url: str | None) -> tuple[Path | None, str | None]:
    """Where to read: ``--db``, ``--db-url``, ``CONSIST_DB``, ``CONSIST_DB_URL``, then the usual places."""
    if db:
        return Path(db), None
    if db_url:
        return None, db_url
    if os.environ.get("CONSIST_DB"):
        return Path(os.environ["CONSIST_DB"]), None
    if os.environ.get("CONSIST_DB_URL"):
        return None, os.environ["CONSIST_DB_URL"]
    for candidate in (Path("provenance.duckdb"), Path("runs") / "provenance.duckdb"):
        if candidate.exists() or _index_of(candidate).exists():
            return candidate, None
    raise ConsistError(
        "No provenance database found here",
        "neither ./provenance.duckdb nor ./runs/provenance.duckdb exists, and no database was named",
        "pass --db PATH (the DuckDB file a Tracker uses) or --db-url postgresql://..., or set CONSIST_DB",
    )


def _index_of(db: Path) -> Path:
    from ..store.sqlite import index_path_for

    return index_path_for(db.resolve())


def open_index(db: str | None, db_url: str | None) -> tuple[RunIndex, Path | None]:
    """The run index, read-only, and the DuckDB file it belongs to (None for PostgreSQL)."""
    path, url = find_database(db, db_url)
    if url is not None:
        from ..store.postgres import PostgresIndex

        return PostgresIndex(url, read_only=True), None
    from ..store.sqlite import SQLiteIndex

    assert path is not None
    return SQLiteIndex(_index_of(path), read_only=True), path.resolve()


# ------------------------------------------------------------------------ rows


_SINCE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")


def since_epoch(text: str) -> float:
    """``2d``, ``12h``, ``30m`` (ago) or an ISO date/time (UTC unless it says otherwise)."""
    m = _SINCE.match(text.strip())
    if m:
        seconds = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
        return dt.datetime.now(dt.UTC).timestamp() - seconds
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConsistError(
            f"Cannot read --since {text!r}", None, "use a duration (2d, 12h, 30m) or a date (2026-11-01)"
        )
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()


def list_runs(
    index: RunIndex,
    *,
    model: str | None = None,
    status: str | None = None,
    scenario: str | None = None,
    tags: Sequence[str] = (),
    year: int | None = None,
    since: float | None = None,
    limit: int | None = 50,
) -> list[dict[str, Any]]:
    where, params = [], []
    for col, value in (("model", model), ("status", status), ("parent_run_id", scenario), ("year", year)):
        if value is not None:
            where.append(f"{col} = ?")
            params.append(value)
    if since is not None:
        where.append("started_at >= ?")
        params.append(since)
    sql = "SELECT * FROM run" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY started_at DESC"
    out: list[dict[str, Any]] = []
    # Tags are JSON text in the index: filtered here, so the SQL stays the same on every backend.
    batch, offset = (limit or 1000) if not tags else 1000, 0
    while True:
        rows = index.query(sql + f" LIMIT {int(batch)} OFFSET {int(offset)}", params)
        for row in rows:
            if tags and not set(tags) <= set(loads(row.get("tags")) or []):
                continue
            out.append(row)
            if limit is not None and len(out) >= limit:
                return out
        if len(rows) < batch or (limit is not None and not tags):
            return out
        offset += batch


def get_run(index: RunIndex, run_id: str) -> dict[str, Any]:
    row = index.run(run_id)
    if row is None:
        raise NotFound(f"No run {run_id!r} in {index.location}", None, "list runs with `consist runs`")
    return row


def children(index: RunIndex, run_id: str) -> list[dict[str, Any]]:
    return index.query("SELECT * FROM run WHERE parent_run_id = ? ORDER BY started_at", (run_id,))


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config as dotted keys: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix or "<config>": value}


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """Keys whose values differ: ``{"key", "before", "after", "change"}``, sorted by key."""
    out = []
    for key in sorted(set(old) | set(new)):
        if key not in new:
            out.append({"key": key, "before": old[key], "after": None, "change": "removed"})
        elif key not in old:
            out.append({"key": key, "before": None, "after": new[key], "change": "added"})
        elif old[key] != new[key]:
            out.append({"key": key, "before": old[key], "after": new[key], "change": "changed"})
    return out


def artifacts_by_key(index: RunIndex, run_id: str, direction: str) -> dict[str, dict[str, Any]]:
    return {r["link_key"]: r for r in index.links_of(run_id, direction)}


def artifact_changes(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per key: same, changed, added or removed, with both hashes."""
    out = []
    for key in sorted(set(a) | set(b)):
        ha, hb = (a.get(key) or {}).get("hash"), (b.get(key) or {}).get("hash")
        state = "added" if key not in a else "removed" if key not in b else "same" if ha == hb else "changed"
        out.append({"key": key, "state": state, "hash_a": ha, "hash_b": hb,
                    "path_a": (a.get(key) or {}).get("uri"), "path_b": (b.get(key) or {}).get("uri")})  # fmt: skip
    return out


def log_path(run: dict[str, Any]) -> Path | None:
    """The container log of a run (``<run_dir>/<run_id>/container.log``), if it has one."""
    if not run.get("run_dir"):
        return None
    path = Path(run["run_dir"]) / run["id"] / "container.log"
    return path if path.is_file() else None


def tail(path: Path, lines: int = 20) -> list[str]:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 64 * 1024))
        text = f.read().decode("utf-8", errors="replace")
    return text.splitlines()[-lines:]


def object_stores(index: RunIndex, db: Path | None) -> Iterator[Path]:
    """Every object store the index knows of (and the default one beside each recorded run_dir)."""
    seen: set[Path] = set()
    for row in index.query("SELECT DISTINCT store FROM object"):
        p = Path(row["store"])
        if p not in seen:
            seen.add(p)
            yield p
    for row in index.query("SELECT DISTINCT run_dir FROM run WHERE run_dir IS NOT NULL"):
        p = Path(row["run_dir"]) / ".consist" / "objects"
        if p not in seen and p.is_dir():
            seen.add(p)
            yield p
