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

from ..diffs import artifact_changes, artifacts_by_key, changes, flatten, run_diff, table_summary
from ..errors import ConsistError
from ..records import artifact_record, loads, run_record
from ..store.index import RunIndex

# Re-exported for the commands and the web view.
__all__ = ["artifact_changes", "artifact_record", "artifacts_by_key", "changes", "flatten", "loads", "run_diff",
           "run_record", "table_summary"]  # fmt: skip


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


def explanation(index: Any, row: dict[str, Any]) -> dict[str, Any]:
    record = run_record(row)
    if record["cache_hit"]:
        return {"run": record["id"], "executed": False, "cache_source": record["cache_source"],
                "reason": "cache_hit"}  # fmt: skip
    expl = (loads(row.get("meta")) or {}).get("cache_miss_explanation") or {}
    out: dict[str, Any] = {"run": record["id"], "executed": True, "reason": expl.get("reason", "unknown"),
                           "changed": expl.get("changed", []), "nearest_run": expl.get("nearest_run")}  # fmt: skip
    nearest = index.run(expl["nearest_run"]) if expl.get("nearest_run") else None
    details = expl.get("details") or {}
    if nearest is not None:
        old_cfg = flatten(loads(nearest.get("config")) or {})
        new_cfg = flatten(loads(row.get("config")) or {})
        out["config_changes"] = changes(old_cfg, new_cfg)
        old_in = artifacts_by_key(index, nearest["id"], "input")
        new_in = artifacts_by_key(index, row["id"], "input")
        out["input_changes"] = [c for c in artifact_changes(old_in, new_in) if c["state"] != "same"]
    if "code" in details:
        out["code"] = details["code"]
    for key in ("inputs_changed", "inputs_added", "inputs_removed"):
        if key in details:
            out[key] = details[key]
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
