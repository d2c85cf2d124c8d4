"""Run ids and step names: one rule for every entry point.

A run id names a folder (``run_dir/<run_id>/`` holds a container's log), so it
must never be able to point anywhere else: no path separators, no ``..``, no
leading dot, no control characters, and a bounded length. Names derived from a
function (``<lambda>``) are made to fit instead of refused.
"""

from __future__ import annotations

import re

from .errors import InvalidNameError

MAX_RUN_ID = 200
# Letters and digits of any script, and a few separators; ~ is how reused ids continue (id~2).
_VALID = re.compile(r"^\w[\w.~+@=,-]*$")
_INVALID_CHARS = re.compile(r"[^\w.~+@=,-]+")


def check_run_id(value: object, what: str = "run_id") -> str:
    """Return ``value`` when it is a usable run id or name, else raise :class:`InvalidNameError`."""
    if not isinstance(value, str):
        raise InvalidNameError(
            f"{what} must be a string, got {type(value).__name__}", None, f'pass e.g. {what}="baseline_2030"'
        )
    if not value or len(value) > MAX_RUN_ID or not _VALID.match(value) or ".." in value:
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise InvalidNameError(
            f"{what} {shown!r} is not allowed",
            f"it names a folder under run_dir, so it must be 1-{MAX_RUN_ID} characters of letters, digits "
            "and . _ - ~ + @ = , starting with a letter or digit, without '..', '/' or spaces",
            f'use e.g. {what}="{fit(value) or "baseline_2030"}"',
        )
    return value


def fit(value: str) -> str:
    """A usable name made from any text: other characters become ``_``."""
    out = _INVALID_CHARS.sub("_", value).replace("..", "_")
    out = out.lstrip("._~+@=,-")[:MAX_RUN_ID]
    return out or "run"
