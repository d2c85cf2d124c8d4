"""Turning the things users pass (paths, artifacts, run results) into paths."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def as_path(value: Any) -> Path | None:
    """The path of a str/PathLike or of anything with a string ``uri`` (an Artifact); else None."""
    if isinstance(value, (str, os.PathLike)):
        return Path(value)
    uri = getattr(value, "uri", None)
    return Path(uri) if isinstance(uri, str) else None
