"""The run index's lookups (:mod:`consist.lookups`): SQL that each backend's indexes answer.

Every lookup is led by one index, chosen from the filters given (the likely most
selective first), whose rows come newest first, so a ``LIMIT`` ends the scan early.
Mixed into :class:`consist.store.index.RunIndex`, whose backends supply
:meth:`meta_field`, :meth:`indexed_by` and :meth:`lookup`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

#: The filters of run lookups that are columns of ``run``.
RUN_FILTER_COLUMNS = {
    "model": "run.model", "status": "run.status", "parent_id": "run.parent_run_id", "year": "run.year",
    "iteration": "run.iteration", "cache_hit": "run.cache_hit", "signature": "run.signature",
    "config_hash": "run.config_hash", "input_hash": "run.input_hash", "code_version": "run.code_version",
}  # fmt: skip
#: The filters of run lookups that are keys of the ``meta`` JSON (an index each).
RUN_META_FILTERS = ("stage", "phase")
# Which index leads a run lookup: that of the first filter given here (the likely most selective), else
# the newest runs of all. Each gives its rows newest first, so a LIMIT ends the scan early. A status other
# than completed (failed, running, interrupted) is rare, so it leads early; completed, the usual one, last.
_RUN_DRIVERS = (
    ("parent_id", "run_by_parent_started"), ("signature", "run_by_signature"),
    ("config_hash", "run_by_config_hash"), ("input_hash", "run_by_input_hash"), ("stage", "run_by_stage"),
    ("phase", "run_by_phase"), ("rare_status", "run_by_status_started"), ("year", "run_by_year_started"),
    ("tags", "run_tag_by_tag"), ("model", "run_by_model_started"), ("code_version", "run_by_code_version"),
    ("status", "run_by_status_started"),
)  # fmt: skip
_HAS_TAG = "EXISTS (SELECT 1 FROM run_tag t WHERE t.run_id = run.id AND t.tag = ?)"
_META_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _meta_key(key: str) -> str:
    """``key`` if it can be written into a JSON path literal as it is (it becomes part of the SQL)."""
    if not _META_KEY.fullmatch(key):
        raise ValueError(f"not a metadata name usable in SQL: {key!r}")
    return key


class IndexLookups:
    """Run and artifact lookups on the run index (see :class:`consist.store.index.RunIndex`).

    Backends override :meth:`meta_field`, and may override :meth:`indexed_by` and
    :meth:`_run_planned`; ``_read`` and ``_run`` come from the index.
    """

    _read: Any
    _run: Any

    #: SQL true when the run's ``tags`` (JSON text) hold the parameter: for an index without ``run_tag``.
    TAG_CONTAINS: str
    #: The condition of the filter whose index leads a lookup: its expression ``{0}`` equals the parameter.
    LEADS = "{0} = ?"
    #: Whether a lookup is ordered by its leading filter's expression too (constant there, so the same order).
    _ORDER_BY_LEAD = False

    def _run_planned(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """:meth:`_run`, planned for these values: never a plan made once for any value.

        For lookups, whose values are skewed (a tag on half the runs, another on ten).
        """
        return self._run(sql, params)

    @property
    def has_lookup_indexes(self) -> bool:
        """Whether the schema has the lookups' indexes and ``run_tag`` (an older one, opened read-only, has not)."""
        return True

    def meta_field(self, key: str) -> str:
        """SQL for the value of key ``key`` of a run's ``meta`` JSON: the expression its index is built on."""
        raise NotImplementedError

    def indexed_by(self, index: str) -> str:
        """The clause, after a table name, that makes a lookup read ``index`` ("" where the planner chooses)."""
        return ""

    def lookup(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """:meth:`query`, planned for its values (see :meth:`_run_planned`)."""
        return self._read(lambda: self._run_planned(sql, params).fetchall())

    def lookup_one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        return self._read(lambda: self._run_planned(sql, params).fetchone())

    def _runs_matching(self, filters: Mapping[str, Any], tags: Sequence[str]) -> tuple[str, list[Any], str]:
        """``FROM ... WHERE ...`` of the runs matching every filter and tag, its parameters, and its order.

        ``filters`` are :data:`RUN_FILTER_COLUMNS` and :data:`RUN_META_FILTERS` (None: not filtered).
        The order, newest first, is that of the index that leads (see :data:`_RUN_DRIVERS`).
        """
        tags = list(dict.fromkeys(tags))
        given = {name for name, value in filters.items() if value is not None} | ({"tags"} if tags else set())
        if filters.get("status") not in (None, "completed"):
            given.add("rare_status")
        lead, index = next(((name, index) for name, index in _RUN_DRIVERS if name in given), (None, "run_by_started"))
        lead = "status" if lead == "rare_status" else lead
        if not self.has_lookup_indexes:
            lead = None
        where: list[str] = []
        params: list[Any] = []
        order = "run.started_at DESC"
        for name, value in filters.items():
            if value is None:
                continue
            if name in RUN_META_FILTERS:
                expr, value = self.meta_field(name), str(value)
            elif name in RUN_FILTER_COLUMNS:
                expr, value = RUN_FILTER_COLUMNS[name], int(value) if name == "cache_hit" else value
            else:
                raise ValueError(f"unknown run filter {name!r}")
            if name == lead:
                where.insert(0, self.LEADS.format(expr))
                params[:0] = [value] * self.LEADS.count("?")
                order = f"{expr} DESC, run.started_at DESC" if self._ORDER_BY_LEAD else order
            else:
                where.append(f"{expr} = ?")
                params.append(value)
        if not self.has_lookup_indexes:
            where += [self.TAG_CONTAINS] * len(tags)
            params += tags
            source = "run"
        elif lead == "tags":
            # The first tag's runs, newest first, from run_tag; every other filter is checked per run.
            source = f"run_tag t0 {self.indexed_by(index)}CROSS JOIN run"
            order = "t0.tag DESC, t0.started_at DESC" if self._ORDER_BY_LEAD else "t0.started_at DESC"
            where = [self.LEADS.format("t0.tag"), "run.id = t0.run_id", *where, *[_HAS_TAG] * (len(tags) - 1)]
            params = [*[tags[0]] * self.LEADS.count("?"), *params, *tags[1:]]
        else:
            source = f"run {self.indexed_by(index)}"
            where += [_HAS_TAG] * len(tags)
            params += tags
        return f"FROM {source}" + (" WHERE " + " AND ".join(where) if where else ""), params, order

    def find_runs(
        self, filters: Mapping[str, Any], tags: Sequence[str] = (), limit: int | None = 100
    ) -> list[dict[str, Any]]:
        """Runs matching every filter and holding every tag, newest first (by ``started_at``)."""
        sql, params, order = self._runs_matching(filters, tags)
        sql = f"SELECT run.* {sql} ORDER BY {order}"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return self.lookup(sql, params)

    def count_runs(self, filters: Mapping[str, Any], tags: Sequence[str] = ()) -> int:
        sql, params, _order = self._runs_matching(filters, tags)
        row = self.lookup_one(f"SELECT count(*) AS n {sql}", params)
        return int(row["n"]) if row else 0

    def artifact(self, artifact_id: str) -> dict[str, Any] | None:
        return self.lookup_one("SELECT * FROM artifact WHERE id = ?", (artifact_id,))

    def newest_artifact(self, key: str) -> dict[str, Any] | None:
        """The newest artifact recorded under ``key``: one a run produced, else a raw input."""
        for which, index in (("NOT NULL", "artifact_produced_by_key"), ("NULL", "artifact_by_key_created")):
            row = self.lookup_one(
                f"SELECT * FROM artifact {self.indexed_by(index)}WHERE key = ? AND run_id IS {which} "
                "ORDER BY created_at DESC LIMIT 1",
                (key,),
            )
            if row is not None:
                return row
        return None

    def artifact_at(self, uri: str) -> dict[str, Any] | None:
        """The newest artifact recorded at ``uri``."""
        lead = self.indexed_by("artifact_by_uri")
        return self.lookup_one(f"SELECT * FROM artifact {lead}WHERE uri = ? ORDER BY created_at DESC LIMIT 1", (uri,))

    def find_artifacts(
        self,
        *,
        creator: str | None = None,
        consumer: str | None = None,
        key: str | None = None,
        digest: str | None = None,
        limit: int | None = 100,
    ) -> list[dict[str, Any]]:
        """Artifacts matching every filter, newest first: produced by run ``creator``, read by run ``consumer``."""
        where: list[str] = []
        params: list[Any] = []
        for col, value in (("run_id", creator), ("key", key), ("hash", digest)):
            if value is not None:
                where.append(f"a.{col} = ?")
                params.append(value)
        if consumer is not None:
            # A run's inputs are few: they lead, through the links' primary key.
            where.append("a.id IN (SELECT artifact_id FROM run_artifact WHERE run_id = ? AND direction = 'input')")
            params.append(consumer)
            lead = ""
        else:
            lead = next(
                (self.indexed_by(index) for value, index in ((creator, "artifact_by_run"),
                 (digest, "artifact_by_hash_created"), (key, "artifact_by_key_created")) if value is not None),
                self.indexed_by("artifact_by_created"),
            )  # fmt: skip
        sql = f"SELECT a.* FROM artifact a {lead}" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY a.created_at DESC"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return self.lookup(sql, params)
