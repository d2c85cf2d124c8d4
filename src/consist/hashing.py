"""Content hashing: files, directories and configs.

Every stored hash is written as ``"<algorithm>:<hex>"`` and the byte layout of
directory manifests and canonical configs carries a format version, so a future
change of either invalidates old cache entries cleanly instead of colliding.

File hashes go through a memo keyed by ``(device, inode, size, mtime_ns)``: an
unchanged file costs one ``stat``. A hash is only memoised when the file's mtime
is at least ``RACY_WINDOW_NS`` older than the moment hashing finished, so a file
rewritten within the same timestamp tick (possible on file systems with coarse
timestamps) can never be mistaken for its earlier content.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import enum
import hashlib
import json
import math
import os
import stat as _stat
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePath
from typing import Any, Protocol

from .errors import ConfigError, InputNotFoundError
from .progress import ByteProgress

ALGORITHM = "sha256"
FILE_FORMAT = "file-v1"
DIR_FORMAT = "consist-dir-v1"
CONFIG_FORMAT = "consist-config-v2"  # v2: tagged NaN/inf/bytes/sets, escaped "$" keys, refused key collisions
FAST_FORMAT = "consist-fast-v1"
CHUNK = 1 << 20
RACY_WINDOW_NS = 1_000_000_000


class HashMemo(Protocol):
    """Where file hashes are remembered between runs and processes."""

    def memo_get(self, key: tuple[int, int, int, int], algo: str) -> str | None: ...

    def memo_put(self, key: tuple[int, int, int, int], algo: str, digest: str) -> None: ...


class NullMemo:
    """A memo that remembers nothing (read-only runs, or no database)."""

    def memo_get(self, key: tuple[int, int, int, int], algo: str) -> str | None:
        return None

    def memo_put(self, key: tuple[int, int, int, int], algo: str, digest: str) -> None:
        return None


def stat_key(st: os.stat_result) -> tuple[int, int, int, int]:
    """The memo key of a file: (device, inode, size, mtime_ns)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def sha256_bytes(data: bytes) -> str:
    return f"{ALGORITHM}:{hashlib.sha256(data).hexdigest()}"


def hash_stream(path: Path, size: int, label: str | None = None) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks into a reused buffer."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f, ByteProgress(f"hashing {label or path.name}", size) as bar:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
            bar.advance(n)
    return f"{ALGORITHM}:{h.hexdigest()}"


@dataclasses.dataclass
class FileHasher:
    """Hashes files and directories with a memo and a per-run cache.

    ``strategy="full"`` hashes content; ``"fast"`` hashes size and mtime only
    (for users who accept that a rewrite keeping both unchanged goes unnoticed).
    """

    memo: HashMemo
    strategy: str = "full"
    run_cache: dict[tuple[int, int, int, int], str] = dataclasses.field(default_factory=dict)
    bytes_hashed: int = 0

    @property
    def algo(self) -> str:
        return f"{ALGORITHM}/{FILE_FORMAT}" if self.strategy == "full" else f"{ALGORITHM}/{FAST_FORMAT}"

    def hash_path(self, path: str | os.PathLike[str], name: str | None = None) -> str:
        """Hash a file or a directory; a missing path raises InputNotFoundError."""
        p = Path(path)
        try:
            st = p.stat()
        except FileNotFoundError:
            raise InputNotFoundError(p, name) from None
        if _stat.S_ISDIR(st.st_mode):
            return self.hash_dir(p)[0]
        return self.hash_file(p, st)

    def hash_file(self, path: Path, st: os.stat_result | None = None) -> str:
        if st is None:
            st = path.stat()
        key = stat_key(st)
        hit = self.run_cache.get(key)
        if hit is not None:
            return hit
        algo = self.algo
        digest = self.memo.memo_get(key, algo)
        if digest is None:
            if self.strategy == "fast":
                digest = sha256_bytes(f"{FAST_FORMAT}\0{st.st_size}\0{st.st_mtime_ns}".encode())
            else:
                digest = hash_stream(path, st.st_size)
                self.bytes_hashed += st.st_size
                after = path.stat()
                if stat_key(after) != key:
                    # Changed while we read it: the digest matches no stable state.
                    return self.hash_file(path, after)
            if time.time_ns() - st.st_mtime_ns > RACY_WINDOW_NS:
                self.memo.memo_put(key, algo, digest)
        self.run_cache[key] = digest
        return digest

    def hash_dir(self, root: Path) -> tuple[str, list[list[Any]]]:
        """Hash a directory: relative names, sizes and content hashes in sorted order.

        Returns the directory hash and its manifest (``[[relpath, hash, size], ...]``).
        The directory hash is the SHA-256 of :func:`manifest_bytes` of the manifest.
        """
        entries = []
        for rel, full, st in walk_files(root):
            entries.append([rel, self.hash_file(full, st), st.st_size])
        return sha256_bytes(manifest_bytes(entries)), entries


