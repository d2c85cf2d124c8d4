"""The Tracker: records runs, decides cache hits and restores outputs."""

from __future__ import annotations

import atexit
import dataclasses
import functools
import inspect
import logging
import os
import socket
import time
import uuid
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import context
from .errors import (
    ConsistError,
    ConsistWarning,
    IntegrityError,
    OutputError,
    RunStateError,
    StoreError,
    warn_caller,
)
from .hashing import FileHasher, NullMemo, canonical, dumps, hash_canonical, loads
from .identity import caller_source, code_identity, explain_miss, make_signature
from .index import Index, index_path_for, pid_alive
from .locations import Roots, UnresolvableLocation
from .names import check_run_id, fit
from .objects import (
    ObjectStore,
    file_entries,
    holds,
    link_digest,
    manifest_size,
    mode_meta,
    modes_meta,
    place,
    restore_all,
)
from .paths import as_path
from .queries import MaintenanceMixin, QueryMixin
from .results import RunResult
from .store import DuckStore

if TYPE_CHECKING:
    from .models import Artifact, Run

log = logging.getLogger("consist")

CACHE_MODES = ("reuse", "overwrite", "readonly")
HOST = socket.gethostname()

_DRIVERS = {
    ".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet", ".json": "json",
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".h5": "h5", ".hdf5": "h5", ".zarr": "zarr",
    ".nc": "netcdf", ".omx": "openmatrix", ".txt": "text", ".log": "text", ".yaml": "yaml",
    ".yml": "yaml", ".sif": "sif",
}  # fmt: skip


def driver_for(path: Path, is_dir: bool = False) -> str | None:
    """A format name from the file extension (None when unknown)."""
    if is_dir and path.suffix.lower() != ".zarr":
        return "dir"
    return _DRIVERS.get(path.suffix.lower())


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


@dataclasses.dataclass
class _Plan:
    """Everything needed to identify a run, computed before any decision."""

    name: str
    model: str
    components: dict[str, Any]
    config: Any
    config_hash: str
    inputs: list[tuple[str, Path, str]]  # (key, path, hash)
    cache_mode: str
    year: int | None
    iteration: int | None
    hasher: FileHasher

    @functools.cached_property
    def signature(self) -> str:
        return make_signature(self.components)


@dataclasses.dataclass
class _Active:
    """A run in progress."""

    row: dict[str, Any]
    plan: _Plan
    outputs: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    cached_outputs: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    scenario: Any = None  # the ScenarioContext when this run is a scenario header

    @property
    def id(self) -> str:
        return self.row["id"]

    @property
    def persist(self) -> bool:
        return self.plan.cache_mode != "readonly"


def _close_at_exit(ref: weakref.ref[Tracker]) -> None:
    tracker = ref()
    if tracker is not None:
        tracker.close()


