"""Small helpers the tests share for making files and naming their content."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def sha(data: bytes) -> str:
    """The hash consist records for these bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write(path: str | Path, data: str | bytes) -> Path:
    """Write a file, making its folders; returns its path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return p


def aged(path: Path) -> Path:
    """Move a file's mtime out of the racy window, so the hash memo remembers its hash."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - 10 * 10**9))
    return path
