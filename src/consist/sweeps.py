"""Sweeps: one cached step per row, on any ``concurrent.futures`` executor.

``tracker.map_runs(fn, rows, executor=...)`` decides every row's cache hit in
the calling process first, so a fully cached sweep submits nothing. The misses
go to the executor in chunks (a ``ProcessPoolExecutor`` on one node,
``dask.distributed.Client(...).get_executor()`` on a Dask or Slurm cluster);
each worker opens the same tracker from a picklable :class:`TrackerSpec` (once
per worker process) and runs its rows with :meth:`Tracker.run`, so identical
rows running at once still execute once (see :mod:`consist.inflight`). Results
come back in row order; a failed row is reported, never raised, and
:meth:`BatchResult.retry_rows` gives the rows to run again.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import importlib
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .errors import ConsistError
from .progress import SweepProgress

if TYPE_CHECKING:
    from .results import RunResult
    from .tracker import Tracker

#: Trackers opened in this process from specs, kept open for the next task of the same sweep.
_OPEN: dict[TrackerSpec, Tracker] = {}


@dataclasses.dataclass(frozen=True)
class TrackerSpec:
    """How to open a tracker: its constructor arguments, hashable and picklable."""

    items: tuple[tuple[str, Any], ...]

    def kwargs(self) -> dict[str, Any]:
        out = dict(self.items)
        out["mounts"] = dict(out.get("mounts") or ())
        return out

    def open(self) -> Tracker:
        """The tracker this spec describes, opened once per process and then reused."""
        tracker = _OPEN.get(self)
        if tracker is None or tracker._closed:
            from .tracker import Tracker

            kwargs = self.kwargs()
            tracker = _OPEN[self] = Tracker(kwargs.pop("run_dir"), **kwargs)
        return tracker


@dataclasses.dataclass
class FailedRow:
    """A row whose step raised: its position, the row, and the error with its traceback."""

    index: int
    row: Any
    error: str
    traceback: str = dataclasses.field(default="", repr=False)


@dataclasses.dataclass
class BatchResult:
    """What :meth:`Tracker.map_runs` returns: one result per row, in row order.

    ``results[i]`` is the :class:`~consist.RunResult` of row ``i``, or None when it
    failed (see ``failed``). ``submitted`` counts the rows sent to the executor
    (the rows that were not cache hits when the sweep started).
    """

    rows: list[Any]
    results: list[RunResult | None]
    failed: list[FailedRow]
    submitted: int

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[RunResult | None]:
        return iter(self.results)

    def __getitem__(self, i: int) -> RunResult | None:
        return self.results[i]

    @property
    def child_run_ids(self) -> list[str | None]:
        return [r.run_id if r is not None else None for r in self.results]

    @property
    def success_count(self) -> int:
        return sum(r is not None for r in self.results)

    @property
    def failure_count(self) -> int:
        return len(self.failed)

    @property
    def cached_count(self) -> int:
        return sum(r is not None and r.cache_hit for r in self.results)

    def retry_rows(self) -> list[Any]:
        """The rows that failed, in row order: ``tracker.map_runs(fn, batch.retry_rows(), ...)``."""
        return [f.row for f in self.failed]

    def raise_on_failure(self) -> BatchResult:
        """Raise a ConsistError naming the failed rows, if any; else return self."""
        if self.failed:
            first = self.failed[0]
            raise ConsistError(
                f"{len(self.failed)} of {len(self.rows)} rows failed; the first, row {first.index}: {first.error}",
                None,
                "inspect batch.failed, fix the cause and run batch.retry_rows() again (finished rows are hits)",
            )
        return self


def _resolve(fn: Callable[..., Any] | str) -> Callable[..., Any]:
    if not isinstance(fn, str):
        return fn
    module, sep, attr = fn.partition(":")
    if not sep or not module or not attr:
        raise ConsistError(f"Cannot import {fn!r}", None, 'name the function as "package.module:function"')
    target: Any = importlib.import_module(module)
    for part in attr.split("."):
        target = getattr(target, part)
    return target


def _run_rows(spec: TrackerSpec | None, fn: Callable[..., Any] | str, calls: list[tuple[int, dict[str, Any]]]) -> list:
    """Run some rows in this process; returns ``(index, RunResult | None, error, traceback)`` each."""
    from .context import current_tracker

    tracker = spec.open() if spec is not None else current_tracker()
    assert tracker is not None
    step = _resolve(fn)
    out = []
    for index, kwargs in calls:
        try:
            out.append((index, tracker.run(step, **kwargs), None, ""))
        except Exception as exc:
            out.append((index, None, f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    return out


#: Hits recorded in one transaction of the run index: at most this many rows, or this long.
_HIT_BATCH = 64
_HIT_BATCH_S = 0.25


def _decide_hits(tracker: Tracker, step: Callable[..., Any], calls: list[dict[str, Any]]) -> Iterator[tuple]:
    """``(index, RunResult | None, error, traceback)`` per row: its hit (recorded, outputs restored) or None.

    The hits' records are written a batch of rows per transaction: on a database
    server each transaction costs round trips. Outputs are restored outside those
    transactions, so no restore, however large, holds the run index's write lock.
    """
    batch: list[tuple] = []
    began = time.monotonic()
    tracker._deferred_hits = []
    try:
        for i, kwargs in enumerate(calls):
            batch.append(_hit_or_error(tracker, step, i, kwargs))
            if len(batch) >= _HIT_BATCH or time.monotonic() - began > _HIT_BATCH_S:
                tracker._flush_hits()
                yield from batch
                batch, began = [], time.monotonic()
        tracker._flush_hits()
        yield from batch
    finally:
        tracker._deferred_hits = None


def _hit_or_error(tracker: Tracker, step: Callable[..., Any], i: int, kwargs: dict[str, Any]) -> tuple:
    try:
        return i, tracker._run_step(step, **kwargs, hit_only=True), None, ""
    except Exception as exc:
        return i, None, f"{type(exc).__name__}: {exc}", traceback.format_exc()


def _field(row: Any, spec: Any, what: str) -> Any:
    """A per-row value: a callable of the row, a key of the row, or None."""
    if spec is None:
        return None
    if callable(spec):
        return spec(row)
    if isinstance(row, Mapping) and spec in row:
        return row[spec]
    raise ConsistError(
        f"Row {row!r} has no {spec!r} for {what}", None, f"give {what} a key of every row, or a function"
    )


def map_runs(
    tracker: Tracker,
    fn: Callable[..., Any] | str,
    rows: Iterable[Any],
    *,
    executor: cf.Executor | None = None,
    name: str | None = None,
    name_template: str | None = None,
    model: str | None = None,
    config_from: Callable[[Any], Any] | Sequence[str] | None = None,
    inputs_from: Callable[[Any], Any] | None = None,
    outputs: Sequence[str] | None = None,
    year_from: Callable[[Any], Any] | str | None = None,
    iteration_from: Callable[[Any], Any] | str | None = None,
    tags: Sequence[str] | None = None,
    cache_mode: str = "reuse",
    parent_run_id: str | None = None,
    chunk_size: int | None = None,
    progress: bool = True,
) -> BatchResult:
    """Run ``fn`` once per row as a cached step; see :meth:`consist.Tracker.map_runs`.

    Parameters
    ----------
    fn:
        The step, or ``"package.module:function"``. With an executor it must be
        importable in the workers (a module-level function, not a lambda).
    rows:
        One entry per run. Each row's config is the row itself, ``config_from(row)``
        when that is a function, or the row's keys listed in ``config_from``.
    executor:
        Any ``concurrent.futures.Executor``. None runs the misses here, one by one.
    name, name_template, model:
        ``name`` defaults to the function's name. ``name_template`` (``"trips_{zone}"``,
        formatted with the row's keys and ``{index}``) gives each row's run id.
    inputs_from, outputs, year_from, iteration_from, tags, cache_mode:
        As for :meth:`Tracker.run`; the ``*_from`` values are functions of the row
        (or, for year and iteration, a key of the row).
    parent_run_id:
        Recorded as every row's parent; defaults to the active run or scenario.
    chunk_size:
        Rows per task sent to the executor; default about 64 tasks per sweep, at
        most 32 rows each (trivial steps then cost little more than the executor's
        own overhead; long steps, say containers, go one per task when there are few).
    progress:
        Show a bar with the executed, cached and failed counts (on a terminal, after a second).
    """
    rows = list(rows)
    step_name = name or getattr(_resolve(fn) if isinstance(fn, str) else fn, "__name__", "step")
    parent = parent_run_id or (tracker._stack[-1].id if tracker._stack else None)
    calls: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        if config_from is None:
            config = row
        elif callable(config_from):
            config = config_from(row)
        else:
            config = {k: row[k] for k in config_from}
        run_id = None
        if name_template is not None:
            fields = dict(row) if isinstance(row, Mapping) else {}
            run_id = name_template.format(index=i, **fields)
        calls.append({
            "name": step_name, "run_id": run_id, "model": model, "config": config,
            "inputs": inputs_from(row) if inputs_from is not None else None, "outputs": outputs,
            "year": _field(row, year_from, "year_from"), "iteration": _field(row, iteration_from, "iteration_from"),
            "tags": tags, "cache_mode": cache_mode, "parent_run_id": parent, "code_version": None,
        })  # fmt: skip

    step = _resolve(fn)
    results: list[RunResult | None] = [None] * len(rows)
    failed: list[FailedRow] = []
    misses: list[tuple[int, dict[str, Any]]] = []
    with SweepProgress(step_name, len(rows)) as bar:
        # Hits are decided here, before anything is submitted.
        for outcome in _decide_hits(tracker, step, calls):
            i, hit, error, tb = outcome
            if error is not None:
                failed.append(FailedRow(i, rows[i], error, tb))
                bar.advance("failed")
            elif hit is not None:
                results[i] = hit
                bar.advance("cached")
            else:
                misses.append((i, calls[i]))

        def take(done: list) -> None:
            for index, result, error, tb in done:
                if result is None:
                    failed.append(FailedRow(index, rows[index], error, tb))
                    bar.advance("failed")
                else:
                    results[index] = result
                    bar.advance("cached" if result.cache_hit else "executed")

        if executor is None:
            from . import context

            token = context.set_current(tracker)
            try:
                for call in misses:
                    take(_run_rows(None, step, [call]))
            finally:
                context.reset_current(token)
        elif misses:
            size = chunk_size or max(1, min(32, len(misses) // 64))
            spec = tracker.spec()
            target = fn if isinstance(fn, str) else step
            futures = {
                executor.submit(_run_rows, spec, target, misses[k : k + size]): misses[k : k + size]
                for k in range(0, len(misses), size)
            }
            for future in cf.as_completed(futures):
                try:
                    take(future.result())
                except Exception as exc:  # the task itself failed: the worker died, or fn cannot be unpickled
                    tb = traceback.format_exc()
                    take([(index, None, f"{type(exc).__name__}: {exc}", tb) for index, _ in futures[future]])
    failed.sort(key=lambda f: f.index)
    return BatchResult(rows, results, failed, submitted=len(misses))


__all__ = ["BatchResult", "FailedRow", "TrackerSpec", "map_runs"]
