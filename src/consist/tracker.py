"""The Tracker: records runs, decides cache hits and restores outputs."""

from __future__ import annotations

import atexit
import functools
import logging
import os
import warnings
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import context, logs
from .errors import (
    ConsistWarning,
    RunStateError,
    StoreError,
    check_option,
)
from .hashing import FileHasher, canonical, hash_canonical, loads
from .identity import code_identity, explain_miss, identity_items
from .inflight import InflightMixin
from .locations import Roots
from .lookups import LookupMixin
from .manual import ManualRunMixin
from .names import check_run_id, fit
from .objects import (
    ObjectStore,
)
from .planning import _Active, _bind, _Plan, _ReadOnlyMemo, resolve_inputs
from .queries import MaintenanceMixin, QueryMixin
from .recording import RecordingMixin
from .restoring import RestoreMixin
from .results import RunResult
from .runmeta import user_run_meta
from .store import export_duckdb, open_backend

if TYPE_CHECKING:
    from .models import Artifact, Run
    from .sweeps import BatchResult, TrackerSpec

log = logging.getLogger("consist")

CACHE_MODES = ("reuse", "overwrite", "readonly")
VALIDATE_MODES = ("lazy", "eager")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


@functools.lru_cache(maxsize=4096)
def _loads_recorded(text: str) -> Any:
    """``loads`` of a recorded run's identity or config, remembered: a run of misses of one model
    compares itself with the same recent runs each time. Callers only read what it returns."""
    return loads(text)


@functools.lru_cache(maxsize=4096)
def _recorded_items(text: str) -> tuple[frozenset[Any], frozenset[str]]:
    """:func:`consist.identity.identity_items` of a recorded identity, remembered like :func:`_loads_recorded`."""
    return identity_items(_loads_recorded(text))


def _freeze(value: Any) -> Any:
    return tuple(sorted(value.items())) if isinstance(value, dict) else value


def _close_at_exit(ref: weakref.ref[Tracker]) -> None:
    tracker = ref()
    if tracker is not None:
        tracker.close()


