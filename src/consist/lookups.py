"""Looking runs and artifacts up by their recorded fields: the run index answers, through its indexes.

Every lookup here reads the run index (SQLite beside the DuckDB file, or the
PostgreSQL database), never the DuckDB file: it sees each run the moment it is
recorded, by any process, and nothing has to be merged first. Each filter has an
index of its own that also gives the newest runs first (see
:mod:`consist.store.sqlite`, schema version 5), so a lookup reads a few index
entries, not the table: a few milliseconds among 100,000 runs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

from .errors import (
    ArtifactNotFoundError,
    InvalidOptionError,
    OutputError,
    RunLookupError,
    RunNotFoundError,
)
from .hashing import loads

if TYPE_CHECKING:
    import pandas as pd

    from .models import Artifact, Run
    from .results import RunResult
    from .store.index import RunIndex

    #: A run: its id, or a Run or RunResult of it.
    RunRef = str | Run | RunResult


class RunFilters(TypedDict, total=False):
    """The filters of :meth:`LookupMixin.find_runs` (None: not filtered)."""

    model: str | None
    status: str | None
    tags: Sequence[str] | None
    parent_id: str | None
    year: int | None
    iteration: int | None
    cache_hit: bool | None
    stage: str | None
    phase: str | None


#: The columns of :meth:`LookupMixin.history`, in order.
HISTORY_COLUMNS = (
    "id", "model", "status", "cache_hit", "cache_source", "year", "iteration", "tags", "started_at", "ended_at",
    "duration", "parent_run_id", "signature",
)  # fmt: skip
# Run fields whose values are JSON (lists, dicts): no dict can be keyed by them.
_JSON_FIELDS = ("tags", "config", "identity", "meta")
_META_FIELDS = ("stage", "phase")
# When a run has several artifacts under one key, the output is meant before the input, then a directory's file.
_DIRECTION_ORDER = {"output": 0, "input": 1, "member": 2}


class LookupMixin:
    """Lookups of runs and artifacts. Mixed into :class:`consist.tracker.Tracker`."""

    _index: RunIndex

    # ------------------------------------------------------------------ runs

    def find_runs(
        self,
        *,
        model: str | None = None,
        status: str | None = None,
        tags: Sequence[str] | None = None,
        parent_id: str | None = None,
        year: int | None = None,
        iteration: int | None = None,
        cache_hit: bool | None = None,
        stage: str | None = None,
        phase: str | None = None,
        limit: int | None = 100,
        index_by: str | None = None,
    ) -> list[Run] | dict[Any, Run]:
        """Runs matching every given filter, newest first (by start time).

        Parameters
        ----------
        model, status, parent_id, year, iteration, cache_hit:
            The run's field equals this (``parent_id``: ``parent_run_id``, the scenario or enclosing run).
        tags:
            Every one of these tags is on the run.
        stage, phase:
            The run's ``meta["stage"]`` / ``meta["phase"]`` equals this text (``tracker.run(stage=...)``).
        limit:
            At most this many runs, the newest; None: every match.
        index_by:
            Return a dict instead of a list: value of this field -> the newest run with that value,
            among the runs found (so among the newest ``limit``). A :class:`~consist.models.Run`
            field (``"year"``, ``"iteration"``, ``"model"``, ...; not the JSON fields) or
            ``"stage"`` / ``"phase"``.

        Returns
        -------
        list[Run] or dict
            The runs, or with ``index_by`` a dict of them.
        """
        from .models import run_from_row

        field = _index_field(index_by) if index_by is not None else None
        rows = self._index.find_runs(
            {"model": model, "status": status, "parent_id": parent_id, "year": year, "iteration": iteration,
             "cache_hit": cache_hit, "stage": stage, "phase": phase},
            _tags(tags), _limit(limit),
        )  # fmt: skip
        runs = [run_from_row(r) for r in rows]
        if field is None:
            return runs
        by_value: dict[Any, Run] = {}
        for run in runs:  # newest first: the first run of each value is its newest
            by_value.setdefault(_field_value(run, field), run)
        return by_value

    def find_run(self, **filters: Unpack[RunFilters]) -> Run:
        """The one run matching every filter (the filters of :meth:`find_runs`).

        Raises
        ------
        RunLookupError
            No run matches, or several do (``count`` says how many; the message names the newest five).
        """
        for option in ("limit", "index_by"):
            if option in filters:
                raise InvalidOptionError(
                    f"find_run() takes no {option}=", "it returns exactly one run", "use find_runs() for several"
                )
        found = self.find_runs(**filters, limit=5)
        assert isinstance(found, list)
        if len(found) == 1:
            return found[0]
        what = _describe(filters)
        if not found:
            raise RunLookupError(
                f"No run in {self._index.location} matches {what}",
                "no run was recorded with these values (a misspelled model, another year), or it was recorded "
                "in another database",
                "loosen the filters; tracker.find_runs() and tracker.history() list what was recorded",
            )
        count = self._index.count_runs(_run_filters(filters), _tags(filters.get("tags")))
        ids = ", ".join(r.id for r in found)
        raise RunLookupError(
            f"{count} runs match {what}; find_run() needs exactly one (the newest: {ids})",
            "the filters leave several runs: other years, iterations, scenarios or repeated runs",
            "add filters (year=, iteration=, parent_id=, stage=, tags=), or take the newest with "
            "tracker.find_latest_run(...)",
            count=count,
            run_ids=[r.id for r in found],
        )

    def find_latest_run(self, **filters: Unpack[RunFilters]) -> Run | None:
        """The newest run matching every filter (those of :meth:`find_runs`), or None."""
        found = self.find_runs(**filters, limit=1)
        return found[0] if found else None

    def get_latest_run_id(self, **filters: Unpack[RunFilters]) -> str | None:
        """The id of :meth:`find_latest_run`, or None."""
        run = self.find_latest_run(**filters)
        return run.id if run is not None else None

    def find_matching_runs(
        self,
        signature: str | None = None,
        *,
        config_hash: str | None = None,
        input_hash: str | None = None,
        code_version: str | None = None,
        model: str | None = None,
        status: str | None = "completed",
        limit: int | None = 100,
    ) -> list[Run]:
        """Runs with the same identity components, newest first.

        Parameters
        ----------
        signature:
            The whole identity (``Run.signature``): the executed run and every hit of it.
        config_hash, input_hash, code_version:
            One component each (``Run.config_hash``, ...): for example every run of the same config
            whatever its inputs. At least one of these four is needed.
        model, status:
            Also filter by these (``status=None``: any status; by default completed runs only).
        limit:
            At most this many runs; None: every match.
        """
        from .models import run_from_row

        identity = {"signature": signature, "config_hash": config_hash, "input_hash": input_hash,
                    "code_version": code_version}  # fmt: skip
        if all(v is None for v in identity.values()):
            raise InvalidOptionError(
                "find_matching_runs() needs signature, config_hash, input_hash or code_version",
                "without one, every run would match",
                "pass one (for example tracker.find_matching_runs(run.signature)), or use find_runs()",
            )
        rows = self._index.find_runs({**identity, "model": model, "status": status}, (), _limit(limit))
        return [run_from_row(r) for r in rows]

    def history(self, limit: int = 10, tags: Sequence[str] | None = None) -> pd.DataFrame:
        """The newest runs as a pandas DataFrame.

        Parameters
        ----------
        limit:
            At most this many runs.
        tags:
            Only runs with every one of these tags.

        Returns
        -------
        pandas.DataFrame
            One row per run, newest first: the columns :data:`HISTORY_COLUMNS` (times in UTC;
            ``duration`` is ``ended_at - started_at``; ``tags`` is the JSON text recorded).
        """
        import numpy as np
        import pandas as pd

        rows = self._index.find_runs({}, _tags(tags), _limit(limit))

        def times(col: str) -> Any:  # epoch seconds as UTC datetime64[us] (NaT: none), as DuckDB gives them
            secs = np.array([r[col] if r[col] is not None else np.nan for r in rows], dtype="float64")
            out = np.full(len(rows), np.datetime64("NaT"), dtype="datetime64[us]")
            known = ~np.isnan(secs)
            out[known] = np.round(secs[known] * 1e6).astype("int64").view("datetime64[us]")
            return out

        # Built column by column with their final types: converting a generic frame costs milliseconds.
        started, ended = times("started_at"), times("ended_at")
        columns: dict[str, Any] = {c: [r[c] for r in rows] if rows else np.array([], dtype=object)
                                   for c in HISTORY_COLUMNS if c != "duration"}  # fmt: skip
        columns.update(
            cache_hit=np.array([bool(v) for v in columns["cache_hit"]], dtype=bool),
            year=pd.array(columns["year"], dtype="Int32"), iteration=pd.array(columns["iteration"], dtype="Int32"),
            started_at=started, ended_at=ended, duration=ended - started,
        )  # fmt: skip
        return pd.DataFrame({c: columns[c] for c in HISTORY_COLUMNS})

    def get_run_config(self, run_id: RunRef) -> Any:
        """The config run ``run_id`` recorded, in its canonical form (decoded JSON).

        Raises
        ------
        RunNotFoundError
            No run has that id.
        """
        return loads(self._run_row(run_id).get("config"))

    def diff_runs(self, a: RunRef, b: RunRef) -> dict[str, Any]:
        """How run ``b`` differs from run ``a``: what ``consist diff A B --json`` prints.

        Returns
        -------
        dict
            ``{"run_a", "run_b", "config", "inputs", "outputs"}``: the config keys (dotted) that
            changed (``{"key", "before", "after", "change"}``), and per input and output key its
            ``state`` (``same``, ``changed``, ``added``, ``removed``) with both hashes and paths;
            a changed CSV or Parquet output also has a ``table`` summary (see
            :func:`consist.diffs.run_diff`).
        """
        from .diffs import run_diff

        return run_diff(self._index, self._run_row(a), self._run_row(b))

    def _run_row(self, run: RunRef) -> dict[str, Any]:
        run_id = _id_of(run)
        row = self._index.run(run_id)
        if row is None:
            raise RunNotFoundError(
                f"No run with id {run_id!r} in {self._index.location}",
                "the id is misspelled, or the run was recorded in another database",
                "list runs with tracker.find_runs() or tracker.history()",
            )
        return row

    # ------------------------------------------------------------------ artifacts

    def get_artifact(self, key_or_id: str, run_id: RunRef | None = None) -> Artifact | None:
        """An artifact by id, else the newest recorded under that key; None when there is none.

        Parameters
        ----------
        key_or_id:
            An artifact id, or a key. Under a key, an artifact a run produced comes before a raw
            input recorded under the same key, whichever is newer.
        run_id:
            Only the artifact linked to this run under that key (its output, else its input, else
            a file of a directory output), or with that id.

        Raises
        ------
        RunNotFoundError
            ``run_id`` names no run.
        """
        from .models import artifact_from_row

        if run_id is not None:
            best: tuple[tuple[int, int], dict[str, Any]] | None = None
            for link in self._index.links_of(self._run_row(run_id)["id"]):
                if key_or_id in (link["link_key"], link["id"]):
                    rank = 0
                elif link["key"] == key_or_id:
                    rank = 1  # an input's own key (its producer's output key) may differ from its link's
                else:
                    continue
                score = (rank, _DIRECTION_ORDER.get(link["direction"], len(_DIRECTION_ORDER)))
                if best is None or score < best[0]:
                    best = (score, link)
            return artifact_from_row(best[1]) if best is not None else None
        row = self._index.artifact(key_or_id) or self._index.newest_artifact(key_or_id)
        return artifact_from_row(row) if row is not None else None

    def get_artifact_by_uri(self, uri: str | os.PathLike[str]) -> Artifact | None:
        """The newest artifact recorded at ``uri`` (a path, made absolute as recorded), or None."""
        from .models import artifact_from_row
        from .objects import place

        text = os.fspath(uri)
        for candidate in dict.fromkeys([str(place(Path(text))), text]):
            row = self._index.artifact_at(candidate)
            if row is not None:
                return artifact_from_row(row)
        return None

    def find_artifacts(
        self,
        *,
        creator: RunRef | None = None,
        consumer: RunRef | None = None,
        key: str | None = None,
        hash: str | None = None,
        limit: int | None = 100,
    ) -> list[Artifact]:
        """Artifacts matching every given filter, newest first.

        Parameters
        ----------
        creator:
            Produced by this run (``Artifact.run_id``; also the copies a hit restored elsewhere).
        consumer:
            Read by this run (linked to it as an input).
        key:
            Recorded under this key.
        hash:
            With this content (``"sha256:<hex>"``).
        limit:
            At most this many; None: every match.
        """
        from .models import artifact_from_row

        rows = self._index.find_artifacts(
            creator=_id_of(creator) if creator is not None else None,
            consumer=_id_of(consumer) if consumer is not None else None,
            key=key, digest=hash, limit=_limit(limit),
        )  # fmt: skip
        return [artifact_from_row(r) for r in rows]

    def load_run_output(self, run_id: RunRef, key: str, **kwargs: Any) -> pd.DataFrame:
        """Output ``key`` of run ``run_id`` read by :func:`consist.load_df` from where it was recorded.

        ``kwargs`` go to the pandas reader. A file of a directory output is found by its relative path.

        Raises
        ------
        RunNotFoundError
            No run has that id.
        ArtifactNotFoundError
            The run has no output under ``key`` (the message lists its outputs).
        OutputError
            The output is no longer where it was recorded.
        """
        from .loaders import load_df

        run = self._run_row(run_id)
        links = self._index.links_of(run["id"])
        outputs = {link["link_key"]: link for link in links if link["direction"] == "output"}
        found = outputs.get(key) or next(
            (link for link in links if link["direction"] == "member" and link["link_key"] == key), None
        )
        if found is None:
            raise ArtifactNotFoundError(
                f"Run {run['id']!r} has no output {key!r} (its outputs: {', '.join(sorted(outputs)) or 'none'})",
                "the key is misspelled, or another run of the step wrote that output",
                "pass one of the run's output keys",
            )
        path = Path(found["uri"])
        if not os.path.lexists(path):
            raise OutputError(
                f"Output {key!r} of run {run['id']!r} is no longer at {path}",
                "it was moved or deleted after the run",
                "run the step again: a cache hit restores its outputs from the object store",
            )
        return load_df(path, **kwargs)


# ---------------------------------------------------------------------- helpers


def _id_of(run: Any) -> str:
    if isinstance(run, str):
        return run
    for attr in ("run_id", "id"):  # a RunResult, a Run
        value = getattr(run, attr, None)
        if isinstance(value, str):
            return value
    raise InvalidOptionError(
        f"Cannot tell which run {run!r} is", None, "pass a run id, a Run or the RunResult of tracker.run()"
    )


def _tags(tags: Sequence[str] | str | None) -> list[str]:
    if tags is None:
        return []
    return [tags] if isinstance(tags, str) else list(tags)  # one tag given as text is one tag, not letters


def _limit(limit: int | None) -> int | None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise InvalidOptionError(f"limit={limit!r} cannot be used", None, "pass a whole number >= 0, or None for all")
    return limit


def _run_filters(filters: RunFilters) -> dict[str, Any]:
    """The filters of the run index's lookup from find_runs() keywords."""
    return {k: v for k, v in filters.items() if k != "tags"}


def _describe(filters: RunFilters) -> str:
    given = [f"{k}={v!r}" for k, v in filters.items() if v is not None]
    return ", ".join(given) if given else "no filter (an empty history)"


def _index_field(name: str) -> str:
    from .models import Run

    allowed = [f for f in Run.model_fields if f not in _JSON_FIELDS] + list(_META_FIELDS)
    if name not in allowed:
        raise InvalidOptionError(
            f"Unknown index_by {name!r}",
            "index_by names a run field whose values key the dict",
            f"use one of {', '.join(allowed)}",
        )
    return name


def _field_value(run: Run, field: str) -> Any:
    if field in _META_FIELDS:
        return (run.meta or {}).get(field)
    return getattr(run, field)
