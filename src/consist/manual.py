"""The manual run lifecycle: ``begin_run``/``end_run``, ``start_run`` and logging artifacts."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import context
from .active import RunRecord
from .errors import RunStateError, check_option
from .hashing import FileHasher, loads
from .identity import caller_source
from .names import check_run_id
from .planning import _Active
from .runmeta import (
    RESERVED_ARTIFACT_KEYS,
    RESERVED_RUN_KEYS,
    RUN_TEXT_FIELDS,
    check_meta,
    merged,
    run_fields,
    user_run_meta,
)

if TYPE_CHECKING:
    from .models import Artifact, Run

log = logging.getLogger("consist")


class ManualRunMixin:
    """Runs opened and closed by hand, and artifacts logged inside them.

    Mixed into :class:`consist.tracker.Tracker`.
    """

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
        description: str | None = None,
        stage: str | None = None,
        phase: str | None = None,
        meta: Mapping[str, Any] | None = None,
        validate_cached_outputs: str = "lazy",
        **extra_meta: Any,
    ) -> Run:
        """Start a run by hand; finish it with :meth:`end_run`.

        With ``cache_mode="reuse"``, when an identical run completed before, its
        outputs are restored now and the returned run has ``cache_hit=True`` and
        ``cache_source`` set: the caller may skip its work (``tracker.is_cached``).
        Logging an output the cached run did not have (or with other content) turns
        it into a normal run; logging one it had, by key, returns the cached artifact.

        ``description``, ``stage``, ``phase``, ``meta`` and any other keyword
        (``scenario_label="A"``) are kept in ``Run.meta``; they are not part of
        the run's identity. ``validate_cached_outputs`` is described at
        :meth:`consist.Tracker.run`.
        """
        check_run_id(run_id)
        user_meta = user_run_meta(description, stage, phase, {**(meta or {}), **extra_meta}, f"run {run_id!r}")
        plan = self._plan(
            fn=None, source=caller_source(), name=run_id, model=model, config=config, inputs=inputs, year=year,
            iteration=iteration, cache_mode=cache_mode, code_version=code_version,
            validate_cached_outputs=validate_cached_outputs,
        )  # fmt: skip
        parent = parent_run_id or (self._stack[-1].id if self._stack else None)
        found: Any = "no_match"
        if cache_mode != "overwrite":
            found = self._try_reuse(plan, None, None)
        row_meta = {} if not isinstance(found, str) else {"cache_miss_explanation": self._explain(plan, found)}
        if isinstance(found, str):
            self._materialize_inputs(plan)
        active = self._open(plan, run_id, parent, tags, meta={**row_meta, **user_meta} or None)
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

    @property
    def current_consist(self) -> RunRecord | None:
        """The open run as a :class:`~consist.active.RunRecord` (inputs, outputs, config, cache state), or None."""
        return RunRecord(self, self._stack[-1]) if self._stack else None

    #: The same as :attr:`current_consist`.
    active_run = current_consist

    @property
    def last_run(self) -> RunRecord | None:
        """The run that finished last in this tracker (a cache hit included), or None."""
        last = self._last_active
        return RunRecord(self, last) if last is not None else None

    @property
    def is_cached(self) -> bool:
        """True inside a run whose outputs were restored from an identical earlier run."""
        return bool(self._stack and self._stack[-1].row.get("cache_hit"))

    def cached_output(self, key: str | None = None) -> Artifact | None:
        """In a cache hit, the restored output ``key`` (the first when None); None otherwise."""
        return RunRecord(self, self._stack[-1]).cached_output(key) if self._stack else None

    def log_meta(self, **meta: Any) -> dict[str, Any]:
        """Add metadata to the open run's ``Run.meta`` (recorded when it ends); returns the whole of it."""
        active = self._active("record metadata")
        what = f"run {active.id!r}"
        fields = {k: meta.pop(k) for k in list(meta) if k in RUN_TEXT_FIELDS}
        extra = run_fields(**{k: fields.get(k) for k in RUN_TEXT_FIELDS})
        extra.update(check_meta(meta, what, RESERVED_RUN_KEYS))
        active.row["meta"] = merged(active.row.get("meta"), extra, what, RESERVED_RUN_KEYS)
        return loads(active.row["meta"]) or {}

    def output_dir(self) -> Path:
        """The open run's own folder, ``run_dir/<run_id>/`` (created): the conventional place for its outputs."""
        active = self._active("give an output folder")
        path = self.run_dir / check_run_id(active.id)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def output_path(self, key: str, ext: str | None = None) -> Path:
        """Where the open run conventionally writes output ``key``: ``run_dir/<run_id>/<key>[.<ext>]``."""
        name = check_run_id(key, "output key")
        if ext:
            name = f"{name}.{ext.lstrip('.')}"
        return self.output_dir() / name

    def _active(self, doing: str = "log an artifact") -> _Active:
        if not self._stack:
            raise RunStateError(
                f"Cannot {doing}: no run is active",
                "log_artifact records into the current run",
                "call it inside tracker.run(...), tracker.start_run(...) or between begin_run() and end_run()",
            )
        return self._stack[-1]

    def log_artifact(
        self, path: str | os.PathLike[str], key: str | None = None, direction: str = "output", **meta: Any
    ) -> Artifact:
        """Record a file or directory as an input or output of the active run.

        Keyword arguments are kept as metadata (JSON): an output's in its
        ``Artifact.meta`` (``tracker.log_output("trips.parquet", key="trips", rows=120_000)``),
        an input's in the run's ``Run.meta["input_meta"][key]``, since an input may be
        another run's output, whose record is never changed.
        In a cache hit, logging an output the cached run had, by key, returns the
        restored artifact (also when the body skipped writing it); other content
        makes the run a normal one that records what it produced.
        """
        from .models import artifact_from_row

        check_option("direction", direction, ("input", "output"))
        active = self._active()
        p = Path(path)
        key = key or p.name
        user_meta = check_meta(meta, f"artifact {key!r}", RESERVED_ARTIFACT_KEYS) if meta else {}
        if direction == "input":
            digest = active.plan.hasher.hash_path(p, key)
            if user_meta:
                # Kept with this run: the artifact may be another run's output, whose record is never changed.
                current = loads(active.row.get("meta")) or {}
                per_input = {**current.get("input_meta", {}), key: user_meta}
                text = merged(None, {**current, "input_meta": per_input}, f"run {active.id!r}", frozenset())
                active.row["meta"] = text  # checked as a whole before anything is recorded
            entry = (key, p, digest)
            active.plan.inputs.append(entry)
            if active.persist:
                one = dataclasses.replace(active.plan, inputs=[entry])
                self._index.atomic(lambda: self._link_inputs(active.id, one))
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
        cached = active.cached_outputs.get(key)
        if active.row["cache_hit"] and cached is not None:
            if not os.path.lexists(p):  # the body skipped writing it: the restored copy stands
                active.outputs[key] = cached
                return artifact_from_row(cached)
            digest = FileHasher(active.plan.hasher.memo).hash_path(p, key)
            if digest == cached["hash"]:
                active.outputs[key] = cached
                return artifact_from_row(cached)
        if active.row["cache_hit"]:
            # New content in a cached run: it executed after all, so it becomes a producer.
            active.row.update(cache_hit=0, cache_source=None)
            if active.persist:
                self._index.upsert_run(active.row)
        return artifact_from_row(self._store_output(active, key, p, user_meta=user_meta))

    def log_input(self, path: str | os.PathLike[str], key: str | None = None, **meta: Any) -> Artifact:
        """Record an input of the active run (keywords: its metadata)."""
        return self.log_artifact(path, key, "input", **meta)

    def log_output(self, path: str | os.PathLike[str], key: str | None = None, **meta: Any) -> Artifact:
        """Record an output of the active run, stored for later cache hits (keywords: its metadata)."""
        return self.log_artifact(path, key, "output", **meta)
