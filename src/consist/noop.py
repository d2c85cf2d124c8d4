"""``NoopTracker``: the tracker's surface with provenance switched off.

Production code written against a :class:`~consist.Tracker` can take a
``NoopTracker`` instead to run exactly the same steps without recording, hashing
or caching anything: every step executes, nothing is written to a database or
an object store, and lookups find nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import context
from .errors import OutputError
from .names import check_run_id, fit
from .planning import _as_path, _bind, normalize_inputs
from .results import RunResult


def _row(key: str, path: Path, run_id: str, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    p = Path(path).absolute()
    return {"id": "", "key": key, "uri": str(p), "hash": None, "size": None,
            "kind": "dir" if p.is_dir() else "file", "run_id": run_id, "meta": meta or None}  # fmt: skip


class _NoopRecord:
    """What ``current_consist`` and ``last_run`` give: the run's id, config and outputs so far."""

    def __init__(self, run_id: str, config: Any) -> None:
        self.run_id = run_id
        self.config = config
        self.meta: dict[str, Any] = {}
        self.is_cached = False
        self.cached_run = None
        self._inputs: dict[str, dict[str, Any]] = {}
        self._outputs: dict[str, dict[str, Any]] = {}

    @property
    def inputs(self) -> dict[str, Any]:
        from .models import artifact_from_row

        return {k: artifact_from_row(r) for k, r in self._inputs.items()}

    @property
    def outputs(self) -> dict[str, Any]:
        from .models import artifact_from_row

        return {k: artifact_from_row(r) for k, r in self._outputs.items()}

    def cached_output(self, key: str | None = None) -> None:
        return None