def walk_files(root: Path) -> Iterator[tuple[str, Path, os.stat_result]]:
    """Yield (posix relative path, path, stat) for every file under root, sorted.

    Symlinks are followed so the hash covers what a program reading the tree sees.
    """
    stack = [root]
    found: list[tuple[str, Path, os.stat_result]] = []
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                full = Path(e.path)
                st = e.stat(follow_symlinks=True)
                if _stat.S_ISDIR(st.st_mode):
                    stack.append(full)
                elif _stat.S_ISREG(st.st_mode):
                    found.append((full.relative_to(root).as_posix(), full, st))
    found.sort(key=lambda t: t[0])
    return iter(found)


def manifest_bytes(entries: list[list[Any]]) -> bytes:
    """Canonical bytes of a directory manifest; its SHA-256 is the directory hash."""
    body = json.dumps({"format": DIR_FORMAT, "files": entries}, separators=(",", ":"), ensure_ascii=False)
    return body.encode()


# --------------------------------------------------------------------- configs


def canonical(value: Any, *, _path: str = "config") -> Any:
    """Turn a config value into plain JSON data with one spelling per meaning.

    Equal meanings share a spelling:

    - mapping keys become strings (numbers as numbers are written) and are sorted
      when serialised, so order never matters;
    - a float with an integral value becomes an int: ``0`` and ``0.0`` hash the same
      (a model receives the original value; only the hash treats them as equal);
    - tuples become lists; enums become their value; paths and dates their string
      form; Pydantic models and dataclasses the mapping of their fields.

    Different values never share one: ``True`` differs from ``1``; a set differs
    from a list; NaN, infinities and bytes, which JSON cannot hold, become tagged
    objects (``{"$float": "nan"}``, ``{"$bytes": "01"}``); and since tags are
    mappings with one key starting with ``$``, a user key that starts with ``$`` is
    written with one more ``$``, so no user data can spell a tag. Two keys that
    become the same string (``1`` and ``"1"``) are refused, as is anything else
    without a canonical form: :class:`ConfigError` names the offending key.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isnan(value):
            return {"$float": "nan"}
        if math.isinf(value):
            return {"$float": "inf" if value > 0 else "-inf"}
        if value.is_integer() and abs(value) < 2**63:
            return int(value)
        return value
    if isinstance(value, enum.Enum):
        return canonical(value.value, _path=_path)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            sk = _canonical_key(k, _path)
            if sk in out:
                raise ConfigError(
                    f"Config keys at {_path} collide: {k!r} and another key both become {sk!r}",
                    "mapping keys are compared as strings, so 1 and '1' (or 1 and 1.0) are the same key",
                    "keep only one of them, or give them distinct names",
                )
            out[sk] = canonical(v, _path=f"{_path}.{sk}")
        return out
    if isinstance(value, (list, tuple)):
        return [canonical(v, _path=f"{_path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        items = [canonical(v, _path=f"{_path}{{}}") for v in value]
        return {"$set": sorted(items, key=dumps)}
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return {"$bytes": bytes(value).hex()}
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, decimal.Decimal):
        as_float = float(value)
        if not value.is_finite() or decimal.Decimal(as_float) == value:
            return canonical(as_float, _path=_path)  # exactly a float: spelled as that float
        return {"$decimal": str(value.normalize())}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return canonical({f.name: getattr(value, f.name) for f in dataclasses.fields(value)}, _path=_path)
    dump: Callable[..., Any] | None = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, type):
        # Python mode keeps sets as sets (JSON mode lists them in hash-seed order).
        return canonical(dump(mode="python"), _path=_path)
    if type(value).__module__ == "numpy":
        if getattr(value, "ndim", 0) == 0 and callable(getattr(value, "item", None)):
            return canonical(value.item(), _path=_path)  # a numpy scalar is its Python value
        if callable(getattr(value, "tolist", None)):
            return canonical(value.tolist(), _path=_path)  # an array is its nested list, never a scalar
    raise ConfigError(
        f"Config value at {_path} has type {type(value).__name__}, which has no canonical form",
        "config values must be plain data (numbers, strings, lists, dicts, paths, dataclasses, Pydantic models)",
        "pass a plain value, or put the object's parameters in the config instead of the object",
    )


def _canonical_key(key: Any, path: str) -> str:
    if isinstance(key, enum.Enum):
        key = key.value
    if isinstance(key, str):
        return "$" + key if key.startswith("$") else key
    if isinstance(key, bool) or key is None:
        return str(key)
    if isinstance(key, (int, float)):
        number = canonical(key, _path=path)
        if isinstance(number, dict):
            raise ConfigError(f"Config key {key!r} at {path} is not a finite number", None, "use a string key")
        return str(number)
    raise ConfigError(
        f"Config key {key!r} at {path} is a {type(key).__name__}",
        "only strings, numbers, booleans and enums make stable keys",
        "convert the key to a string",
    )


def dumps(value: Any) -> str:
    """Compact JSON with sorted keys of already-canonical data."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def loads(text: str | None) -> Any:
    """Parse stored JSON text; None stays None."""
    return json.loads(text) if text else None


def hash_canonical(value: Any, tag: str = CONFIG_FORMAT) -> str:
    """SHA-256 of a tagged canonical value."""
    return sha256_bytes(f"{tag}\0{dumps(value)}".encode())


__all__ = ["FileHasher", "canonical", "hash_canonical", "manifest_bytes", "walk_files"]
