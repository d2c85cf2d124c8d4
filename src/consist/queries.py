"""Reading the provenance database: runs, artifacts, lineage, history; and store maintenance.

Queries go to the DuckDB file (merged from the run index first, so they see every
run completed so far by any process). They are mixed into :class:`consist.Tracker`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .errors import IntegrityError, RunNotFoundError
from .hashing import loads
from .results import RunArtifacts

if TYPE_CHECKING:
    import pandas as pd

    from .index import Index
    from .models import Run
    from .objects import ObjectStore
    from .store import DuckStore


class QueryMixin:
    """Read access to the provenance database."""

    db_path: Any
    _store: DuckStore
    _index: Index

    def _fetch(self, con: Any, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = con.execute(sql, list(params))
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]

    def get_run(self, run_id: str) -> Run | None:
        """The run recorded under ``run_id``, or None."""
        from .models import run_from_row

        with self._store.read() as con:
            rows = self._fetch(con, "SELECT * FROM run WHERE id = ?", [run_id])
        return run_from_row(rows[0]) if rows else None

    def find_runs(
        self,
        *,
        model: str | None = None,
        status: str | None = None,
        tags: Sequence[str] | None = None,
        parent_id: str | None = None,
        year: int | None = None,
        iteration: int | None = None,
        cache_hit: bool | None = None,
        limit: int | None = 100,
    ) -> list[Run]:
        """Runs matching every given filter, newest first. ``tags`` must all be present."""
        from .models import run_from_row

        where, params = [], []
        for col, val in (("model", model), ("status", status), ("parent_run_id", parent_id), ("year", year),
                         ("iteration", iteration), ("cache_hit", cache_hit)):  # fmt: skip
            if val is not None:
                where.append(f"{col} = ?")
                params.append(val)
        for tag in tags or ():
            where.append("list_contains(CAST(tags AS VARCHAR[]), ?)")
            params.append(tag)
        sql = "SELECT * FROM run" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY started_at DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._store.read() as con:
            return [run_from_row(r) for r in self._fetch(con, sql, params)]

    def get_artifacts_for_run(self, run_id: str) -> RunArtifacts:
        """The input and output artifacts of a run, by key."""
        from .models import artifact_from_row

        with self._store.read() as con:
            if not self._fetch(con, "SELECT id FROM run WHERE id = ?", [run_id]):
                raise RunNotFoundError(
                    f"No run with id {run_id!r} in {self.db_path}",
                    "the id is misspelled, or the run was recorded in another database",
                    "list runs with tracker.find_runs() or tracker.history()",
                )
            rows = self._fetch(
                con,
                "SELECT l.key AS link_key, l.direction, a.* FROM run_artifact l "
                "JOIN artifact a ON a.id = l.artifact_id WHERE l.run_id = ? ORDER BY l.key",
                [run_id],
            )
        result = RunArtifacts(inputs={}, outputs={})
        members = []
        for r in rows:
            if r["direction"] == "member":
                members.append(r)
                continue
            target = {"input": result.inputs, "output": result.outputs}.get(r["direction"], result.logs)
            target[r["link_key"]] = artifact_from_row(r)
        for r in members:  # the files of directory outputs, by relative path; a declared output keeps its key
            result.outputs.setdefault(r["link_key"], artifact_from_row(r))
        return result

    def get_artifact_lineage(self, key_or_artifact: Any, max_depth: int | None = None) -> dict[str, Any]:
        """How an artifact came to be: its producing run and, recursively, that run's inputs.

        Returns ``{"artifact": Artifact, "producing_run": {"run": Run, "inputs": [lineage, ...]} | None}``.
        A key means the newest artifact recorded under that key.
        """
        from .models import artifact_from_row, run_from_row

        with self._store.read() as con:
            if isinstance(key_or_artifact, str):
                rows = self._fetch(
                    con,
                    "SELECT * FROM artifact WHERE key = ? OR id = ? ORDER BY (run_id IS NULL), created_at DESC LIMIT 1",
                    [key_or_artifact, key_or_artifact],
                )
                if not rows:
                    raise RunNotFoundError(
                        f"No artifact with key or id {key_or_artifact!r}",
                        "no run recorded an artifact under that key",
                        "check the key with tracker.get_artifacts_for_run(run_id)",
                    )
                start = rows[0]
            else:
                start = self._fetch(con, "SELECT * FROM artifact WHERE id = ?", [key_or_artifact.id])[0]

            def walk(art: dict[str, Any], depth: int, seen: frozenset[str]) -> dict[str, Any]:
                node: dict[str, Any] = {"artifact": artifact_from_row(art), "producing_run": None}
                if not art.get("run_id") or art["run_id"] in seen or (max_depth is not None and depth >= max_depth):
                    return node
                runs = self._fetch(con, "SELECT * FROM run WHERE id = ?", [art["run_id"]])
                if not runs:
                    return node
                ins = self._fetch(
                    con,
                    "SELECT a.* FROM run_artifact l JOIN artifact a ON a.id = l.artifact_id "
                    "WHERE l.run_id = ? AND l.direction = 'input' ORDER BY l.key",
                    [art["run_id"]],
                )
                node["producing_run"] = {
                    "run": run_from_row(runs[0]),
                    "inputs": [walk(i, depth + 1, seen | {art["run_id"]}) for i in ins],
                }
                return node

            return walk(start, 0, frozenset())

    def history(self, limit: int = 10) -> pd.DataFrame:
        """The newest runs as a pandas DataFrame."""
        with self._store.read() as con:
            return con.execute(
                "SELECT id, model, status, cache_hit, cache_source, year, iteration, tags, started_at, ended_at, "
                "ended_at - started_at AS duration, parent_run_id, signature FROM run "
                "ORDER BY started_at DESC LIMIT ?",
                [int(limit)],
            ).df()

    def explain(self, run_id: str) -> dict[str, Any] | None:
        """Why run ``run_id`` executed instead of reusing a prior run (None for hits)."""
        row = self._index.run(run_id)
        if row is None:
            raise RunNotFoundError(f"No run with id {run_id!r}", None, "check the id with tracker.history()")
        return (loads(row["meta"]) or {}).get("cache_miss_explanation")


class MaintenanceMixin:
    """Housekeeping of the content-addressed object store."""

    _index: Index
    _objects: ObjectStore

    def prune_store(self, older_than: Any = None, *, dry_run: bool = False, verify: bool = False) -> dict[str, int]:
        """Delete stored objects no completed run needs any more.

        Objects referenced by the outputs of completed runs that ended within
        ``older_than`` (a ``datetime.timedelta``; None keeps every completed run)
        are kept; everything else in this tracker's store is removed (outputs of
        failed or interrupted runs, damaged objects with ``verify=True``). Runs
        whose objects are removed simply execute again on their next call.
        """
        cutoff = time.time() - older_than.total_seconds() if older_than is not None else None
        sql = (
            "SELECT DISTINCT a.hash, a.kind FROM run_artifact l JOIN artifact a ON a.id = l.artifact_id "
            "JOIN run r ON r.id = l.run_id WHERE l.direction = 'output' AND r.status = 'completed'"
        )
        params: list[Any] = []
        if cutoff is not None:
            sql += " AND r.ended_at >= ?"
            params.append(cutoff)
        keep: set[str] = set()
        for row in self._index.query(sql, params):
            keep.add(row["hash"])
            if row["kind"] == "dir" and self._objects.has(row["hash"]):
                try:
                    keep.update(e[1] for e in self._objects.read_manifest(row["hash"]))
                except IntegrityError:
                    keep.discard(row["hash"])
        removed = freed = damaged = 0
        gone: list[tuple[str, str]] = []
        for digest, path in list(self._objects.all_objects()):
            bad = False
            if verify and digest in keep:
                try:
                    self._objects.verify(digest)
                except IntegrityError:
                    bad, damaged = True, damaged + 1
            if digest in keep and not bad:
                continue
            removed += 1
            freed += path.stat().st_size
            if not dry_run:
                self._objects.remove(digest)
                gone.append((digest, str(self._objects.root)))
        if not dry_run:
            self._index.drop_objects(gone)
            self._objects.clear_tmp()
        return {"removed": removed, "bytes_freed": freed, "damaged": damaged, "kept": len(keep)}