class NoopTracker:
    """Same calls as :class:`~consist.Tracker`; executes every step and records nothing.

    ``run_dir`` only serves :meth:`output_dir`/:meth:`output_path`; other
    constructor arguments are accepted and ignored, so the two swap with one edit.
    """

    read_only = False

    def __init__(self, run_dir: str | os.PathLike[str] = ".", *args: Any, **kwargs: Any) -> None:
        self.run_dir = Path(run_dir).absolute()
        self._stack: list[_NoopRecord] = []
        self._scenarios: list[_NoopScenario] = []
        self._last: _NoopRecord | None = None
        self._n = 0

    def __enter__(self) -> NoopTracker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to close."""

    def _new_id(self, name: str) -> str:
        self._n += 1
        return f"{fit(name)}_noop{self._n}"

    # ---------------------------------------------------------------- steps

    def run(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        run_id: str | None = None,
        config: Any = None,
        inputs: Any = None,
        outputs: Sequence[str] | Mapping[str, Any] | None = None,
        **ignored: Any,
    ) -> RunResult:
        """Call ``fn`` as :meth:`Tracker.run` would (config and inputs bound by name) and return its outputs."""
        label = name or getattr(fn, "__name__", "step")
        rec = _NoopRecord(check_run_id(run_id) if run_id else self._new_id(label), config)
        resolved = [(k, p, "") for k, p, _v in normalize_inputs(inputs, self._coupler_path)]
        rec._inputs = {k: _row(k, p, "") for k, p, _h in resolved}
        self._stack.append(rec)
        token = context.set_current(self)  # type: ignore[arg-type]
        try:
            value = fn(**_bind(fn, config, resolved, inputs))
        finally:
            context.reset_current(token)
            self._stack.remove(rec)
        if isinstance(outputs, Mapping):
            for key, path in outputs.items():
                rec._outputs[key] = _row(key, Path(path), rec.run_id)
        elif outputs:
            keys = [outputs] if isinstance(outputs, str) else list(outputs)
            if isinstance(value, Mapping):
                missing = [k for k in keys if k not in value]
                if missing:
                    raise OutputError(f"The function returned no path for declared outputs {missing}", None,
                                      "return a dict with every key listed in outputs=")  # fmt: skip
                for key in keys:
                    rec._outputs[key] = _row(key, _as_path(value[key], key), rec.run_id)
            elif len(keys) == 1 and value is not None:
                rec._outputs[keys[0]] = _row(keys[0], _as_path(value, keys[0]), rec.run_id)
            else:
                raise OutputError(f"The function returned {type(value).__name__} but outputs={keys} were declared",
                                  None, "return the output path(s) from the function")  # fmt: skip
        self._last = rec
        row = {"id": rec.run_id, "name": label, "model": ignored.get("model") or label, "status": "completed",
               "cache_hit": 0, "config": None, "meta": None}  # fmt: skip
        return RunResult(rec.run_id, False, None, row, dict(rec._outputs))

    def begin_run(self, run_id: str, model: str, config: Any = None, inputs: Any = None, **kwargs: Any) -> Any:
        """Open a run that records nothing; returns it as a :class:`~consist.Run` (never a cache hit)."""
        rec = _NoopRecord(check_run_id(run_id), config)
        rec._inputs = {k: _row(k, p, "") for k, p, _v in normalize_inputs(inputs, self._coupler_path)}
        self._stack.append(rec)
        return _run(rec, model, "running")

    def end_run(self, status: str = "completed", error: Any = None) -> Any:
        """Close the innermost open run; returns it as a :class:`~consist.Run`."""
        if not self._stack:
            from .errors import RunStateError

            raise RunStateError("end_run() called with no active run", None, "call begin_run() first")
        self._last = self._stack.pop()
        return _run(self._last, None, status)

    @contextmanager
    def start_run(self, run_id: str, model: str, **kwargs: Any) -> Iterator[Any]:
        """:meth:`begin_run` as a context manager."""
        run = self.begin_run(run_id, model, **kwargs)
        token = context.set_current(self)  # type: ignore[arg-type]
        try:
            yield run
        except BaseException:
            context.reset_current(token)
            self.end_run("failed")
            raise
        context.reset_current(token)
        self.end_run()

    def _coupler_path(self, value: Any) -> Path | None:
        sc = self._scenarios[-1] if self._scenarios else None
        if sc is not None and isinstance(value, str) and value in sc.coupler:
            return sc.coupler.path(value)
        return None

    @contextmanager
    def scenario(self, name: str, **kwargs: Any) -> Iterator[Any]:
        """A scenario whose steps simply run (see :class:`_NoopScenario`)."""
        self.begin_run(name, "scenario")
        sc = _NoopScenario(self, name)
        self._scenarios.append(sc)
        try:
            yield sc
        finally:
            self._scenarios.remove(sc)
            self.end_run()

    # ---------------------------------------------------------------- the open run

    @property
    def current_consist(self) -> _NoopRecord | None:
        return self._stack[-1] if self._stack else None

    active_run = current_consist

    @property
    def last_run(self) -> _NoopRecord | None:
        return self._last

    @property
    def is_cached(self) -> bool:
        return False

    def cached_output(self, key: str | None = None) -> None:
        return None

    def log_artifact(self, path: Any, key: str | None = None, direction: str = "output", **meta: Any) -> Any:
        """Describe the file as an artifact (nothing is hashed or stored)."""
        from .models import artifact_from_row

        p = Path(path)
        k = key or p.name
        rec = self._stack[-1] if self._stack else None
        row = _row(k, p, rec.run_id if rec and direction == "output" else "", meta)
        if rec is not None:
            (rec._outputs if direction == "output" else rec._inputs)[k] = row
        return artifact_from_row(row)

    def log_input(self, path: Any, key: str | None = None, **meta: Any) -> Any:
        return self.log_artifact(path, key, "input", **meta)

    def log_output(self, path: Any, key: str | None = None, **meta: Any) -> Any:
        return self.log_artifact(path, key, "output", **meta)

    def log_meta(self, **meta: Any) -> dict[str, Any]:
        if self._stack:
            self._stack[-1].meta.update(meta)
            return dict(self._stack[-1].meta)
        return {}

    def output_dir(self) -> Path:
        rid = self._stack[-1].run_id if self._stack else "outputs"
        path = self.run_dir / rid
        path.mkdir(parents=True, exist_ok=True)
        return path

    def output_path(self, key: str, ext: str | None = None) -> Path:
        name = check_run_id(key, "output key")
        return self.output_dir() / (f"{name}.{ext.lstrip('.')}" if ext else name)

    # ---------------------------------------------------------------- lookups find nothing

    def find_runs(self, **filters: Any) -> list[Any]:
        return []

    def find_artifacts(self, **filters: Any) -> list[Any]:
        return []

    def find_matching_runs(self, *args: Any, **filters: Any) -> list[Any]:
        return []

    def find_latest_run(self, **filters: Any) -> None:
        return None

    def get_latest_run_id(self, **filters: Any) -> None:
        return None

    def get_run(self, run_id: str) -> None:
        return None

    def get_artifact(self, key_or_id: str, run_id: str | None = None) -> None:
        return None

    def get_artifact_by_uri(self, uri: Any) -> None:
        return None

    def get_run_config(self, run_id: str) -> None:
        return None

    def find_run(self, **filters: Any) -> Any:
        from .errors import RunLookupError

        raise RunLookupError("No run matches: a NoopTracker records none", None, "use a Tracker to look runs up")

    def history(self, limit: int = 10, tags: Any = None) -> Any:
        """An empty DataFrame."""
        import pandas as pd

        return pd.DataFrame()

    def load_run_output(self, run_id: str, key: str, **kwargs: Any) -> Any:
        from .errors import RunNotFoundError

        raise RunNotFoundError(f"No run {run_id!r}: a NoopTracker records none", None, "use a Tracker")

    def diff_runs(self, a: str, b: str) -> Any:
        from .errors import RunNotFoundError

        raise RunNotFoundError(f"No run {a!r}: a NoopTracker records none", None, "use a Tracker")


def _run(rec: _NoopRecord, model: str | None, status: str) -> Any:
    from .models import run_from_row

    return run_from_row({"id": rec.run_id, "name": rec.run_id, "model": model, "status": status, "cache_hit": 0,
                         "meta": dict(rec.meta) or None})  # fmt: skip


class _NoopStep:
    """What ``sc.trace`` yields: never a hit; outputs logged in the block are described, not stored."""

    cache_hit = False
    cache_source = None

    def __init__(self, tracker: NoopTracker) -> None:
        self._tracker = tracker

    @property
    def outputs(self) -> dict[str, Any]:
        rec = self._tracker.current_consist
        return rec.outputs if rec is not None else {}

    def log_output(self, path: Any, key: str | None = None, **meta: Any) -> Any:
        return self._tracker.log_output(path, key, **meta)

    def log_input(self, path: Any, key: str | None = None, **meta: Any) -> Any:
        return self._tracker.log_input(path, key, **meta)


class _NoopCoupler(dict):  # type: ignore[type-arg]
    """A plain dict with the coupler's calls."""

    def set(self, key: str, artifact: Any) -> Any:
        self[key] = artifact
        return artifact

    def require(self, key: str) -> Any:
        return self[key]

    def path(self, key: str) -> Path:
        return Path(self[key].uri)


class _NoopScenario:
    """A scenario of a :class:`NoopTracker`: steps run, a plain dict couples them."""

    def __init__(self, tracker: NoopTracker, name: str) -> None:
        self.tracker = tracker
        self.name = name
        self.run_id = name
        self.coupler = _NoopCoupler()

    def run(self, fn: Callable[..., Any], **kwargs: Any) -> RunResult:
        result = self.tracker.run(fn, **kwargs)
        self.coupler.update(result.outputs)
        return result

    @contextmanager
    def trace(self, name: str, **kwargs: Any) -> Iterator[Any]:
        """A step whose body is the block; it is never a cache hit."""
        with self.tracker.start_run(f"{self.name}_{check_run_id(name, 'step name')}", name):
            yield _NoopStep(self.tracker)

    def add_input(self, path_or_artifact: Any, key: str | None = None) -> Any:
        art = self.tracker.log_input(path_or_artifact, key)
        self.coupler[art.key] = art
        return art

    def declare_outputs(self, *keys: str, required: bool = True) -> None:
        """Recorded nowhere: a NoopTracker checks no contracts."""
