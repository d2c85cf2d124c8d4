"""Multi-step scenarios: a header run, steps as its children, and a coupler between them.

::

    with consist.scenario("baseline", config={"households": 1000}) as sc:
        prep = sc.run(preprocess, inputs={"raw": "data/raw.csv"}, outputs=["households"])
        run_container(tracker, "model", "my-org/activitysim:v1", ..., inputs=["households"])
        with sc.trace("analysis") as step:
            if not step.cache_hit:
                df = consist.load_df(sc.coupler.require("households"))
                ...
                consist.log_output("summary.csv")

Every step caches on its own, so changing only the analysis re-runs only the
analysis. Re-running a scenario under the same name records a new header
(``baseline~2``); earlier records are never overwritten.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import context
from .errors import ConsistError, CouplerKeyError
from .identity import caller_source
from .names import check_run_id

if TYPE_CHECKING:
    from .models import Artifact
    from .results import RunResult
    from .sweeps import BatchResult
    from .tracker import Tracker


class Coupler:
    """Named artifacts handed from one step of a scenario to the next.

    Every step's outputs are added under their keys as the step completes; a
    string input to a later step that names a key resolves to that artifact.
    """

    def __init__(self, tracker: Tracker) -> None:
        self._tracker = tracker
        self._rows: dict[str, dict[str, Any]] = {}
        self._cache: dict[str, Artifact] = {}

    def _update(self, outputs: Any) -> None:
        for key, row in outputs.items():
            self._rows[key] = row
            self._cache.pop(key, None)

    def set(self, key: str, artifact_or_path: Any) -> Artifact:
        """Put an artifact (or a path, a run result with one output) under ``key``."""
        value = artifact_or_path
        if value is None:
            raise ConsistError(
                f"coupler.set({key!r}, None): there is no artifact to store",
                "the step that should have produced it did not (for example a missing container output)",
                "check the step's warnings, and pass an Artifact or a path",
            )
        output_rows = getattr(value, "_output_rows", None)
        if output_rows is None:
            inner = getattr(value, "run_result", None)  # a ContainerResult
            output_rows = getattr(inner, "_output_rows", None)
        if output_rows is not None:
            if len(output_rows) != 1:
                raise ConsistError(
                    f"coupler.set({key!r}, ...) got a result with {len(output_rows)} outputs",
                    None,
                    "pass one of them: result.outputs[name] or result.artifacts[name]",
                )
            row = dict(next(iter(output_rows.values())))
        elif isinstance(value, (str, os.PathLike)):
            path = Path(value).resolve()
            hasher = self._tracker._hasher("reuse")
            digest = hasher.hash_path(path, key)
            row = {"id": "", "key": key, "uri": str(path), "hash": digest, "kind": "dir" if path.is_dir() else "file"}
        elif hasattr(value, "uri"):
            row = {c: getattr(value, c, None) for c in ("id", "key", "uri", "hash", "size", "kind", "driver", "run_id")}
            self._rows[key] = row
            self._cache[key] = value
            return value
        else:
            raise ConsistError(
                f"coupler.set({key!r}, ...) got a {type(value).__name__}", None, "pass an Artifact or a path"
            )
        self._rows[key] = row
        self._cache.pop(key, None)
        return self[key]

    def __getitem__(self, key: str) -> Artifact:
        if key not in self._rows:
            raise CouplerKeyError(key, list(self._rows))
        if key not in self._cache:
            from .models import artifact_from_row

            self._cache[key] = artifact_from_row(self._rows[key])
        return self._cache[key]

    def get(self, key: str, default: Any = None) -> Any:
        """The artifact under ``key``, or ``default``."""
        return self[key] if key in self._rows else default

    def require(self, key: str) -> Artifact:
        """The artifact under ``key``; a clear error naming the keys that exist if absent."""
        return self[key]

    def path(self, key: str) -> Path:
        """The host path of the artifact under ``key``."""
        if key not in self._rows:
            raise CouplerKeyError(key, list(self._rows))
        return Path(self._rows[key]["uri"])

    def keys(self) -> list[str]:
        return list(self._rows)

    def items(self) -> list[tuple[str, Artifact]]:
        return [(k, self[k]) for k in self._rows]

    def values(self) -> list[Artifact]:
        return [self[k] for k in self._rows]

    def __contains__(self, key: object) -> bool:
        return key in self._rows

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._rows))

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        return f"Coupler({', '.join(self._rows)})"


class TraceStep:
    """The handle a ``with sc.trace(...)`` block receives.

    A ``with`` block cannot be skipped, so on a cache hit the block still runs:
    ``cache_hit`` is True, the cached outputs are already restored (``outputs``,
    and in the coupler), and the block may skip its own work. Outputs it logs with
    the content the cached run had keep the step a hit; new content makes it a
    normal run that records what it produced.
    """

    def __init__(self, tracker: Tracker, run_id: str) -> None:
        self._tracker = tracker
        self.run_id = run_id

    @property
    def _active(self) -> Any:
        for a in reversed(self._tracker._stack):
            if a.id == self.run_id:
                return a
        raise ConsistError(f"Trace step {self.run_id!r} has ended", None, "use the handle inside its with block")

    @property
    def cache_hit(self) -> bool:
        """True when an identical step completed before and its outputs were restored."""
        return bool(self._active.row["cache_hit"])

    @property
    def cache_source(self) -> str | None:
        """The run whose outputs were restored, on a hit."""
        return self._active.row["cache_source"]

    @property
    def outputs(self) -> dict[str, Artifact]:
        """The restored outputs on a hit (empty otherwise, until outputs are logged)."""
        from .models import artifact_from_row

        a = self._active
        rows = {**a.cached_outputs, **a.outputs} if a.row["cache_hit"] else a.outputs
        return {k: artifact_from_row(r) for k, r in rows.items()}

    def log_output(self, path: str | os.PathLike[str], key: str | None = None) -> Artifact:
        """Record an output of this step."""
        return self._tracker.log_output(path, key)

    def log_input(self, path: str | os.PathLike[str], key: str | None = None) -> Artifact:
        """Record an input of this step."""
        return self._tracker.log_input(path, key)


class ScenarioContext:
    """An open scenario: its header run, its coupler, and step helpers."""

    def __init__(self, tracker: Tracker, name: str, *, config: Any = None, tags: Sequence[str] | None = None) -> None:
        self.tracker = tracker
        self.name = check_run_id(name, "scenario name")
        self.config = config
        self.tags = list(tags) if tags else None
        self.coupler = Coupler(tracker)
        self.run_id: str | None = None
        self.failed_steps: list[str] = []
        self._token: Any = None

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> ScenarioContext:
        t = self.tracker
        plan = t._plan(
            fn=None, source=caller_source(), name=self.name, model="scenario", config=self.config, inputs=None,
            year=None, iteration=None, cache_mode="reuse", code_version=None,
        )  # fmt: skip
        parent = t._stack[-1].id if t._stack else None
        active = t._open(plan, self.name, parent, self.tags)
        active.scenario = self
        t._stack.append(active)
        self.run_id = active.id
        self._token = context.set_current(t)
        t._fire("start", active.row)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        t = self.tracker
        if self._token is not None:
            context.reset_current(self._token)
            self._token = None
        while t._stack and t._stack[-1].scenario is not self:
            t.end_run("failed", "left open when its scenario ended")  # a begin_run without end_run
        if exc is not None:
            t.end_run("failed", exc)
        elif self.failed_steps:
            t.end_run("failed", f"steps failed: {', '.join(self.failed_steps)}")
        else:
            t.end_run("completed")

    def _step_failed(self, run_id: str) -> None:
        self.failed_steps.append(run_id)

    # ---------------------------------------------------------------- steps

    def run(self, fn: Callable[..., Any], **kwargs: Any) -> RunResult:
        """:meth:`Tracker.run` as a step of this scenario (same arguments)."""
        return self.tracker.run(fn, **kwargs)

    def map_runs(self, fn: Callable[..., Any] | str, rows: Iterable[Any], **options: Any) -> BatchResult:
        """:meth:`Tracker.map_runs` as steps of this scenario: every row's run has the scenario as parent.

        A failed row is reported in the result (``failed``, ``retry_rows()``) and marks
        the scenario failed, as a failed step does.
        """
        options.setdefault("parent_run_id", self.run_id)
        batch = self.tracker.map_runs(fn, rows, **options)
        for f in batch.failed:
            self._step_failed(f"row {f.index}")
        return batch

    @contextmanager
    def trace(
        self,
        name: str,
        *,
        config: Any = None,
        inputs: Any = None,
        year: int | None = None,
        iteration: int | None = None,
        tags: Sequence[str] | None = None,
    ) -> Iterator[TraceStep]:
        """A tracked step whose body is the ``with`` block; see :class:`TraceStep` for hits.

        Its identity is the config, the inputs, year/iteration and the code of
        the file the block is in.
        """
        t = self.tracker
        check_run_id(name, "step name")
        run = t.begin_run(
            f"{self.name}_{name}", name, config=config, inputs=inputs, tags=tags, year=year, iteration=iteration
        )
        step = TraceStep(t, run.id)
        active = t._stack[-1]
        if active.row["cache_hit"]:
            self.coupler._update(active.cached_outputs)
        token = context.set_current(t)
        try:
            yield step
        except BaseException as exc:
            context.reset_current(token)
            t.end_run("failed", exc)
            raise
        context.reset_current(token)
        t.end_run("completed")


def scenario(
    name: str, tracker: Tracker | None = None, *, config: Any = None, tags: Sequence[str] | None = None
) -> ScenarioContext:
    """Open a scenario on ``tracker`` (default: the current tracker, see :func:`consist.use_tracker`).

    Use it as a context manager. The scenario is recorded as a header run
    (model ``"scenario"``) and every step inside (``sc.run``, ``sc.trace``,
    ``run_container``, ``tracker.run``) as its child. A step that raises marks
    itself and the header failed, and the exception propagates.
    """
    t = tracker or context.current_tracker()
    assert t is not None
    return ScenarioContext(t, name, config=config, tags=tags)
