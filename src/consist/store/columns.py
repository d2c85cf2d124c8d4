"""The columns of the recorded tables, and who is recording (host and process)."""

from __future__ import annotations

import os
import socket

HOST = socket.gethostname()
#: A lease taken for a restore (no run id yet) protects its objects this long at most.
RESTORE_LEASE_S = 24 * 3600.0

RUN_COLUMNS = (
    "id", "name", "model", "status", "parent_run_id", "year", "iteration", "tags",
    "signature", "code_version", "config_hash", "input_hash", "config", "identity",
    "cache_hit", "cache_source", "cache_epoch", "error", "meta", "run_dir", "pid", "host",
    "started_at", "ended_at",
)  # fmt: skip
ARTIFACT_COLUMNS = ("id", "key", "uri", "hash", "size", "kind", "driver", "run_id", "created_at", "meta", "location")
LINK_COLUMNS = ("run_id", "artifact_id", "direction", "key")
#: Columns the DuckDB and PostgreSQL query tables type more closely than the index does.
JSON_COLUMNS = frozenset({"tags", "config", "identity", "meta"})
TIMESTAMP_COLUMNS = frozenset({"started_at", "ended_at", "created_at"})


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
