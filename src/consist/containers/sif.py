"""Reading what a SIF file records about the image it was built from.

When Apptainer builds a SIF from an OCI image (``docker://``, ``docker-archive://``,
``docker-daemon://``), it keeps a small JSON object of the image's config
(``Cmd``, ``Env``, ``WorkingDir``) in a data object of the SIF, but ``apptainer
exec`` ignores its ``WorkingDir``. We read it so that a container runs in the
image's working directory, as Docker and Podman do.

The SIF layout (little-endian, fields packed): a 32-byte launch script,
``SIF_MAGIC\\0``, version and architecture, a 16-byte id, then eight int64
(created, modified, free descriptors, total descriptors, descriptor offset,
descriptor size, data offset, data size). Each descriptor starts with its data
type (int32), a used flag (bool), three uint32 ids and its data offset and size
(int64). The file is untrusted input: offsets and sizes are checked against the
file, and a data object larger than 1 MiB is not read.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

_MAGIC = b"SIF_MAGIC\x00"
_JSON_GENERIC = 0x4006
_MAX_DESCRIPTORS = 4096
_MAX_JSON = 1 << 20
_cache: dict[tuple[str, int, int, int], dict[str, Any] | None] = {}


def image_config(path: Path) -> dict[str, Any] | None:
    """The OCI image config a SIF recorded (``{"WorkingDir": ...}`` and the like), or None."""
    try:
        st = path.stat()
    except OSError:
        return None
    key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _cache:
        try:
            _cache[key] = _read(path, st.st_size)
        except (OSError, struct.error, ValueError):
            _cache[key] = None
    return _cache[key]


def _read(path: Path, size: int) -> dict[str, Any] | None:
    with open(path, "rb") as f:
        head = f.read(128)
        if head[32:42] != _MAGIC:
            return None
        _created, _modified, _free, total, doff, dsize, _data, _dsz = struct.unpack_from("<8q", head, 64)
        if not (0 < total <= _MAX_DESCRIPTORS) or doff < 0 or dsize <= 0 or doff + dsize > size or dsize % total:
            return None
        f.seek(doff)
        table = f.read(dsize)
        entry = dsize // total
        for i in range(total):
            dtype, used = struct.unpack_from("<i?", table, i * entry)
            if not used or dtype != _JSON_GENERIC:
                continue
            offset, length = struct.unpack_from("<qq", table, i * entry + 17)
            if offset < 0 or not 0 < length <= _MAX_JSON or offset + length > size:
                continue
            f.seek(offset)
            try:
                data = json.loads(f.read(length))
            except ValueError:
                continue
            if isinstance(data, dict) and ("WorkingDir" in data or "Cmd" in data or "Entrypoint" in data):
                return data
    return None


def working_dir(path: str | os.PathLike[str]) -> str | None:
    """The image's working directory recorded in a SIF, when it is an absolute path."""
    config = image_config(Path(path))
    wd = config.get("WorkingDir") if config else None
    return wd if isinstance(wd, str) and wd.startswith("/") and "\0" not in wd else None
