"""SQLModel tables of the provenance database: ``Run``, ``Artifact``, ``RunArtifactLink``.

They describe the DuckDB tables so that ``Session(tracker.engine)`` queries work
as in the guide. This module imports SQLModel (about half a second), so consist
only loads it when a model object is first needed.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any, Optional, TypeVar

from sqlalchemy import JSON, Column
from sqlalchemy.orm import configure_mappers, instrumentation
from sqlmodel import Field, SQLModel

T = TypeVar("T", bound=SQLModel)


class Run(SQLModel, table=True):
    """One execution (or cache hit) of a step, as stored in the ``run`` table.

    ``status`` is ``running``, ``completed``, ``failed`` or ``interrupted`` (the
    process ended without finishing). ``cache_hit`` runs did not execute: their
    outputs came from ``cache_source``, the run that produced them. ``identity``
    holds the signature components and ``meta["cache_miss_explanation"]`` says
    why a run that executed could not reuse an earlier one.
    """

    __tablename__ = "run"

    id: str = Field(primary_key=True)
    name: Optional[str] = None
    model: Optional[str] = Field(default=None, index=True)
    status: str = "running"
    parent_run_id: Optional[str] = None
    year: Optional[int] = None
    iteration: Optional[int] = None
    tags: Optional[list[str]] = Field(default=None, sa_column=Column(JSON))
    signature: Optional[str] = None
    code_version: Optional[str] = None
    config_hash: Optional[str] = None
    input_hash: Optional[str] = None
    config: Optional[Any] = Field(default=None, sa_column=Column(JSON))
    identity: Optional[dict[str, Any]] = Field(default=None, sa_column=Column(JSON))
    cache_hit: bool = False
    cache_source: Optional[str] = None
    cache_epoch: Optional[int] = None
    error: Optional[str] = None
    meta: Optional[dict[str, Any]] = Field(default=None, sa_column=Column(JSON))
    run_dir: Optional[str] = None
    pid: Optional[int] = None
    host: Optional[str] = None
    started_at: Optional[dt.datetime] = None
    ended_at: Optional[dt.datetime] = None

    @property
    def cache_miss_explanation(self) -> Optional[dict[str, Any]]:
        """Why this run executed instead of reusing an earlier one (None for hits)."""
        return (self.meta or {}).get("cache_miss_explanation")


class Artifact(SQLModel, table=True):
    """A file or directory a run read or wrote.

    ``hash`` is ``"sha256:<hex>"`` of the content (for a directory, of its
    manifest of relative paths and file hashes); ``run_id`` is the run that
    produced it, or None for raw inputs. ``path`` is the host path as a ``Path``
    (for a restored output: where it was restored in this workspace).
    ``location`` is the portable place it was recorded at, relative to a named
    root of the tracker (``run_dir://...``, ``project://...``, ``<mount>://...``),
    or an absolute path for outputs allowed outside every root.
    """

    __tablename__ = "artifact"

    id: str = Field(primary_key=True)
    key: str
    uri: str
    hash: Optional[str] = Field(default=None, index=True)
    size: Optional[int] = None
    kind: str = "file"
    driver: Optional[str] = None
    run_id: Optional[str] = None
    created_at: Optional[dt.datetime] = None
    meta: Optional[dict[str, Any]] = Field(default=None, sa_column=Column(JSON))
    location: Optional[str] = None

    @property
    def path(self) -> Path:
        """The artifact's host path."""
        return Path(self.uri)

    def __fspath__(self) -> str:
        return self.uri


class RunArtifactLink(SQLModel, table=True):
    """Which artifacts a run read (``direction="input"``) and wrote (``"output"``), by key."""

    __tablename__ = "run_artifact"

    run_id: str = Field(primary_key=True)
    direction: str = Field(primary_key=True)
    key: str = Field(primary_key=True)
    artifact_id: str


def _ts(value: Any) -> Optional[dt.datetime]:
    if value is None or isinstance(value, dt.datetime):
        return value
    return dt.datetime.fromtimestamp(float(value), dt.UTC).replace(tzinfo=None)


def _js(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _loaded(cls: type[T], values: dict[str, Any]) -> T:
    """An instance holding ``values`` (every field), made the way SQLAlchemy makes one it loads.

    ``cls(**values)`` sets each field through pydantic and then SQLAlchemy's instrumentation,
    about 60 µs an object: a lookup returning 100 runs spent most of its time there. The
    result is the same object (equal, same state), in a sixth of the time.
    """
    manager = instrumentation.manager_of_class(cls)
    if not manager.mapper.configured:  # done by the first cls(...), which this bypasses
        configure_mappers()
    obj = manager.new_instance()
    obj.__dict__.update(values)
    object.__setattr__(obj, "__pydantic_fields_set__", set(values))
    return obj


def run_from_row(row: dict[str, Any]) -> Run:
    """Build a Run from an index row (JSON text, epoch floats)."""
    return _loaded(
        Run,
        {
            **{k: row.get(k) for k in Run.model_fields},
            "tags": _js(row.get("tags")),
            "config": _js(row.get("config")),
            "identity": _js(row.get("identity")),
            "meta": _js(row.get("meta")),
            "cache_hit": bool(row.get("cache_hit")),
            "started_at": _ts(row.get("started_at")),
            "ended_at": _ts(row.get("ended_at")),
        },
    )


def artifact_from_row(row: dict[str, Any]) -> Artifact:
    """Build an Artifact from an index row."""
    return _loaded(
        Artifact,
        {
            **{k: row.get(k) for k in Artifact.model_fields},
            "meta": _js(row.get("meta")),
            "created_at": _ts(row.get("created_at")),
        },
    )
