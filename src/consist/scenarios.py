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

import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import context
from .errors import ConsistError, CouplerKeyError
from .hashing import dumps, loads
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
        #: Output keys the scenario promises: key -> required (see :meth:`declare_outputs`).
        self.declared_outputs: dict[str, bool] = {}
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
        header = t._stack[-1]
        summary = self._summarise(header)
        produced = set(header.outputs)  # what the steps recorded as outputs (see _summarise)
        missing = [k for k, required in self.declared_outputs.items() if required and k not in produced]
        if exc is not None:
            t.end_run("failed", exc)
        elif self.failed_steps:
            t.end_run("failed", f"steps failed: {', '.join(self.failed_steps)}")
        elif missing:
            from .errors import OutputError

            err = OutputError(
                f"Scenario {self.name!r} ended without its required outputs {', '.join(map(repr, missing))}",
                f"no step produced them (the scenario has {', '.join(map(repr, self.coupler)) or 'no outputs'})",
                "run the steps that produce them, or declare them with required=False",
            )
            summary["missing_outputs"] = missing
            header.row["meta"] = dumps({**(loads(header.row.get("meta")) or {}), "scenario": summary})
            t.end_run("failed", err)
            raise err
        else:
            t.end_run("completed")

    def _summarise(self, header: Any) -> dict[str, Any]:
        """Record the steps in the header's meta and link their inputs and outputs to it; returns the summary.

        Steps are the header's child runs in the index, so rows a sweep ran in other
        processes are counted too.
        """
        t = self.tracker
        steps = []
        failed = None
        if header.persist:
            for row in t._index.query(
                "SELECT id, model, status, cache_hit FROM run WHERE parent_run_id = ? ORDER BY started_at, seq",
                (header.id,),
            ):
                state = "failed" if row["status"] == "failed" else "hit" if row["cache_hit"] else "executed"
                if row["status"] not in ("completed", "failed"):
                    state = row["status"]
                steps.append({"id": row["id"], "model": row["model"], "status": state})
                if state == "failed" and failed is None:
                    failed = row["id"]
            links = t._index.query(
                "SELECT l.key, l.direction, a.* FROM run_artifact l JOIN run r ON r.id = l.run_id "
                "JOIN artifact a ON a.id = l.artifact_id "
                "WHERE r.parent_run_id = ? AND l.direction IN ('input', 'output') ORDER BY l.seq",
                (header.id,),
            )
            inputs = {r["key"]: r["id"] for r in links if r["direction"] == "input"}
            for r in links:
                if r["direction"] == "output":
                    out = {k: v for k, v in r.items() if k not in ("direction", "seq")}
                    out["key"] = r["key"]
                    header.outputs[r["key"]] = out  # linked when the header ends
            have = {r["link_key"] for r in t._index.links_of(header.id, "input")}
            new = [(k, a) for k, a in inputs.items() if k not in have]
            if new:
                t._index.atomic(lambda: [t._index.link(header.id, a, "input", k) for k, a in new])
        summary: dict[str, Any] = {
            "steps": steps,
            "failed_step": failed,
            "declared_outputs": sorted(self.declared_outputs),
        }
        header.row["meta"] = dumps({**(loads(header.row.get("meta")) or {}), "scenario": summary})
        return summary

    # ---------------------------------------------------------------- contracts

    def add_input(self, path_or_artifact: Any, key: str | None = None) -> Artifact:
        """Record an input of the whole scenario (linked to its header) and put it in the coupler under ``key``.

        ``key`` defaults to the artifact's key or the file name. Later steps can name
        it as an input by that key.
        """
        from .models import artifact_from_row
        from .planning import normalize_inputs, resolve_inputs

        t = self.tracker
        header = self._header()
        if key is None:  # the artifact's key or the file name; made unique like a list of inputs
            taken = {k for k, _p, _h in header.plan.inputs}
            first = normalize_inputs([path_or_artifact])[0][0]
            key, n = first, 1
            while key in taken:
                n += 1
                key = f"{first}#{n}"
        value = {key: path_or_artifact}
        hasher = t._hasher(header.plan.cache_mode)
        resolved, recorded, missing = resolve_inputs(value, hasher, t._index, None, t._stash)
        k, path, digest = resolved[0]
        header.plan.inputs.append((k, path, digest))
        header.plan.input_artifacts.update(recorded)
        if header.persist:
            one = dataclasses.replace(header.plan, inputs=[(k, path, digest)], input_artifacts=recorded)
            t._index.atomic(lambda: t._link_inputs(header.id, one))
            row = {r["link_key"]: r for r in t._index.links_of(header.id, "input")}[k]
        else:
            row = {"id": "", "key": k, "uri": str(path.resolve()), "hash": digest, "kind": "file"}
        if missing:
            t._materialize_inputs(dataclasses.replace(header.plan, inputs=[(k, path, digest)], missing_inputs=missing))
        plain = {c: v for c, v in row.items() if c not in ("link_key", "direction", "seq")}
        self.coupler._update({k: plain})
        return artifact_from_row(plain)

    def declare_outputs(self, *keys: str, required: bool = True) -> None:
        """Promise outputs by key: when no step of the scenario produced a required one, its header fails.

        The error names what is missing; ``required=False`` only records the promise.
        """
        for k in keys:
            if not isinstance(k, str) or not k.strip() or not k.isprintable():
                raise ConsistError(f"declare_outputs() got {k!r}", None, "pass output keys as printable text")
            self.declared_outputs[k] = required or self.declared_outputs.get(k, False)

    def _header(self) -> Any:
        for a in self.tracker._stack:
            if a.scenario is self:
                return a
        raise ConsistError(
            f"Scenario {self.name!r} is not open", None, "call this inside its `with consist.scenario(...)` block"
        )

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
    return t.scenario(name, config=config, tags=tags)  # a NoopTracker gives its own
