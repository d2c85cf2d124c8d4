"""How two recorded runs differ: config, inputs and outputs.

One computation for ``consist diff`` (which prints it, or with ``--json`` prints
it as it is) and :meth:`consist.Tracker.diff_runs`. It reads the run index only,
and the two runs' changed CSV or Parquet outputs, which DuckDB reads in place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .records import loads
from .store.index import RunIndex


def run_diff(index: RunIndex, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """How run ``b`` differs from run ``a`` (index rows).

    ``{"run_a", "run_b", "config": [{"key", "before", "after", "change"}], "inputs": [...],
    "outputs": [...]}``: config keys (dotted) that changed, were added or removed; every input and
    output key with its state (``same``, ``changed``, ``added``, ``removed``), both hashes and
    both paths. A changed CSV or Parquet output also has ``"table"``: row counts, columns added
    and removed, and per column how many values differ and the means of numeric columns.
    """

    def links(way: str) -> list[dict[str, Any]]:
        return artifact_changes(artifacts_by_key(index, a["id"], way), artifacts_by_key(index, b["id"], way))

    out = {
        "run_a": a["id"], "run_b": b["id"],
        "config": changes(flatten(loads(a.get("config")) or {}), flatten(loads(b.get("config")) or {})),
        "inputs": links("input"), "outputs": links("output"),
    }  # fmt: skip
    for change in out["outputs"]:
        if change["state"] == "changed":
            summary = table_summary(change["path_a"], change["path_b"])
            if summary:
                change["table"] = summary
    return out


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
