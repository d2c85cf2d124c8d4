"""Recording runs: claiming run ids, linking inputs, storing outputs, finishing runs and hits."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import ConsistError, OutputError, warn_caller
from .hashing import FileHasher, dumps, hash_canonical
from .names import check_run_id, fit
from .objects import (
    file_entries,
    link_digest,
    manifest_size,
    mode_meta,
    modes_meta,
    place,
)
from .planning import _Active, _as_path, _Plan, driver_for, driver_for_name
from .results import RunResult
from .store.columns import HOST, RUN_COLUMNS

log = logging.getLogger("consist")


class RecordingMixin:
    """Writes runs, artifacts and links to the run index. Mixed into :class:`consist.tracker.Tracker`."""

    #: Hits a sweep records later, a batch per transaction: (record, result, announce) each; None: at once.
    _deferred_hits: list[tuple[Any, RunResult, Any]] | None = None
    #: The run that finished last (``tracker.last_run``).
    _last_active: _Active | None = None

    def _new_row(self, plan: _Plan, run_id: str, parent: str | None, tags: Sequence[str] | None) -> dict[str, Any]:
        return {
            "id": run_id,
            "name": run_id,
            "model": plan.model,
            "status": "running",
            "parent_run_id": parent,
            "year": plan.year,
            "iteration": plan.iteration,
            "tags": dumps(list(tags)) if tags else None,
            "signature": plan.signature,
            "code_version": plan.components.get("code"),
            "config_hash": plan.config_hash,
            "input_hash": hash_canonical(plan.components.get("inputs", {}), "consist-inputs-v1"),
            "config": dumps(plan.config),
            "identity": dumps(plan.components),
            "cache_hit": 0,
            "cache_source": None,
            "cache_epoch": self.cache_epoch,
            "error": None,
            "meta": None,
            "run_dir": str(self.run_dir),
            "pid": os.getpid(),
            "host": HOST,
            "started_at": time.time(),
            "ended_at": None,
        }

    def _open(
        self,
        plan: _Plan,
        run_id: str | None,
        parent: str | None,
        tags: Sequence[str] | None,
        meta: dict[str, Any] | None = None,
        status: str = "running",
        claim: str | None = None,
    ) -> _Active:
        """Record a new run and link its inputs, in one transaction."""
        active = self._open_if(None, plan, run_id, parent, tags, meta=meta, status=status, claim=claim)
        assert active is not None
        return active

    def _open_if(
        self,
        gate: Callable[[], bool] | None,
        plan: _Plan,
        run_id: str | None,
        parent: str | None,
        tags: Sequence[str] | None,
        meta: dict[str, Any] | None = None,
        status: str = "running",
        claim: str | None = None,
    ) -> _Active | None:
        """:meth:`_open`, with ``gate`` run first in the same transaction (it claims the signature).

        When the gate returns False, nothing is recorded and None is returned.
        """
        wanted = _wanted_id(plan, run_id)
        row = self._new_row(plan, wanted, parent, tags)
        row["status"] = status
        if meta:
            row["meta"] = dumps(meta)
        if plan.cache_mode != "readonly":
            held = (plan.signature, claim) if claim else None

            def record() -> str | None:  # run again as a whole after a lost connection (RunIndex.atomic)
                if gate is not None and not gate():
                    return None
                run_id = self._index.claim_run_id(wanted, row, claim=held)
                self._link_inputs(run_id, plan)
                return run_id

            # Without a gate the run is stamped at once; with one, only once the gate lets it be recorded.
            recorded = self._index.atomic(record, stamp=gate is None)
            if recorded is None:
                return None
            row["id"] = recorded
            return _Active(row=row, plan=plan, recorded=dict(row))
        return _Active(row=row, plan=plan)

    def _link_inputs(self, run_id: str, plan: _Plan) -> None:
        """Link the plan's inputs to the run: a recorded artifact as itself, content a run produced to that output."""
        for key, path, digest in plan.inputs:
            given = plan.input_artifacts.get(key)
            if given is not None:
                produced: dict[str, Any] | None = given
            else:
                produced = self._index.output_artifact_with_hash(digest) if plan.hasher.strategy == "full" else None
            if produced is not None:
                art_id = produced["id"]
            else:
                uri = str(path.resolve())
                art_id = hash_canonical([uri, digest], "consist-input-artifact-v1").split(":")[1][:32]
                is_dir = path.is_dir()
                self._index.add_artifact({
                    "id": art_id, "key": key, "uri": uri, "hash": digest,
                    "size": None if is_dir else path.stat().st_size, "kind": "dir" if is_dir else "file",
                    "driver": driver_for(path, is_dir), "run_id": None, "created_at": time.time(), "meta": None,
                    "location": self.roots.locate(Path(uri)),
                })  # fmt: skip
            self._index.link(run_id, art_id, "input", key)

    def _store_output(
        self,
        active: _Active,
        key: str,
        path: Path,
        *,
        allow_external: bool = False,
        user_meta: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        path = Path(path).absolute()
        if not os.path.lexists(path):
            raise OutputError(
                f"Output {key!r} does not exist at {path}",
                "the step did not write it, or wrote it somewhere else",
                "make the function write the file before returning its path",
            )
        # A symbolic link is recorded as itself (its place, its target text), never as what it points to.
        is_link = path.is_symlink()
        resolved = place(path)
        location = self.roots.locate(resolved) or (
            str(resolved) if allow_external else self.roots.location_for_output(resolved, key)
        )
        hasher = FileHasher(active.plan.hasher.memo, "full")
        is_dir = not is_link and path.is_dir()
        meta: dict[str, Any] | None = None
        if is_link:
            digest, size = self._objects.put_link(path) if active.persist else link_digest(path)
            if active.unleased is not None:
                active.unleased.append((digest, "link", size, path, []))
            elif active.persist:  # leased like any stored output (see _store_leased)
                self._index.lease_written(active.id, digest, "link", str(self._objects.root), size)
        elif active.persist:
            if active.unleased is not None:
                digest, size, manifest, kind = self._store_object(path, hasher)
                active.unleased.append((digest, kind, size, path, manifest))
            else:
                # Leased to this run until it ends, so prune_store() in another process keeps it.
                digest, size, manifest = self._store_leased(active.id, path, hasher)
            meta = {"files": len(manifest), **modes_meta(getattr(manifest, "modes", {}))} if is_dir else None
        else:
            if is_dir:
                digest, manifest = hasher.hash_dir(path, follow_links=False)
                size, meta = manifest_size(manifest), {"files": len(manifest)}
            else:
                digest, size = hasher.hash_file(path, follow=False), path.stat().st_size
        if not is_dir and not is_link:
            meta = mode_meta(path.lstat().st_mode) or None  # restores give the file this mode again
        if user_meta:
            meta = {**user_meta, **(meta or {})}
        row = {
            "id": uuid.uuid4().hex, "key": key, "uri": str(resolved), "location": location, "hash": digest,
            "size": size, "kind": "link" if is_link else "dir" if is_dir else "file",
            "driver": driver_for(path, is_dir), "run_id": active.id, "created_at": time.time(),
            "meta": dumps(meta) if meta else None,
        }  # fmt: skip
        if is_dir:
            row["_members"] = _member_rows(row, file_entries(manifest))
        # Recorded with the run's final status, in one transaction (see _finish).
        active.outputs[key] = row
        return row

    def _link_members(self, run_id: str, out: dict[str, Any]) -> None:
        """Record the files of a directory output as member artifacts of the run (key = relative path).

        Changes nothing in ``out``, so a transaction that is tried again records the same.
        """
        members = out.get("_members") or ()
        self._index.add_artifacts([_plain_row(m) for m in members if m.get("_new")])
        self._index.link_many(run_id, [(m["id"], m["key"]) for m in members], "member")

    def _finish(self, active: _Active, status: str, error: BaseException | str | None = None) -> None:
        if status == "failed" and active.scenario is None:
            sc = self._scenario(active)
            if sc is not None:
                sc._step_failed(active.id)
        self._last_active = active
        row = active.row
        row["status"] = status
        row["ended_at"] = time.time()
        if error is not None:
            row["error"] = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        if active.persist:
            outputs = list(active.outputs.items())
            # Produced here, or a restored copy at a new place (a row of its own, same producer).
            new = {key for key, out in outputs if out.get("run_id") == active.id or out.get("_new")}

            unleased = active.unleased or []
            root = str(self._objects.root)

            def record() -> None:  # run again as a whole after a lost connection (RunIndex.atomic)
                if unleased:
                    self._index.register_objects((digest, root, size) for digest, _k, size, _p, _m in unleased)
                for key, out in outputs:
                    if key in new:
                        self._index.add_artifact(_plain_row(out))
                    self._index.link(active.id, out["id"], "output", key)
                    self._link_members(active.id, out)
                self._index.upsert_run(row, _changed(active.recorded, row))

            self._index.atomic(record)
            for _key, out in outputs:
                out.pop("_new", None)
                out.pop("_members", None)
            if status == "completed":
                self._store_again_if_pruned(active)

    def _store_again_if_pruned(self, active: _Active) -> None:
        """Store again the unleased objects of a completed run that a prune removed before its record.

        prune_store() removes objects under the index's write lock and keeps every
        output recorded since it began, so once the run's record is committed its
        objects stay; one look settles whether one went before (a rare race with a
        prune in another process). An output changed meanwhile is not stored under
        the recorded hash: its next hit finds the object missing and executes again.
        """
        for digest, kind, _size, path, manifest in active.unleased or ():
            if self._holds_stored(digest, manifest):
                continue
            hasher = FileHasher(active.plan.hasher.memo, "full")
            try:
                again = self._objects.put_link(path)[0] if kind == "link" else self._store_object(path, hasher)[0]
            except (OSError, ConsistError) as exc:
                again = f"not stored ({exc})"
            if again != digest:
                warn_caller(
                    f"Output {path} of run {active.id!r} was removed from the object store by prune_store() while "
                    f"the run ended, and no longer holds the bytes recorded ({again} != {digest}); "
                    "its next call executes again."
                )

    def _record_hit(
        self,
        plan: _Plan,
        found: tuple[dict[str, Any], dict[str, dict[str, Any]]],
        run_id: str | None,
        parent: str | None,
        tags: Sequence[str] | None,
        waited_for: str | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> RunResult:
        producer, outs = found
        wanted = _wanted_id(plan, run_id)
        row = self._new_row(plan, wanted, parent, tags)
        row.update(status="completed", cache_hit=1, cache_source=producer["id"], ended_at=time.time())
        row_meta = {**(meta or {}), **({"waited_for": waited_for} if waited_for else {})}
        if row_meta:
            row["meta"] = dumps(row_meta)
        for o in outs.values():
            if o.get("_new"):  # a restored copy at a new place: a row of its own, of the same producer
                o["run_id"] = producer["id"]
        if plan.cache_mode != "readonly":

            def record() -> str:  # one transaction; run again as a whole after a lost connection
                hit_id = self._index.claim_run_id(wanted, row)
                self._link_inputs(hit_id, plan)
                for key, o in outs.items():
                    if o.get("_new"):
                        self._index.add_artifact(_plain_row(o))
                    self._index.link(hit_id, o["id"], "output", key)
                    self._link_members(hit_id, o)
                self._index.end_restore_lease()  # the restore this thread leased has ended
                return hit_id

        else:
            record = None
        clean = {k: _plain_row(o) for k, o in outs.items()}
        result = RunResult(row["id"], True, producer["id"], row, clean, waited_for=waited_for)

        def announce() -> None:
            self._last_active = _Active(row=row, plan=plan, outputs=dict(clean), cached_outputs=clean)
            self._fire("start", row)
            self._fire("complete", row, clean)
            self._step_done(None, clean)

        if record is not None and self._deferred_hits is not None:
            # A sweep records its hits a batch per transaction (see consist.sweeps); the outputs
            # are in place already, and the record and hooks follow when the batch is written.
            self._deferred_hits.append((record, result, announce))
            return result
        if record is not None:
            row["id"] = result.run_id = self._index.atomic(record)
        announce()
        return result

    def _flush_hits(self) -> None:
        """Record the hits a sweep deferred, in one transaction (each on its own if that fails)."""
        items, self._deferred_hits = self._deferred_hits or [], []
        if not items:
            return
        try:
            with self._index.write():
                ids = [record() for record, _result, _announce in items]
        except Exception:
            ids = [self._index.atomic(record) for record, _result, _announce in items]
        for hit_id, (_record, result, announce) in zip(ids, items):
            result._run_row["id"] = result.run_id = hit_id
            announce()

    def _collect_outputs(
        self,
        active: _Active,
        value: Any,
        keys: Sequence[str],
        declared_paths: Mapping[str, Any] | None,
    ) -> None:
        if declared_paths:
            for key, path in declared_paths.items():
                self._store_output(active, key, Path(path))
            return
        if not keys:
            return
        if isinstance(value, Mapping):
            missing = [k for k in keys if k not in value]
            if missing:
                raise OutputError(
                    f"The function returned no path for declared outputs {missing}",
                    f"it returned a dict with keys {sorted(map(str, value))}",
                    "return a dict with every key listed in outputs=",
                )
            for key in keys:
                self._store_output(active, key, _as_path(value[key], key))
        elif len(keys) == 1 and value is not None:
            self._store_output(active, keys[0], _as_path(value, keys[0]))
        else:
            raise OutputError(
                f"The function returned {type(value).__name__} but outputs={list(keys)} were declared",
                "a single output needs a path as return value; several need a dict key -> path",
                "return the output path(s) from the function",
            )


_LINK_ONLY = ("link_key", "direction", "_new", "_members")


#: Written by every final record, whatever the record under the run's id says now: another
#: process may have marked the run interrupted meanwhile (a heartbeat that seemed to stop).
_FINAL_COLUMNS = ("status", "ended_at", "error")


def _changed(recorded: Mapping[str, Any] | None, row: Mapping[str, Any]) -> list[str] | None:
    """The columns a final record writes: those of ``row`` that differ from its ``recorded`` version, and
    :data:`_FINAL_COLUMNS` (None, the whole row: no recorded version known)."""
    if recorded is None or recorded.get("id") != row.get("id"):
        return None
    return [c for c in RUN_COLUMNS if c in _FINAL_COLUMNS or row.get(c) != recorded.get(c)]


def _wanted_id(plan: _Plan, run_id: str | None) -> str:
    """The id a new run asks for: the caller's, checked, or ``<name>_<8 hex>``."""
    return check_run_id(run_id) if run_id else f"{fit(plan.name)[:190]}_{uuid.uuid4().hex[:8]}"


def _plain_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """An artifact row without the bookkeeping keys used while a run is open."""
    return {k: v for k, v in row.items() if k not in _LINK_ONLY}


def _join_location(base: str, rel: str) -> str:
    """``scratch://`` + ``a.csv`` -> ``scratch://a.csv``; ``project://out`` + ``a.csv`` -> ``project://out/a.csv``."""
    return base + rel if base.endswith("://") else f"{base.rstrip('/')}/{rel}"


def _member_rows(dir_row: Mapping[str, Any], manifest: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    """One artifact per file of a directory output, keyed by its path relative to the directory.

    Members are found by queries (``get_artifacts_for_run(...).outputs``, a key such as
    ``summary/mode_share.csv``); restores use the directory artifact alone.
    """
    base_uri, base_loc = dir_row["uri"], dir_row.get("location")
    rows = []
    meta = dumps({"member_of": dir_row["id"]})
    run_id, created = dir_row.get("run_id"), dir_row.get("created_at")
    prefix = uuid.uuid4().hex[:24]  # one random prefix, then a counter: unique ids without a uuid per file
    for n, (rel, digest, size) in enumerate(manifest):
        rows.append({
            "id": f"{prefix}{n:08x}", "key": rel, "uri": f"{base_uri}/{rel}",
            "location": _join_location(base_loc, rel) if base_loc else None, "hash": digest, "size": size,
            "kind": "file", "driver": driver_for_name(rel), "run_id": run_id,
            "created_at": created, "meta": meta, "_new": True,
        })  # fmt: skip
    return rows
