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


def table_summary(path_a: str | None, path_b: str | None) -> dict[str, Any] | None:
    """Row counts and per-column changes of two CSV or Parquet files (DuckDB reads them in place)."""
    if not path_a or not path_b:
        return None
    pa, pb = Path(path_a), Path(path_b)
    kinds = {".csv": "read_csv_auto", ".parquet": "read_parquet"}
    if pa.suffix not in kinds or pb.suffix != pa.suffix or not pa.is_file() or not pb.is_file():
        return None
    import duckdb

    con = duckdb.connect()
    try:
        reader = kinds[pa.suffix]
        for name, path in (("a", pa), ("b", pb)):  # a view takes no parameters: the path as a quoted literal
            literal = "'" + str(path).replace("'", "''") + "'"
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM {reader}({literal})")
        cols_a = {r[0]: r[1] for r in con.execute("DESCRIBE a").fetchall()}
        cols_b = {r[0]: r[1] for r in con.execute("DESCRIBE b").fetchall()}
        out: dict[str, Any] = {
            "rows_a": con.execute("SELECT count(*) FROM a").fetchall()[0][0],
            "rows_b": con.execute("SELECT count(*) FROM b").fetchall()[0][0],
            "columns_added": sorted(set(cols_b) - set(cols_a)),
            "columns_removed": sorted(set(cols_a) - set(cols_b)),
            "columns": [],
        }
        same_rows = out["rows_a"] == out["rows_b"]
        for col in [c for c in cols_a if c in cols_b]:
            q = '"' + col.replace('"', '""') + '"'
            entry: dict[str, Any] = {"column": col, "changed": None}
            if same_rows:
                entry["changed"] = con.execute(
                    f"SELECT count(*) FROM (SELECT {q} AS v, row_number() OVER () AS i FROM a) x "
                    f"JOIN (SELECT {q} AS v, row_number() OVER () AS i FROM b) y USING (i) "
                    "WHERE x.v IS DISTINCT FROM y.v"
                ).fetchall()[0][0]
            if any(t in cols_a[col].upper() for t in ("INT", "DOUBLE", "FLOAT", "DECIMAL", "REAL")):
                entry["mean_a"] = con.execute(f"SELECT avg({q}) FROM a").fetchall()[0][0]
                entry["mean_b"] = con.execute(f"SELECT avg({q}) FROM b").fetchall()[0][0]
            out["columns"].append(entry)
        return out
    except duckdb.Error:
        return None
    finally:
        con.close()


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