class Tracker(LookupMixin, QueryMixin, MaintenanceMixin, RestoreMixin, InflightMixin, RecordingMixin, ManualRunMixin):
    """Records provenance in a DuckDB database and reuses the outputs of identical runs.

    Parameters
    ----------
    run_dir:
        Workspace root. Outputs are kept in a content-addressed store under
        ``run_dir/.consist/objects``.
    db_path:
        The DuckDB file; defaults to ``run_dir/provenance.duckdb``. Several
        processes of one machine may share it.
    db_url:
        A PostgreSQL database (``postgresql://user:password@host:port/db``) to record
        in instead of the DuckDB file, shared by every node of a cluster. None reads
        ``CONSIST_DB_URL``. Needs ``pip install 'consist[cluster]'``.
    store_dir:
        The content-addressed object store of outputs; defaults to
        ``run_dir/.consist/objects``. Put it on a file system every node mounts
        (with ``db_url``) so that a hit on one node restores what another produced.
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
    durable:
        Flush every stored output and every record to disk before a run counts as
        recorded, so that even a power failure loses no recorded run (a few
        milliseconds per run on most disks). Without it nothing recorded is lost
        when any process dies; a power failure may lose the last runs or damage
        stored outputs, and a hit verifies every byte it restores, so a damaged
        output makes the step run again, never a wrong result. None reads
        ``CONSIST_DURABLE=1``. A PostgreSQL database (``db_url``) always commits durably.
    read_only:
        Open an existing history for looking only (analysis notebooks): queries and
        lookups work, while anything that would record, restore into the workspace
        or change the database raises :class:`~consist.RunStateError`. Nothing is
        created, merged or written, not even the run directory.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        db_path: str | os.PathLike[str] | None = None,
        *,
        db_url: str | None = None,
        store_dir: str | os.PathLike[str] | None = None,
        mounts: Mapping[str, str | os.PathLike[str]] | None = None,
        project_root: str | os.PathLike[str] = ".",
        hashing_strategy: str = "full",
        allow_external_paths: bool | None = None,
        cache_epoch: int = 1,
        code_version: str | None = None,
        durable: bool | None = None,
        read_only: bool = False,
    ) -> None:
        check_option("hashing_strategy", hashing_strategy, ("full", "fast"))
        self.read_only = bool(read_only)
        self.run_dir = Path(run_dir).resolve()
        if not self.read_only:
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
        self.db_url = db_url if db_url is not None else os.environ.get("CONSIST_DB_URL") or None
        self.store_dir = Path(store_dir).resolve() if store_dir is not None else self.run_dir / ".consist" / "objects"
        if durable is None:
            durable = _truthy(os.environ.get("CONSIST_DURABLE"))
        self.durable = bool(durable)
        self._index, self._store = open_backend(self.db_path, self.db_url, read_only=self.read_only)
        if self.durable and not self.read_only:
            self._index.make_durable()
        # How a worker process opens this same tracker (see spec()).
        self._spec = {
            "run_dir": str(self.run_dir), "db_path": str(self.db_path), "db_url": self.db_url,
            "store_dir": str(self.store_dir), "mounts": {k: str(v) for k, v in self.mounts.items()},
            "project_root": str(self.project_root), "hashing_strategy": hashing_strategy,
            "allow_external_paths": self.allow_external_paths, "cache_epoch": cache_epoch, "code_version": code_version,
            "durable": self.durable,
        }  # fmt: skip
        self._objects = ObjectStore(self.store_dir, memo=self._index, durable=self.durable)
        self._stack: list[_Active] = []
        self._hooks: dict[str, list[Callable[..., Any]]] = {"start": [], "complete": [], "failed": []}
        self._closed = False
        if not self.read_only:
            self._store.reconcile()  # a new index beside an existing DuckDB file takes over its past runs
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
        """Merge pending runs into the DuckDB file (if any) and release it. Safe to call twice.

        A process that never loaded DuckDB hands the merge to a detached process instead,
        so a short script ends at once; the file is current for outside readers a moment
        later (set ``CONSIST_MERGE_ON_CLOSE=wait`` to merge before close() returns).
        Queries through consist always see every completed run.
        """
        if self._closed:
            return
        self._closed = True
        try:
            if not getattr(self._store, "merge_later", lambda: False)():
                self._store.sync(timeout=15.0)
        except StoreError as exc:  # locked, damaged or a full disk: nothing is lost
            warnings.warn(
                f"{exc} The runs stay in the run index and are merged by the next query.", ConsistWarning, stacklevel=2
            )
        finally:
            self._store.dispose()
            self._index.close()

    @property
    def _stash(self) -> Path:
        """Where inputs given as artifacts whose file is gone are put back (one folder per content)."""
        return self.run_dir / ".consist" / "inputs"

    def _writable(self, doing: str) -> None:
        """Refuse, clearly, what a read-only tracker must not do."""
        if self.read_only:
            raise RunStateError(
                f"Cannot {doing}: this tracker is read-only",
                "it was opened with read_only=True, for looking at the history only",
                "open another Tracker on the same run_dir and database without read_only to record runs",
            )

    def sync(self) -> int:
        """Merge runs recorded so far into the DuckDB file now; returns rows merged."""
        return self._store.sync()

    @property
    def engine(self) -> Any:
        """An SQLAlchemy engine on the provenance tables (DuckDB or PostgreSQL), up to date with every run."""
        return self._store.engine

    def _reap_interrupted(self) -> None:
        """Mark runs whose process died (on this host) or went silent (on another) as ``interrupted``."""
        self._index.reap_interrupted()

    def spec(self) -> TrackerSpec:
        """A picklable description from which another process opens this same tracker.

        Live connections never cross process boundaries: a worker calls
        ``spec.open()``, which opens (once per process) a tracker on the same
        run_dir, database and object store. With a PostgreSQL ``db_url`` the spec
        holds the URL, password included: hand it only to your own workers.
        """
        from .sweeps import TrackerSpec

        return TrackerSpec(tuple(sorted((k, _freeze(v)) for k, v in self._spec.items())))

    def map_runs(self, fn: Callable[..., Any] | str, rows: Iterable[Any], **options: Any) -> BatchResult:
        """Run one cached step per row, on ``executor`` if given; see :func:`consist.sweeps.map_runs`."""
        from .sweeps import map_runs

        return map_runs(self, fn, rows, **options)

    def lineage_graph(self, key_or_run: str, max_depth: int | None = None) -> dict[str, Any]:
        """The lineage of an artifact (key or id) or of a run's outputs, as a graph.

        Returns ``{"nodes": [...], "edges": [...], "trees": [...]}``: nodes are artifacts
        (``type: "artifact"``, ``label``: key, ``hash``) and runs (``type: "run"``,
        ``label``: run id, ``model``); edges go input -> run -> output. Draw it with
        :func:`consist.lineage.to_dot` or :func:`consist.lineage.to_mermaid`.
        """
        from .lineage import lineage_graph

        return lineage_graph(self._index, key_or_run, max_depth)

    def export_duckdb(self, path: str | os.PathLike[str]) -> dict[str, int]:
        """Write the whole recorded history into a new DuckDB file at ``path``.

        For offline analysis of a PostgreSQL-backed history (the file has the same
        ``run``, ``artifact`` and ``run_artifact`` tables as the embedded store). An
        existing file is never overwritten; a failed export leaves nothing behind.
        Returns how many runs, artifacts and links were written.
        """
        return export_duckdb(self._index, path)

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
        validate_cached_outputs: str = "lazy",
    ) -> _Plan:
        check_option("cache_mode", cache_mode, CACHE_MODES)
        check_option("validate_cached_outputs", validate_cached_outputs, VALIDATE_MODES)
        self._writable(f"record the run {name!r}")
        hasher = self._hasher(cache_mode)
        resolved, recorded, missing = resolve_inputs(inputs, hasher, self._index, self._coupler_path, self._stash)
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
            input_artifacts=recorded,
            missing_inputs=missing,
            validate=validate_cached_outputs,
        )

    @staticmethod
    def _canonical_config(config: Any, hasher: FileHasher) -> Any:
        if isinstance(config, os.PathLike) or (isinstance(config, str) and os.path.isfile(config)):
            # A config file (YAML, JSON, ...): its content is the config.
            return {"$config_file": hasher.hash_path(Path(config), "config")}  # canonical() escapes user "$" keys
        return canonical(config if config is not None else {})

    # ------------------------------------------------------------------ lookup and restore

    def _explain(self, plan: _Plan, reason: str) -> dict[str, Any]:
        candidates = self._index.recent_runs_of_model(plan.model)
        expl = explain_miss(
            plan.components, plan.config, candidates, loads=_loads_recorded, items=_recorded_items,
            config_of=lambda run_id: (self._index.run(run_id) or {}).get("config"),
        )  # fmt: skip
        if plan.cache_mode == "overwrite":
            expl["reason"] = "cache_mode_overwrite"
        elif reason in ("outputs_unavailable", "outputs_not_recorded", "outputs_pruned"):
            expl["reason"] = reason
        return expl

    # ------------------------------------------------------------------ recording

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
        description: str | None = None,
        stage: str | None = None,
        phase: str | None = None,
        meta: Mapping[str, Any] | None = None,
        validate_cached_outputs: str = "lazy",
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
        description, stage, phase, meta:
            Kept in ``Run.meta`` (JSON, queryable; ``find_runs(stage=...)``), not
            part of the identity: a run that differs only in these is a hit.
        validate_cached_outputs:
            ``"lazy"`` (default): a hit checks the objects it restores while copying
            them (an output already in place is checked by its hash memo).
            ``"eager"``: before declaring a hit, every stored object of every output
            is read and hashed again, even those already in place; a damaged or
            missing one makes the step execute. It costs a read of all output bytes
            (about 1 s per GB) on every hit.
        """
        result = self._run_step(
            fn, name=name, run_id=run_id, model=model, config=config, inputs=inputs, outputs=outputs,
            cache_mode=cache_mode, year=year, iteration=iteration, tags=tags, code_version=code_version,
            parent_run_id=parent_run_id, validate_cached_outputs=validate_cached_outputs,
            meta=user_run_meta(description, stage, phase, meta, f"run {name or run_id or 'step'!r}"),
        )  # fmt: skip
        assert result is not None
        return result

    def _run_step(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None,
        run_id: str | None,
        model: str | None,
        config: Any,
        inputs: Any,
        outputs: Sequence[str] | Mapping[str, str | os.PathLike[str]] | None,
        cache_mode: str,
        year: int | None,
        iteration: int | None,
        tags: Sequence[str] | None,
        code_version: str | None,
        parent_run_id: str | None,
        hit_only: bool = False,
        validate_cached_outputs: str = "lazy",
        meta: Mapping[str, Any] | None = None,
    ) -> RunResult | None:
        """:meth:`run`; with ``hit_only``, record and return a cache hit, or return None (nothing recorded)."""
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
            validate_cached_outputs=validate_cached_outputs,
        )  # fmt: skip
        parent = parent_run_id or (self._stack[-1].id if self._stack else None)
        dests = {k: Path(v) for k, v in declared_paths.items()} if declared_paths else None

        if hit_only:
            found = self._try_reuse(plan, dests, declared_keys) if cache_mode != "overwrite" else "no_match"
            return None if isinstance(found, str) else self._record_hit(plan, found, run_id, parent, tags, meta=meta)
        found, waited = self._reuse_or_open(plan, dests, declared_keys, name, run_id, parent, tags, meta)
        if not isinstance(found[0], _Active):
            logs.decision(name, plan.signature, hit_of=found[0]["id"], components=plan.components)
            return self._record_hit(plan, found, run_id, parent, tags, waited_for=waited, meta=meta)
        active = found[0]
        active.unleased = []  # its outputs are recorded as soon as the function returns (see _finish)
        self._fire("start", active.row)
        self._stack.append(active)
        token = context.set_current(self)
        try:
            self._materialize_inputs(plan)
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
        return RunResult(active.id, False, None, active.row, dict(active.outputs), waited_for=waited)

    # ------------------------------------------------------------------ manual lifecycle
