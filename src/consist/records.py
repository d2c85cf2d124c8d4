"""Plain, JSON-ready views of run index rows: what the command line prints and exports carry.

Field names are stable (docs/cli.md): times are ISO 8601 in UTC, flags are booleans,
JSON columns are decoded.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

RUN_FIELDS = ("id", "model", "status", "cache_hit", "cache_source", "year", "iteration", "tags", "started_at",
              "ended_at", "duration_s", "parent_run_id", "signature")  # fmt: skip
ARTIFACT_FIELDS = ("direction", "key", "kind", "size", "hash", "path", "location", "run_id")


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(float(epoch), dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def loads(text: Any) -> Any:
    return json.loads(text) if isinstance(text, str) else text


def run_record(row: dict[str, Any]) -> dict[str, Any]:
    """A run as the command line shows it (and prints with --json)."""
    started, ended = row.get("started_at"), row.get("ended_at")
    return {
        "id": row["id"], "model": row.get("model"), "status": row.get("status"),
        "cache_hit": bool(row.get("cache_hit")), "cache_source": row.get("cache_source"),
        "year": row.get("year"), "iteration": row.get("iteration"), "tags": loads(row.get("tags")) or [],
        "started_at": _iso(started), "ended_at": _iso(ended),
        "duration_s": round(ended - started, 6) if started is not None and ended is not None else None,
        "parent_run_id": row.get("parent_run_id"), "signature": row.get("signature"),
    }  # fmt: skip


def artifact_record(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "direction": row.get("direction"), "key": row.get("link_key") or row.get("key"), "kind": row.get("kind"),
        "size": row.get("size"), "hash": row.get("hash"), "path": row.get("uri"), "location": row.get("location"),
        "run_id": row.get("run_id"),
    }  # fmt: skip
