"""What identifies a run before any decision: the plan, its inputs and how a step is called."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .errors import (
    ConsistError,
    OutputError,
)
from .hashing import FileHasher, NullMemo
from .identity import make_signature
from .paths import as_path
from .results import RunResult
from .store.index import RunIndex

log = logging.getLogger("consist")


_DRIVERS = {
    ".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet", ".json": "json",
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".h5": "h5", ".hdf5": "h5", ".zarr": "zarr",
    ".nc": "netcdf", ".omx": "openmatrix", ".txt": "text", ".log": "text", ".yaml": "yaml",
    ".yml": "yaml", ".sif": "sif",
}  # fmt: skip


def driver_for(path: Path, is_dir: bool = False) -> str | None:
    """A format name from the file extension (None when unknown)."""
    if is_dir and path.suffix.lower() != ".zarr":
        return "dir"
    return _DRIVERS.get(path.suffix.lower())


def driver_for_name(rel: str) -> str | None:
    """:func:`driver_for` of a file's relative name, without building a Path (directory members)."""
    name = rel.rpartition("/")[2]
    dot = name.rfind(".")
    return _DRIVERS.get(name[dot:].lower()) if 0 < dot < len(name) - 1 else None


@dataclasses.dataclass
class _Plan:
    """Everything needed to identify a run, computed before any decision."""

    name: str
    model: str
    components: dict[str, Any]
    config: Any
    config_hash: str
    inputs: list[tuple[str, Path, str]]  # (key, path, hash)
    cache_mode: str
    year: int | None
    iteration: int | None
    hasher: FileHasher
    #: Inputs given as recorded artifacts: key -> artifact row (linked as that very artifact).
    input_artifacts: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    #: Of those, the ones whose file is gone: restored from the object store before a miss executes.
    missing_inputs: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    #: "lazy": a hit checks its objects while restoring them; "eager": every output object is re-hashed first.
    validate: str = "lazy"

    @functools.cached_property
    def signature(self) -> str:
        return make_signature(self.components)


@dataclasses.dataclass
class _Active:
    """A run in progress."""

    row: dict[str, Any]
    plan: _Plan
    outputs: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    cached_outputs: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    scenario: Any = None  # the ScenarioContext when this run is a scenario header
    #: The run's record as written when it was opened (what its final record is compared with).
    recorded: dict[str, Any] | None = None
    #: Objects stored for the run but not leased, when its final record follows at once (see
    #: RecordingMixin._finish): (hash, kind, size, path, manifest) each; None: every output is leased.
    unleased: list[tuple[str, str, int, Path, list[list[Any]]]] | None = None

    @property
    def id(self) -> str:
        return self.row["id"]

    @property
    def persist(self) -> bool:
        return self.plan.cache_mode != "readonly"


class _ReadOnlyMemo(NullMemo):
    """Reads the memo but never writes it (readonly runs persist nothing)."""

    def __init__(self, index: RunIndex) -> None:
        self._index = index

    def memo_get(self, key: tuple[int, int, int, int], algo: str) -> str | None:
        return self._index.memo_get(key, algo)


def _as_path(value: Any, key: str) -> Path:
    path = as_path(value)
    if path is not None:
        return path
    raise OutputError(
        f"Output {key!r} is a {type(value).__name__}, not a path",
        "the function must return where it wrote the output",
        "write the data to a file and return its path",
    )


def normalize_inputs(inputs: Any, resolve: Callable[[Any], Path | None] | None = None) -> list[tuple[str, Path, Any]]:
    """``(key, path, value)`` triples from a dict or a list of paths, artifacts or run results.

    ``resolve`` may map a value to a path first (scenario coupler keys). In a list,
    an artifact keeps its own key, a path is keyed by its file name.
    """
    if inputs is None:
        return []
    items: list[tuple[str | None, Any]]
    if isinstance(inputs, Mapping):
        items = [(str(k), v) for k, v in inputs.items()]
    elif isinstance(inputs, (str, os.PathLike)) or hasattr(inputs, "uri"):
        items = [(None, inputs)]
    else:
        items = [(None, v) for v in inputs]
    out: list[tuple[str, Path, Any]] = []
    seen: set[str] = set()
    for key, value in items:
        found = resolve(value) if resolve is not None else None
        path = found if found is not None else _input_path(value)
        own = getattr(value, "key", None) if hasattr(value, "uri") else None
        k = key or (value if found is not None and isinstance(value, str) else own or path.name)
        if key is None and k in seen:
            n = 2
            while f"{k}#{n}" in seen:
                n += 1
            k = f"{k}#{n}"
        seen.add(k)
        out.append((k, path, value))
    return out


