"""The manual run lifecycle: ``begin_run``/``end_run``, ``start_run`` and logging artifacts."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import context
from .errors import (
    ConsistError,
    RunStateError,
)
from .hashing import FileHasher
from .identity import caller_source
from .names import check_run_id
from .planning import _Active

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
