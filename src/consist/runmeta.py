"""Free-form metadata on runs and artifacts: what may be recorded, and the limits.

Metadata is JSON stored with the record (``Run.meta``, ``Artifact.meta``), so it can
be queried in SQL (``json_extract(meta, '$.stage')`` in DuckDB and SQLite,
``meta::jsonb ->> 'stage'`` in PostgreSQL). A few names are consist's own: restores
and queries rely on them, so a user value may not replace them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from .errors import MetadataError

#: Largest metadata of one run or artifact, as compact JSON (bytes).
MAX_META_BYTES = 64 * 1024
#: Longest metadata name.
MAX_KEY_CHARS = 128
#: Run fields kept in ``Run.meta`` and their longest text.
RUN_TEXT_FIELDS = {"description": 10_000, "stage": 128, "phase": 128}
#: Names consist writes into ``Run.meta`` itself.
RESERVED_RUN_KEYS = frozenset({"cache_miss_explanation", "waited_for", "container", "scenario", "input_meta"})
#: Names consist writes into ``Artifact.meta`` itself (restores give files their recorded modes).
RESERVED_ARTIFACT_KEYS = frozenset({"files", "mode", "modes", "member_of", "restored_from"})


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _finite(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    return True


def check_meta(meta: Mapping[str, Any], what: str, reserved: frozenset[str]) -> dict[str, Any]:
    """``meta`` as a plain dict, or a :class:`MetadataError` that says what is wrong with it."""
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS:
            raise MetadataError(
                f"Metadata name {key!r} of {what} cannot be used",
                f"names are non-empty text of at most {MAX_KEY_CHARS} characters",
                "use a short text name",
            )
        if key in RUN_TEXT_FIELDS and key in reserved:
            raise MetadataError(
                f"Metadata name {key!r} of {what} is a run field",
                f"{key} has an argument of its own",
                f"pass {key}=... instead of meta={{{key!r}: ...}}",
            )
        if key in reserved:
            raise MetadataError(
                f"Metadata name {key!r} of {what} is one consist records itself",
                f"the names {', '.join(sorted(reserved - set(RUN_TEXT_FIELDS)))} are reserved",
                "choose another name",
            )
        try:
            finite = _finite(value)
        except RecursionError:
            finite = True  # too deep to walk: json.dumps below refuses it with a clear error
        if not finite:
            raise MetadataError(
                f"Metadata {key!r} of {what} holds NaN, infinity or a non-text key",
                "JSON has no such values",
                "record None or a text for missing values",
            )
        out[key] = value
    try:
        text = json.dumps(out, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise MetadataError(
            f"Metadata of {what} cannot be stored as JSON ({exc})",
            "values must be text, numbers, booleans, None, lists or dicts of those",
            "convert other values first, for example str(path) or value.tolist()",
        ) from exc
    if len(text.encode()) > MAX_META_BYTES:
        raise MetadataError(
            f"Metadata of {what} is {len(text.encode()):,} bytes as JSON, over the limit of {MAX_META_BYTES:,}",
            "metadata is for describing data, not for holding it",
            "log large content as an artifact (a file) and record its key or a summary instead",
        )
    return out


def run_fields(description: str | None, stage: str | None, phase: str | None) -> dict[str, Any]:
    """The run fields kept in ``Run.meta``, checked."""
    out: dict[str, Any] = {}
    for name, value in (("description", description), ("stage", stage), ("phase", phase)):
        if value is None:
            continue
        if not isinstance(value, str) or len(value) > RUN_TEXT_FIELDS[name]:
            shown = repr(value) if len(repr(value)) <= 60 else f"{repr(value)[:57]}... ({len(value):,} characters)"
            raise MetadataError(
                f"{name}={shown} cannot be recorded",
                f"{name} is text of at most {RUN_TEXT_FIELDS[name]:,} characters",
                f"pass a shorter text as {name}=",
            )
        out[name] = value
    return out


def user_run_meta(
    description: str | None, stage: str | None, phase: str | None, meta: Mapping[str, Any] | None, what: str
) -> dict[str, Any]:
    """Everything a caller asked to record in ``Run.meta``: checked fields, then free-form metadata."""
    out = run_fields(description, stage, phase)
    if meta:
        extra = check_meta(meta, what, RESERVED_RUN_KEYS | set(RUN_TEXT_FIELDS))
        out.update(extra)
    if out:
        check_meta(out, what, RESERVED_RUN_KEYS)  # the size of the whole
    return out


def merged(text: str | None, extra: Mapping[str, Any], what: str, reserved: frozenset[str]) -> str | None:
    """Stored JSON text ``text`` with ``extra`` added (checked: the whole must stay under the limit)."""
    current = json.loads(text) if text else {}
    if not extra:
        return text
    current.update(extra)
    internal = {k: current.pop(k) for k in list(current) if k in reserved}
    check_meta(current, what, reserved)
    current.update(internal)
    return json.dumps(current, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