def resolve_inputs(
    inputs: Any,
    hasher: FileHasher,
    index: RunIndex,
    resolve: Callable[[Any], Path | None] | None = None,
    stash: Path | None = None,
) -> tuple[list[tuple[str, Path, str]], dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Hash the inputs: ``(key, path, hash)`` each, the recorded artifacts among them, and those whose file is gone.

    An :class:`~consist.Artifact` (or a run result's output) that consist recorded is
    linked as that artifact. When its file was moved or deleted, its recorded hash
    stands for it if the object store still holds the bytes: nothing is read then,
    and the bytes are restored only if the step executes, into ``stash`` (the
    workspace's own folder of such inputs, one subfolder per content), never to the
    place the artifact names.
    """
    resolved: list[tuple[str, Path, str]] = []
    recorded: dict[str, dict[str, Any]] = {}
    missing: dict[str, dict[str, Any]] = {}
    for key, path, value in normalize_inputs(inputs, resolve):
        row = _recorded_artifact(value, index)
        gone = row is not None and stash is not None and not os.path.lexists(path)
        if gone and row is not None and row.get("hash") and row.get("kind") in ("file", "dir"):
            digest = row["hash"]
            missing[key] = row
            name = Path(row["uri"]).name or "input"
            path = stash / digest.split(":")[-1][:32] / (name if name not in (".", "..") else "input")
        else:
            digest = hasher.hash_path(path, key)
        if row is not None and row.get("hash") == digest:
            recorded[key] = row
        resolved.append((key, path, digest))
    return resolved, recorded, missing


def _recorded_artifact(value: Any, index: RunIndex) -> dict[str, Any] | None:
    """The index row of an artifact given as an input (an Artifact, or a run result with one output)."""
    if isinstance(value, RunResult) and len(value._output_rows) == 1:
        art_id = next(iter(value._output_rows.values())).get("id")
    elif hasattr(value, "uri") and hasattr(value, "hash"):
        art_id = getattr(value, "id", None)
    else:
        return None
    if not art_id:
        return None
    row = index.query_one("SELECT * FROM artifact WHERE id = ?", (art_id,))
    claimed = getattr(value, "hash", None) if not isinstance(value, RunResult) else None
    if row is not None and claimed is not None and claimed != row.get("hash"):
        return None  # an object that says other content than its record: taken as a plain path
    return row


def _input_path(value: Any) -> Path:
    if isinstance(value, RunResult):
        outs = value._output_rows
        if len(outs) != 1:
            raise ConsistError(
                f"A run result with {len(outs)} outputs was passed as one input",
                "it is ambiguous which output is meant",
                "pass result.outputs[key] instead",
            )
        return Path(next(iter(outs.values()))["uri"])
    path = as_path(value)
    if path is not None:
        return path
    raise ConsistError(
        f"Input of type {type(value).__name__} is not a path, artifact or run result",
        None,
        "pass a path (str or pathlib.Path), an Artifact or a RunResult",
    )


def _bind(fn: Callable[..., Any], config: Any, resolved: list[tuple[str, Path, str]], raw: Any) -> dict[str, Any]:
    """Keyword arguments for fn: config values and input paths by parameter name."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs: dict[str, Any] = {}
    if config is not None:
        if isinstance(config, Mapping):
            values = dict(config)
        elif dataclasses.is_dataclass(config) and not isinstance(config, type):
            values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
        elif hasattr(config, "model_dump"):
            values = {k: getattr(config, k) for k in type(config).model_fields}
        else:
            values = {}
        for k, v in values.items():
            if k in params or takes_any:
                kwargs[k] = v
        if "config" in params and "config" not in values:
            kwargs["config"] = config
    if isinstance(raw, Mapping):
        for key, path, _h in resolved:
            if key in params or takes_any:
                kwargs[key] = path
    return kwargs
