"""Reading the provenance database: runs, artifacts, lineage; and maintenance.

Queries go to the DuckDB file (merged from the run index first, so they see every
run completed so far by any process). They are mixed into :class:`consist.Tracker`.
Lookups by recorded fields (``find_runs``, ``history``, ...) read the run index:
see :mod:`consist.lookups`.
"""

from __future__ import annotations

import datetime as dt
import errno
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import IntegrityError, RunNotFoundError, StoreError
from .hashing import loads
from .results import RunArtifacts

if TYPE_CHECKING:
    from .hashing import FileHasher
    from .models import Run
    from .objects import ObjectStore
    from .store.index import RunIndex


class QueryMixin:
    """Read access to the provenance database."""

    db_path: Any
    _store: Any
    _index: RunIndex

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

    def explain(self, run_id: str) -> dict[str, Any] | None:
        """Why run ``run_id`` executed instead of reusing a prior run (None for hits)."""
        row = self._index.run(run_id)
        if row is None:
            raise RunNotFoundError(f"No run with id {run_id!r}", None, "check the id with tracker.history()")
        return (loads(row["meta"]) or {}).get("cache_miss_explanation")


class MaintenanceMixin:
    """Housekeeping of the content-addressed object store and of the run index.

    Runs in progress lease the objects they store or restore (``lease`` table of the
    run index): a stored output from the moment it is stored until its run's record
    gets its final status, which references it from then on; a restore from just
    before its objects are checked until the thread's next restore. prune_store()
    deletes objects in batches, each under the index's write lock, after reading the
    leases and the outputs recorded since it started again under that lock, so an
    object is either leased before prune looks (and kept) or removed before the run
    leases it (and the run then stores it again, see :meth:`_store_leased`).

    ``tracker.run`` records its outputs as soon as its function returns, so it does
    not lease them: it stores them, records the run, and then looks once more,
    storing again any object a prune removed in between (see
    ``RecordingMixin._store_again_if_pruned``). Once the record is committed, the
    prune keeps them like any output recorded since it started.
    """

    _index: RunIndex
    _objects: ObjectStore
    _store: Any
    _writable: Any

    def _store_leased(self, run_id: str, path: Path, hasher: FileHasher) -> tuple[str, int, list[list[Any]]]:
        """Store an output of the running run ``run_id`` and lease it; returns (hash, size, manifest).

        The manifest lists the entries of a directory (empty for a file); entries of
        three items ``[relative path, hash, size]`` are stored files.
        """
        root = str(self._objects.root)
        for _ in range(3):
            digest, size, manifest, kind = self._store_object(path, hasher)
            self._index.lease_written(run_id, digest, kind, root, size)
            # An object that was already stored may have been pruned between the check in put_*
            # and the lease; from here on prune_store() keeps it, so one look settles it.
            if self._holds_stored(digest, manifest):
                return digest, size, manifest
        raise StoreError(
            f"The output {path} was removed from {root} three times while it was being stored",
            "prune_store() runs over and over in another process, or something else deletes the object store",
            "let the prune finish, then run the step again",
        )

    def _store_object(self, path: Path, hasher: FileHasher) -> tuple[str, int, list[list[Any]], str]:
        """Store a file or directory without leasing it; returns (hash, size, manifest, kind).

        Used alone where the run's final record follows at once (see
        :meth:`consist.recording.RecordingMixin._finish`), which then looks again.
        """
        try:
            if path.is_dir():
                digest, size, manifest = self._objects.put_dir(path, hasher)
                return digest, size, manifest, "dir"
            digest, size = self._objects.put_file(path, hasher)
            return digest, size, [], "file"
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            root = self._objects.root
            raise StoreError(
                f"No space left on device to store the output {path} in {root}",
                "the file system that holds run_dir is full",
                f"free space there (df -h {root}; tracker.prune_store() removes outputs no run needs) and run "
                "the step again; the partial copy was removed, no partial object is left in the store",
            ) from exc

    def _holds_stored(self, digest: str, manifest: Sequence[Sequence[Any]]) -> bool:
        """Whether the store holds an object and every file its manifest lists."""
        return self._objects.has(digest) and all(self._objects.has(e[1]) for e in manifest if len(e) == 3)

    def prune_store(self, older_than: Any = None, *, dry_run: bool = False, verify: bool = False) -> dict[str, int]:
        """Delete stored objects no completed run needs any more.

        Objects referenced by the outputs of completed runs that ended within
        ``older_than`` (a ``datetime.timedelta`` or a number of seconds; None keeps every completed run)
        are kept; everything else in this tracker's store is removed (outputs of
        failed or interrupted runs, damaged objects with ``verify=True``). Runs
        whose objects are removed simply execute again on their next call.

        Objects that a run in progress, in any process sharing the database, has
        stored or is restoring are never removed (they are counted as ``in_use``);
        the outputs of ``tracker.run``, recorded as soon as its function returns, are
        stored again by it if a prune removed them just before that record.
        """
        self._writable("prune the object store")
        if isinstance(older_than, (int, float)) and not isinstance(older_than, bool):
            older_than = dt.timedelta(seconds=older_than)  # a number of seconds
        cutoff = time.time() - older_than.total_seconds() if older_than is not None else None
        # Read the sequence number first: whatever is recorded after it is looked at again under the lock.
        start_seq = self._index.max_seq()
        sql = (
            "SELECT DISTINCT a.hash, a.kind FROM run_artifact l JOIN artifact a ON a.id = l.artifact_id "
            "JOIN run r ON r.id = l.run_id WHERE l.direction = 'output' AND r.status = 'completed'"
        )
        params: list[Any] = []
        if cutoff is not None:
            sql += " AND r.ended_at >= ?"
            params.append(cutoff)
        manifests: dict[str, list[str] | None] = {}
        # A directory whose manifest is damaged cannot be restored: it is not kept.
        keep = self._expand(self._index.query(sql, params), manifests, drop_damaged=True)
        candidates: list[tuple[str, Path]] = []
        damaged = 0
        for digest, path in list(self._objects.all_objects()):
            if digest in keep:
                if not verify:
                    continue
                try:
                    self._objects.verify(digest)
                    continue
                except IntegrityError:
                    damaged += 1
            candidates.append((digest, path))
        removed = freed = in_use = 0
        for start in range(0, len(candidates), 256):
            batch = candidates[start : start + 256]
            # Under the index's write lock no run can lease an object or record an output meanwhile.
            with self._index.write(stamp=False) if not dry_run else _nothing():
                protected = self._protected(start_seq, manifests)
                gone = []
                for digest, path in batch:
                    if digest in protected:
                        in_use += 1
                        continue
                    try:
                        size = path.stat().st_size
                    except FileNotFoundError:
                        continue
                    removed += 1
                    freed += size
                    if not dry_run:
                        self._objects.remove(digest)
                        gone.append((digest, str(self._objects.root)))
                for item in gone:
                    self._index.execute("DELETE FROM object WHERE hash = ? AND store = ?", item)
        if not dry_run:
            _live, ended = self._index.leases()
            if ended:
                with self._index.write(stamp=False):
                    for rowid in ended:
                        self._index.execute("DELETE FROM lease WHERE rowid = ?", (rowid,))
            self._objects.clear_tmp()
        return {"removed": removed, "bytes_freed": freed, "damaged": damaged, "kept": len(keep), "in_use": in_use}

    def _expand(
        self, rows: Iterable[Mapping[str, Any]], manifests: dict[str, list[str] | None], drop_damaged: bool = False
    ) -> set[str]:
        """The hashes of ``(hash, kind)`` rows, with the files of every directory among them.

        ``manifests`` caches each directory's files (None: its manifest is damaged).
        """
        out: set[str] = set()
        for row in rows:
            digest = row["hash"]
            if digest is None:
                continue
            out.add(digest)
            if row["kind"] != "dir" or not self._objects.has(digest):
                continue
            if digest not in manifests:
                try:
                    manifests[digest] = [e[1] for e in self._objects.read_manifest(digest) if len(e) == 3]
                except IntegrityError:
                    manifests[digest] = None
            files = manifests[digest]
            if files is None:
                if drop_damaged:
                    out.discard(digest)
                continue
            out.update(files)
        return out

    def _protected(self, since_seq: int, manifests: dict[str, list[str] | None]) -> set[str]:
        """Objects held by runs in progress, and outputs recorded after ``since_seq``."""
        live, _ended = self._index.leases()
        recent = self._index.query(
            "SELECT DISTINCT a.hash, a.kind FROM run_artifact l JOIN artifact a ON a.id = l.artifact_id "
            "WHERE l.seq > ? AND l.direction IN ('output', 'member')",
            (since_seq,),
        )
        return self._expand([*live, *recent], manifests)

    def rebuild_index(self) -> dict[str, int]:
        """Copy into the run index whatever the DuckDB file holds and the index lacks.

        For an index restored from a copy, or to check one: every run, artifact and
        link of the DuckDB file missing from the index is added (the index's own rows
        are kept), every index row is merged into DuckDB, and the objects in the stores
        of every recorded run_dir are registered again. Returns the numbers added.
        A damaged index cannot be opened by a Tracker: use
        :func:`consist.store.rebuild_index` with the ``db_path`` instead.
        """
        self._writable("rebuild the run index")
        return self._store.rebuild(object_stores=[self._objects.root]) or {}


@contextmanager
def _nothing() -> Iterator[None]:
    yield