class Tracker(QueryMixin, MaintenanceMixin):
    """Records provenance in a DuckDB database and reuses the outputs of identical runs.

    Parameters
    ----------
    run_dir:
        Workspace root. Outputs are kept in a content-addressed store under
        ``run_dir/.consist/objects``.
    db_path:
        The DuckDB file; defaults to ``run_dir/provenance.duckdb``. Several
        processes may share it.
    mounts:
        Named host roots (``{"data": "/scratch/data"}``) that containers may mount.
    project_root:
        Where the git checkout that versions the code is looked up.
    hashing_strategy:
        ``"full"`` hashes input content with SHA-256; ``"fast"`` hashes size and
        mtime only.
    allow_external_paths:
        Let outputs live outside ``run_dir`` and the mounts. None reads
        ``CONSIST_ALLOW_EXTERNAL_PATHS=1``.
    cache_epoch:
        Part of every signature: bump it to invalidate all cached runs.
    code_version:
        Pins the code identity of every run instead of asking git.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        db_path: str | os.PathLike[str] | None = None,
        *,
        mounts: Mapping[str, str | os.PathLike[str]] | None = None,
        project_root: str | os.PathLike[str] = ".",
        hashing_strategy: str = "full",
        allow_external_paths: bool | None = None,
        cache_epoch: int = 1,
        code_version: str | None = None,
    ) -> None:
        if hashing_strategy not in ("full", "fast"):
            raise ConsistError(
                f"Unknown hashing_strategy {hashing_strategy!r}",
                None,
                'use "full" (content, the default) or "fast" (size and mtime only)',
            )
        self.run_dir = Path(run_dir).resolve()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = Path(db_path).resolve() if db_path is not None else self.run_dir / "provenance.duckdb"
        self.mounts = {str(k): Path(v).resolve() for k, v in (mounts or {}).items()}
        self.project_root = Path(project_root).resolve()
        self.hashing_strategy = hashing_strategy
        if allow_external_paths is None:
            allow_external_paths = _truthy(os.environ.get("CONSIST_ALLOW_EXTERNAL_PATHS"))
        self.allow_external_paths = bool(allow_external_paths)
        self.cache_epoch = cache_epoch
        self.code_version = code_version
        self.roots = Roots(self.run_dir, self.project_root, self.mounts, allow_external=self.allow_external_paths)
        self._index = Index(index_path_for(self.db_path))
        self._objects = ObjectStore(self.run_dir / ".consist" / "objects", memo=self._index)
        self._store = DuckStore(self.db_path, self._index)
        self._store.reconcile()  # a new index beside an existing DuckDB file takes over its past runs
        self._stack: list[_Active] = []
        self._hooks: dict[str, list[Callable[..., Any]]] = {"start": [], "complete": [], "failed": []}
        self._closed = False
        self._reap_interrupted()
        atexit.register(_close_at_exit, weakref.ref(self))

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Merge pending runs into the DuckDB file and release it. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self._store.sync(timeout=15.0)
        except StoreError as exc:  # locked, damaged or a full disk: nothing is lost
            warnings.warn(
                f"{exc} The runs stay in the run index and are merged by the next query.", ConsistWarning, stacklevel=2
            )
        finally:
            self._store.dispose()
            self._index.close()

    def sync(self) -> int:
        """Merge runs recorded so far into the DuckDB file now; returns rows merged."""
        return self._store.sync()

    @property
    def engine(self) -> Any:
        """An SQLAlchemy engine on the DuckDB file, up to date with every recorded run."""
        return self._store.engine

    def _reap_interrupted(self) -> None:
        """Mark runs whose process died on this host as ``interrupted``."""
        rows = self._index.query("SELECT id, pid FROM run WHERE status = 'running' AND host = ?", (HOST,))
        for row in rows:
            if row["pid"] and row["pid"] != os.getpid() and not pid_alive(int(row["pid"])):
                full = self._index.run(row["id"])
                if full and full["status"] == "running":
                    full.update(
                        status="interrupted",
                        ended_at=time.time(),
                        error=f"process {row['pid']} ended before the run finished",
                    )
                    self._index.upsert_run(full)

    # ------------------------------------------------------------------ scenarios

    def _scenario(self, below: _Active | None = None) -> Any:
        """The innermost open scenario (ignoring ``below`` and what is above it)."""
        stack = self._stack[: self._stack.index(below)] if below in self._stack else self._stack
        for active in reversed(stack):
            if active.scenario is not None:
                return active.scenario
        return None

    def _coupler_path(self, value: Any) -> Path | None:
        """A string input naming a coupler key of the open scenario resolves to that artifact."""
        sc = self._scenario()
        if sc is not None and isinstance(value, str) and value in sc.coupler:
            return sc.coupler.path(value)
        return None

    def _step_done(self, step: _Active | None, outputs: Mapping[str, dict[str, Any]]) -> None:
        sc = self._scenario(step)
        if sc is not None:
            sc.coupler._update(outputs)

    def scenario(self, name: str, *, config: Any = None, tags: Sequence[str] | None = None) -> Any:
        """A multi-step scenario on this tracker: see :func:`consist.scenario`."""
        from .scenarios import ScenarioContext

        return ScenarioContext(self, name, config=config, tags=tags)

    # ------------------------------------------------------------------ hooks

    def on_run_start(self, callback: Callable[[Run], Any]) -> Callable[[Run], Any]:
        """Call ``callback(run)`` when a run starts. Usable as a decorator."""
        self._hooks["start"].append(callback)
        return callback

    def on_run_complete(self, callback: Callable[[Run, dict[str, Artifact]], Any]) -> Callable[..., Any]:
        """Call ``callback(run, outputs)`` when a run completes (hits included)."""
        self._hooks["complete"].append(callback)
        return callback

    def on_run_failed(self, callback: Callable[[Run, BaseException], Any]) -> Callable[..., Any]:
        """Call ``callback(run, exception)`` when a run fails."""
        self._hooks["failed"].append(callback)
        return callback

    def _fire(self, event: str, row: dict[str, Any], *extra: Any) -> None:
        if not self._hooks[event]:
            return
        from .models import artifact_from_row, run_from_row

        run = run_from_row(row)
        args: tuple[Any, ...] = extra
        if event == "complete":
            args = ({k: artifact_from_row(r) for k, r in extra[0].items()},)
        for cb in list(self._hooks[event]):
            try:
                cb(run, *args)
            except Exception:
                log.exception("consist: the %s hook %r raised; the run is not affected", event, cb)

    # ------------------------------------------------------------------ identity

    def _hasher(self, cache_mode: str) -> FileHasher:
        memo = self._index if cache_mode != "readonly" else _ReadOnlyMemo(self._index)
        return FileHasher(memo, self.hashing_strategy)

    def _plan(
        self,
        *,
        fn: Callable[..., Any] | None,
        source: Path | None,
        name: str,
        model: str,
        config: Any,
        inputs: Any,
        year: int | None,
        iteration: int | None,
        cache_mode: str,
        code_version: str | None,
        extra: Mapping[str, Any] | None = None,
    ) -> _Plan:
        if cache_mode not in CACHE_MODES:
            raise ConsistError(f"Unknown cache_mode {cache_mode!r}", None, f"use one of {', '.join(CACHE_MODES)}")
        hasher = self._hasher(cache_mode)
        resolved = []
        for key, path in normalize_inputs(inputs, self._coupler_path):
            resolved.append((key, path, hasher.hash_path(path, key)))
        cfg = self._canonical_config(config, hasher)
        config_hash = hash_canonical(cfg)
        code = code_version or self.code_version or code_identity(fn, self.project_root, source)
        components: dict[str, Any] = {
            "code": code,
            "config": config_hash,
            "inputs": {k: h for k, _p, h in resolved},
            "run_fields": {"model": model, "year": year, "iteration": iteration},
            "cache_epoch": self.cache_epoch,
        }
        if extra:
            components.update(extra)
        return _Plan(
            name=name,
            model=model,
            components=components,
            config=cfg,
            config_hash=config_hash,
            inputs=resolved,
            cache_mode=cache_mode,
            year=year,
            iteration=iteration,
            hasher=hasher,
        )

    @staticmethod
    def _canonical_config(config: Any, hasher: FileHasher) -> Any:
        if isinstance(config, os.PathLike) or (isinstance(config, str) and os.path.isfile(config)):
            # A config file (YAML, JSON, ...): its content is the config.
            return {"$config_file": hasher.hash_path(Path(config), "config")}  # canonical() escapes user "$" keys
        return canonical(config if config is not None else {})

    # ------------------------------------------------------------------ lookup and restore

    def _store_for(self, digest: str) -> ObjectStore:
        if self._objects.has(digest):
            return self._objects
        for root in self._index.object_stores(digest):
            store = ObjectStore(Path(root), memo=self._index)
            if store.has(digest):
                return store
        return self._objects  # verify() then reports the object as missing

    def _try_reuse(
        self,
        plan: _Plan,
        dests: Mapping[str, Path] | None,
        required: Sequence[str] | None,
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]] | str:
        """Restore the outputs of the newest usable producer; else say why not."""
        producers = self._index.producers(plan.signature)
        if not producers:
            return "no_match"
        reason = "no_match"
        for prod in producers:
            outs = {o["link_key"]: o for o in self._index.outputs_of(prod["id"])}
            if required and not set(required) <= set(outs):
                reason = "outputs_not_recorded"
                continue
            restored: dict[str, dict[str, Any]] = {}
            try:
                plan_dest = {
                    k: Path(dests[k]) if dests and k in dests else self._restore_path(o) for k, o in outs.items()
                }
                needed = {k: o for k, o in outs.items() if not _holds(o, plan_dest[k], plan.hasher)}
                self._index.lease_restoring((o["hash"], o["kind"]) for o in needed.values())  # see prune_store
                to_write = {}
                for k, o in needed.items():  # check every object before writing anything
                    store = self._store_for(o["hash"])
                    to_write[k] = (store, store.check(o["kind"], o["hash"], o["size"], o.get("meta")))
                # Every copy is hashed beside its destination; none is published unless all matched.
                restore_all((store, checked, plan_dest[k]) for k, (store, checked) in to_write.items())
                for k, o in outs.items():
                    dest = plan_dest[k]
                    members = self._index.members_of(prod["id"], o["id"]) if o["kind"] == "dir" else []
                    at = place(dest)  # a restored link is recorded where it is, not where it points
                    if Path(o["uri"]) != at:
                        o = {
                            **o,
                            "id": uuid.uuid4().hex,
                            "uri": str(at),
                            "location": self.roots.locate(at) or str(at),
                            "created_at": time.time(),
                            "meta": dumps({"restored_from": o["id"]}),
                        }
                        o["_new"] = True
                        members = _member_rows(o, [[m["link_key"], m["hash"], m["size"]] for m in members])
                        for m in members:
                            m["run_id"] = o["run_id"]
                    if members:
                        o["_members"] = members
                    restored[k] = o
            except (IntegrityError, OSError, UnresolvableLocation) as exc:
                missing = getattr(exc, "missing_digest", None)
                if missing and not self._index.object_stores(missing):
                    reason = "outputs_pruned"  # removed on purpose by prune_store(): no warning
                    continue
                warn_caller(
                    f"Cached outputs of run {prod['id']!r} cannot be restored ({exc}); running the step again."
                )
                reason = "outputs_unavailable"
                continue
            return prod, restored
        return reason

    def _restore_path(self, row: Mapping[str, Any]) -> Path:
        """Where a recorded output goes in *this* workspace (see :mod:`consist.locations`)."""
        return self.roots.resolve(row.get("location") or row["uri"])

    def _explain(self, plan: _Plan, reason: str) -> dict[str, Any]:
        candidates = self._index.recent_runs_of_model(plan.model)
        expl = explain_miss(plan.components, plan.config, candidates, loads=loads)
        if plan.cache_mode == "overwrite":
            expl["reason"] = "cache_mode_overwrite"
        elif reason in ("outputs_unavailable", "outputs_not_recorded", "outputs_pruned"):
            expl["reason"] = reason
        return expl

    # ------------------------------------------------------------------ recording

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
    ) -> _Active:
        wanted = check_run_id(run_id) if run_id else f"{fit(plan.name)[:190]}_{uuid.uuid4().hex[:8]}"
        row = self._new_row(plan, wanted, parent, tags)
        row["status"] = status
        if meta:
            row["meta"] = dumps(meta)
        if plan.cache_mode != "readonly":
            with self._index.write():
                row["id"] = self._index.claim_run_id(wanted, row)
                self._link_inputs(row["id"], plan)
        active = _Active(row=row, plan=plan)
        return active

    def _link_inputs(self, run_id: str, plan: _Plan) -> None:
        for key, path, digest in plan.inputs:
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

    def _store_output(self, active: _Active, key: str, path: Path, *, allow_external: bool = False) -> dict[str, Any]:
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
            if active.persist:  # leased like any stored output (see _store_leased)
                self._index.lease_written(active.id, digest, "link", str(self._objects.root), size)
        elif active.persist:
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
        """Record the files of a directory output as member artifacts of the run (key = relative path)."""
        for m in out.pop("_members", None) or ():
            if m.pop("_new", False):
                self._index.add_artifact(_plain_row(m))
            self._index.link(run_id, m["id"], "member", m["key"])

    def _finish(self, active: _Active, status: str, error: BaseException | str | None = None) -> None:
        if status == "failed" and active.scenario is None:
            sc = self._scenario(active)
            if sc is not None:
                sc._step_failed(active.id)
        row = active.row
        row["status"] = status
        row["ended_at"] = time.time()
        if error is not None:
            row["error"] = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        if active.persist:
            with self._index.write():
                for key, out in active.outputs.items():
                    # Produced here, or a restored copy at a new place (a row of its own, same producer).
                    if out.get("run_id") == active.id or out.pop("_new", False):
                        self._index.add_artifact(_plain_row(out))
                    self._index.link(active.id, out["id"], "output", key)
                    self._link_members(active.id, out)
                self._index.upsert_run(row)

    # ------------------------------------------------------------------ tracker.run

    def run(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        run_id: str | None = None,
        model: str | None = None,
        config: Any = None,
        inputs: Any = None,
        outputs: Sequence[str] | Mapping[str, str | os.PathLike[str]] | None = None,
        cache_mode: str = "reuse",
        year: int | None = None,
        iteration: int | None = None,
        tags: Sequence[str] | None = None,
        code_version: str | None = None,
        parent_run_id: str | None = None,
    ) -> RunResult:
        """Run ``fn`` unless an identical run already produced its outputs.

        Parameters
        ----------
        fn:
            The step. Config keys are passed to same-named parameters (a parameter
            named ``config`` receives the whole config when no key has that name);
            each ``inputs`` entry is passed as a ``Path`` to the parameter of that name.
        name, model:
            ``name`` defaults to the function name and ``model`` to ``name``.
        run_id:
            The id to record; defaults to ``<name>_<8 hex>``. A taken id is never
            overwritten: the run is recorded as ``<run_id>~2`` (then ``~3``, ...).
        config:
            A dict, Pydantic model, dataclass or a config file path; hashed canonically.
        inputs:
            ``{"param": path_or_artifact}`` (passed to ``fn``) or a list of paths
            (hashed only). Content is hashed with SHA-256; a missing path is an error.
        outputs:
            ``["key", ...]`` names what ``fn`` returns (a path for one key, or a
            dict key → path); ``{"key": path}`` declares files ``fn`` writes.
        cache_mode:
            ``"reuse"`` (default), ``"overwrite"`` (always execute and record) or
            ``"readonly"`` (reuse hits, persist nothing).
        year, iteration, tags:
            Recorded and queryable; ``year`` and ``iteration`` are part of the signature.
        code_version:
            Pins the code identity of this run.
        parent_run_id:
            Recorded as the parent; defaults to the active run, if any.
        """
        if run_id is not None:
            check_run_id(run_id)
        name = check_run_id(name, "name") if name is not None else fit(getattr(fn, "__name__", "step"))
        model = model or name
        declared_paths = dict(outputs) if isinstance(outputs, Mapping) else None
        declared_keys = list(outputs) if outputs is not None else []
        if isinstance(outputs, str):
            declared_keys = [outputs]
        plan = self._plan(
            fn=fn, source=None, name=name, model=model, config=config, inputs=inputs, year=year,
            iteration=iteration, cache_mode=cache_mode, code_version=code_version,
        )  # fmt: skip
        parent = parent_run_id or (self._stack[-1].id if self._stack else None)
        dests = {k: Path(v) for k, v in declared_paths.items()} if declared_paths else None

        reason = "no_match"
        if cache_mode != "overwrite":
            found = self._try_reuse(plan, dests, declared_keys)
            if not isinstance(found, str):
                return self._record_hit(plan, found, run_id, parent, tags)
            reason = found

        active = self._open(plan, run_id, parent, tags, meta={"cache_miss_explanation": self._explain(plan, reason)})
        self._fire("start", active.row)
        self._stack.append(active)
        token = context.set_current(self)
        try:
            kwargs = _bind(fn, config, plan.inputs, inputs)
            value = fn(**kwargs)
            self._collect_outputs(active, value, declared_keys, declared_paths)
        except BaseException as exc:
            self._finish(active, "failed", exc)
            self._fire("failed", active.row, exc)
            raise
        finally:
            context.reset_current(token)
            self._stack.remove(active)
        self._finish(active, "completed")
        self._fire("complete", active.row, active.outputs)
        self._step_done(None, active.outputs)
        return RunResult(active.id, False, None, active.row, dict(active.outputs))

    def _record_hit(
        self,
        plan: _Plan,
        found: tuple[dict[str, Any], dict[str, dict[str, Any]]],
        run_id: str | None,
        parent: str | None,
        tags: Sequence[str] | None,
    ) -> RunResult:
        producer, outs = found
        active = self._open(plan, run_id, parent, tags, status="completed")
        row = active.row
        row.update(cache_hit=1, cache_source=producer["id"], ended_at=time.time())
        if active.persist:
            with self._index.write():
                self._index.upsert_run(row)
                for key, o in outs.items():
                    if o.pop("_new", False):
                        o["run_id"] = producer["id"]
                        self._index.add_artifact(_plain_row(o))
                    self._index.link(row["id"], o["id"], "output", key)
                    self._link_members(row["id"], o)
        clean = {k: _plain_row(o) for k, o in outs.items()}
        self._fire("start", row)
        self._fire("complete", row, clean)
        self._step_done(None, clean)
        return RunResult(row["id"], True, producer["id"], row, clean)

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

    # ------------------------------------------------------------------ manual lifecycle

    def begin_run(
        self,
        run_id: str,
        model: str,
        config: Any = None,
        inputs: Any = None,
        tags: Sequence[str] | None = None,
        cache_mode: str = "reuse",
        *,
        year: int | None = None,
        iteration: int | None = None,
        parent_run_id: str | None = None,
        code_version: str | None = None,
    ) -> Run:
        """Start a run by hand; finish it with :meth:`end_run`.

        With ``cache_mode="reuse"``, when an identical run completed before, its
        outputs are restored now and the returned run has ``cache_hit=True`` and
        ``cache_source`` set: the caller may skip its work. Logging an output the
        cached run did not have (or with other content) turns it into a normal run.
        """
        check_run_id(run_id)
        plan = self._plan(
            fn=None, source=caller_source(), name=run_id, model=model, config=config, inputs=inputs, year=year,
            iteration=iteration, cache_mode=cache_mode, code_version=code_version,
        )  # fmt: skip
        parent = parent_run_id or (self._stack[-1].id if self._stack else None)
        found: Any = "no_match"
        if cache_mode != "overwrite":
            found = self._try_reuse(plan, None, None)
        meta = None if not isinstance(found, str) else {"cache_miss_explanation": self._explain(plan, found)}
        active = self._open(plan, run_id, parent, tags, meta=meta)
        if not isinstance(found, str):
            producer, outs = found
            active.row.update(cache_hit=1, cache_source=producer["id"])
            active.cached_outputs = outs
        self._stack.append(active)
        self._fire("start", active.row)
        from .models import run_from_row

        return run_from_row(active.row)

    def end_run(self, status: str = "completed", error: BaseException | str | None = None) -> Run:
        """Finish the active run with ``status`` (``completed`` or ``failed``)."""
        if not self._stack:
            raise RunStateError("end_run() called with no active run", None, "call begin_run() first")
        active = self._stack.pop()
        if active.row["cache_hit"] and status == "completed":
            for key, o in active.cached_outputs.items():
                active.outputs.setdefault(key, o)
        if status != "completed":
            active.row.update(cache_hit=0, cache_source=None)
        self._finish(active, status, error)
        if status == "completed":
            self._fire("complete", active.row, active.outputs)
            if active.scenario is None:
                self._step_done(active, active.outputs)
        else:
            self._fire("failed", active.row, error)
        from .models import run_from_row

        return run_from_row(active.row)

    @contextmanager
    def start_run(self, run_id: str, model: str, **kwargs: Any) -> Iterator[Run]:
        """:meth:`begin_run` as a context manager; an exception marks the run ``failed``."""
        run = self.begin_run(run_id, model, **kwargs)
        token = context.set_current(self)
        try:
            yield run
        except BaseException as exc:
            context.reset_current(token)
            self.end_run("failed", exc)
            raise
        context.reset_current(token)
        self.end_run()

    @property
    def current_run(self) -> Run | None:
        """The active run, if any."""
        if not self._stack:
            return None
        from .models import run_from_row

        return run_from_row(self._stack[-1].row)

    def _active(self) -> _Active:
        if not self._stack:
            raise RunStateError(
                "Cannot log an artifact: no run is active",
                "log_artifact records into the current run",
                "call it inside tracker.run(...), tracker.start_run(...) or between begin_run() and end_run()",
            )
        return self._stack[-1]

    def log_artifact(self, path: str | os.PathLike[str], key: str | None = None, direction: str = "output") -> Artifact:
        """Record a file or directory as an input or output of the active run."""
        from .models import artifact_from_row

        active = self._active()
        p = Path(path)
        key = key or p.name
        if direction == "input":
            digest = active.plan.hasher.hash_path(p, key)
            entry = (key, p, digest)
            active.plan.inputs.append(entry)
            if active.persist:
                with self._index.write():
                    self._link_inputs(active.id, dataclasses.replace(active.plan, inputs=[entry]))
            links = {r["link_key"]: r for r in self._index.links_of(active.id, "input")} if active.persist else {}
            row = links.get(key) or {
                "id": "",
                "key": key,
                "uri": str(p.resolve()),
                "hash": digest,
                "kind": "file",
                "run_id": None,
            }
            return artifact_from_row(row)
        if direction != "output":
            raise ConsistError(f"Unknown direction {direction!r}", None, 'use "input" or "output"')
        cached = active.cached_outputs.get(key)
        if active.row["cache_hit"] and cached is not None:
            digest = FileHasher(active.plan.hasher.memo).hash_path(p, key)
            if digest == cached["hash"]:
                active.outputs[key] = cached
                return artifact_from_row(cached)
        if active.row["cache_hit"]:
            # New content in a cached run: it executed after all, so it becomes a producer.
            active.row.update(cache_hit=0, cache_source=None)
            if active.persist:
                self._index.upsert_run(active.row)
        return artifact_from_row(self._store_output(active, key, p))

    def log_input(self, path: str | os.PathLike[str], key: str | None = None) -> Artifact:
        """Record an input of the active run."""
        return self.log_artifact(path, key, direction="input")

    def log_output(self, path: str | os.PathLike[str], key: str | None = None) -> Artifact:
        """Record an output of the active run (stored for later cache hits)."""
        return self.log_artifact(path, key, direction="output")


class _ReadOnlyMemo(NullMemo):
    """Reads the memo but never writes it (readonly runs persist nothing)."""

    def __init__(self, index: Index) -> None:
        self._index = index

    def memo_get(self, key: tuple[int, int, int, int], algo: str) -> str | None:
        return self._index.memo_get(key, algo)


_LINK_ONLY = ("link_key", "direction", "_new", "_members")


def _plain_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """An artifact row without the bookkeeping keys used while a run is open."""
    return {k: v for k, v in row.items() if k not in _LINK_ONLY}


def _member_rows(dir_row: Mapping[str, Any], manifest: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    """One artifact per file of a directory output, keyed by its path relative to the directory.

    Members are found by queries (``get_artifacts_for_run(...).outputs``, a key such as
    ``summary/mode_share.csv``); restores use the directory artifact alone.
    """
    base_uri, base_loc = dir_row["uri"], dir_row.get("location")
    rows = []
    for rel, digest, size in manifest:
        rows.append({
            "id": uuid.uuid4().hex, "key": rel, "uri": f"{base_uri}/{rel}",
            "location": f"{base_loc.rstrip('/')}/{rel}" if base_loc else None, "hash": digest, "size": size,
            "kind": "file", "driver": driver_for(Path(rel)), "run_id": dir_row.get("run_id"),
            "created_at": dir_row.get("created_at"), "meta": dumps({"member_of": dir_row["id"]}), "_new": True,
        })  # fmt: skip
    return rows


def _holds(row: dict[str, Any], dest: Path, hasher: FileHasher) -> bool:
    """True when dest already is the artifact: kind, content and modes (no copy needed; never through a link)."""
    return holds(row["kind"], row["hash"], row.get("size"), row.get("meta"), dest, hasher)


def _as_path(value: Any, key: str) -> Path:
    path = as_path(value)
    if path is not None:
        return path
    raise OutputError(
        f"Output {key!r} is a {type(value).__name__}, not a path",
        "the function must return where it wrote the output",
        "write the data to a file and return its path",
    )


def normalize_inputs(inputs: Any, resolve: Callable[[Any], Path | None] | None = None) -> list[tuple[str, Path]]:
    """``(key, path)`` pairs from a dict or a list of paths, artifacts or run results.

    ``resolve`` may map a value to a path first (scenario coupler keys).
    """
    if inputs is None:
        return []
    items: list[tuple[str | None, Any]]
    if isinstance(inputs, Mapping):
        items = [(str(k), v) for k, v in inputs.items()]
    elif isinstance(inputs, (str, os.PathLike)) or hasattr(inputs, "uri"):
        items = [(None, inputs)]
    else:
        items = [(None, v) for v in inputs]
    out: list[tuple[str, Path]] = []
    seen: set[str] = set()
    for key, value in items:
        found = resolve(value) if resolve is not None else None
        path = found if found is not None else _input_path(value)
        k = key or (value if found is not None and isinstance(value, str) else path.name)
        if key is None and k in seen:
            n = 2
            while f"{k}#{n}" in seen:
                n += 1
            k = f"{k}#{n}"
        seen.add(k)
        out.append((k, path))
    return out


def _input_path(value: Any) -> Path:
    if isinstance(value, RunResult):
        outs = value._output_rows
        if len(outs) != 1:
            raise ConsistError(
                f"A run result with {len(outs)} outputs was passed as one input",
                "it is ambiguous which output is meant",
                "pass result.outputs[key] instead",
            )
        return Path(next(iter(outs.values()))["uri"])
    path = as_path(value)
    if path is not None:
        return path
    raise ConsistError(
        f"Input of type {type(value).__name__} is not a path, artifact or run result",
        None,
        "pass a path (str or pathlib.Path), an Artifact or a RunResult",
    )


def _bind(fn: Callable[..., Any], config: Any, resolved: list[tuple[str, Path, str]], raw: Any) -> dict[str, Any]:
    """Keyword arguments for fn: config values and input paths by parameter name."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs: dict[str, Any] = {}
    if config is not None:
        if isinstance(config, Mapping):
            values = dict(config)
        elif dataclasses.is_dataclass(config) and not isinstance(config, type):
            values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        elif hasattr(config, "model_dump"):
            values = {k: getattr(config, k) for k in type(config).model_fields}
        else:
            values = {}
        for k, v in values.items():
            if k in params or takes_any:
                kwargs[k] = v
        if "config" in params and "config" not in values:
            kwargs["config"] = config
    if isinstance(raw, Mapping):
        for key, path, _h in resolved:
            if key in params or takes_any:
                kwargs[key] = path
    return kwargs
