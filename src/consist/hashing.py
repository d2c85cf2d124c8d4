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
import errno
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

from .errors import ConfigError, ConsistError, InputNotFoundError
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


# --------------------------------------------------------------------- files and directories

DIR_FORMAT_LINKS = "consist-dir-v2"  # a manifest holding symbolic links; v1 manifests hold regular files only
LINK_FORMAT = "consist-link-v1"  # the bytes of a stored symbolic link: this tag, NUL, then its target
SYMLINK = "symlink"  # a link's manifest entry: [relpath, hash of its link_bytes, target size, {"symlink": target}]


def _what(mode: int) -> str:
    """A file type in words, for error messages."""
    for test, words in (
        (_stat.S_ISFIFO, "a named pipe (FIFO)"),
        (_stat.S_ISSOCK, "a socket"),
        (_stat.S_ISCHR, "a character device"),
        (_stat.S_ISBLK, "a block device"),
        (_stat.S_ISLNK, "a symbolic link"),
        (_stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return words
    return "not a regular file"


def not_regular(path: str | os.PathLike[str], mode: int, name: str | None = None) -> ConsistError:
    """The error for a pipe, socket, device (or a link where none may be) given to be hashed or stored."""
    label = f"The input {name!r} at {os.fspath(path)}" if name else os.fspath(path)
    return ConsistError(
        f"{label} is {_what(mode)}, not a regular file",
        "only regular files, directories and (in outputs) symbolic links are hashed and stored; "
        "reading a pipe, socket or device may never end and gives different bytes every time",
        "pass a regular file or a directory; write the data to a file first",
    )


def link_loop(path: str | os.PathLike[str], name: str | None = None, back_to: str | None = None) -> ConsistError:
    """The error for a symbolic link that can never be resolved, or a directory link leading to its own parent."""
    label = f"The input {name!r} at {os.fspath(path)}" if name else os.fspath(path)
    try:
        target = f" (it points to {os.readlink(path)!r})"
    except OSError:
        target = ""
    where = f"leads back to {back_to}, which contains it" if back_to else "never resolves"
    return ConsistError(
        f"{label} is a symbolic link loop{target}: following it {where}",
        "a link points to itself, to a link pointing back to it, or to a directory above it",
        "remove the link or point it somewhere outside the tree",
    )


def open_regular(path: str | os.PathLike[str], *, follow: bool = True) -> int:
    """A read-only descriptor of a regular file; pipes, sockets and devices are refused without blocking.

    With ``follow=False`` a symbolic link is refused too (``O_NOFOLLOW``).
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        if not follow and os.path.islink(path):
            raise not_regular(path, _stat.S_IFLNK) from None
        raise link_loop(path) from None
    st = os.fstat(fd)
    if not _stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise not_regular(path, st.st_mode)
    return fd


def link_bytes(target: str) -> bytes:
    """What the store keeps for a symbolic link: a tag, then the link's target (never what it points to)."""
    return f"{LINK_FORMAT}\0".encode() + os.fsencode(target)


def link_entry(rel: str, target: str) -> list[Any]:
    """The manifest entry of a symbolic link: its hash names the stored :func:`link_bytes`, like a file's."""
    return [rel, sha256_bytes(link_bytes(target)), len(os.fsencode(target)), {SYMLINK: target}]


def hash_stream(path: Path, size: int, label: str | None = None, *, fd: int | None = None, follow: bool = True) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks into a reused buffer.

    Reads ``fd`` from its start when given; otherwise opens ``path`` with
    :func:`open_regular`, so a pipe or device is refused instead of read forever.
    """
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    own = fd is None
    if fd is None:
        fd = open_regular(path, follow=follow)
    try:
        with ByteProgress(f"hashing {label or path.name}", size) as bar:
            offset = 0
            while n := os.preadv(fd, [buf], offset):
                h.update(view[:n])
                offset += n
                bar.advance(n)
    finally:
        if own:
            os.close(fd)
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
        """Hash a file or a directory (following symbolic links).

        A missing path raises InputNotFoundError; a pipe, socket, device or a
        symbolic link loop raises ConsistError before anything is read.
        """
        p = Path(path)
        try:
            st = p.stat()
        except FileNotFoundError:
            raise InputNotFoundError(p, name) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise link_loop(p, name) from None
            raise
        if _stat.S_ISDIR(st.st_mode):
            return self.hash_dir(p)[0]
        if not _stat.S_ISREG(st.st_mode):
            raise not_regular(p, st.st_mode, name)
        return self.hash_file(p, st)

    def hash_file(
        self, path: Path, st: os.stat_result | None = None, *, fd: int | None = None, follow: bool = True
    ) -> str:
        """Hash a regular file (read from ``fd`` when given); ``follow=False`` refuses a symbolic link."""
        if st is None:
            st = os.fstat(fd) if fd is not None else (path.stat() if follow else path.lstat())
        key = stat_key(st)
        hit = self.run_cache.get(key)
        if hit is not None:
            return hit
        algo = self.algo
        # A file changed within the racy window cannot be in the memo (see below): no lookup for fresh outputs.
        fresh = time.time_ns() - st.st_mtime_ns <= RACY_WINDOW_NS
        digest = None if fresh else self.memo.memo_get(key, algo)
        if digest is None:
            if self.strategy == "fast":
                digest = sha256_bytes(f"{FAST_FORMAT}\0{st.st_size}\0{st.st_mtime_ns}".encode())
            else:
                digest = hash_stream(path, st.st_size, fd=fd, follow=follow)
                self.bytes_hashed += st.st_size
                after = os.fstat(fd) if fd is not None else (path.stat() if follow else path.lstat())
                if stat_key(after) != key:
                    # Changed while we read it: the digest matches no stable state.
                    return self.hash_file(path, after, fd=fd, follow=follow)
            if time.time_ns() - st.st_mtime_ns > RACY_WINDOW_NS:
                self.memo.memo_put(key, algo, digest)
        self.run_cache[key] = digest
        return digest

    def hash_dir(
        self,
        root: Path,
        *,
        follow_links: bool = True,
        walked: list[tuple[str, Path, os.stat_result]] | None = None,
    ) -> tuple[str, list[list[Any]]]:
        """Hash a directory: relative names, sizes and content hashes in sorted order.

        Returns the directory hash and its manifest (``[[relpath, hash, size], ...]``).
        The directory hash is the SHA-256 of :func:`manifest_bytes` of the manifest.
        With ``follow_links=False`` (how outputs are stored) a symbolic link is an
        entry of its own, ``[relpath, hash, size, {"symlink": target}]`` (see
        :func:`link_entry`), and is never followed; pipes, sockets and devices,
        which cannot be stored, are left out.
        ``walked`` is what :func:`walk_files` returned for ``root``, when the caller has it.
        """
        entries: list[list[Any]] = []
        for rel, full, st in walked if walked is not None else walk_files(root, follow_links=follow_links):
            if _stat.S_ISREG(st.st_mode):
                entries.append([rel, self.hash_file(full, st, follow=follow_links), st.st_size])
            elif _stat.S_ISLNK(st.st_mode):
                entries.append(link_entry(rel, os.readlink(full)))
        return sha256_bytes(manifest_bytes(entries)), entries


def walk_files(root: Path, *, follow_links: bool = True) -> Iterator[tuple[str, Path, os.stat_result]]:
    """Yield (posix relative path, path, stat) for every file under root, sorted.

    ``follow_links=True`` (inputs): symbolic links are followed so the hash covers
    what a program reading the tree sees. A link loop (a link that never resolves,
    or a directory link leading back to a directory that contains it), a dangling
    link, a pipe, a socket or a device raises ConsistError naming it, before
    anything is read.

    ``follow_links=False`` (outputs): nothing is followed; symbolic links, pipes,
    sockets and devices are yielded with their ``lstat`` for the caller to judge.
    """
    top = os.fspath(root)
    found: list[tuple[str, Path, os.stat_result]] = []
    if not follow_links:
        return iter([(rel, Path(full), st) for rel, full, st in walk_unfollowed(top)])
    st = os.stat(top)
    # Each directory carries the (device, inode) of the directories above it, to see a loop coming.
    stack: list[tuple[str, str, dict[tuple[int, int], str]]] = [(top, "", {(st.st_dev, st.st_ino): top})]
    while stack:
        d, prefix, above = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=True)
                except FileNotFoundError:
                    if not e.is_symlink():
                        raise
                    raise ConsistError(
                        f"{e.path} in {top} is a symbolic link to {os.readlink(e.path)!r}, which does not exist",
                        "the link's target was moved or deleted, or the link was made relative to another folder",
                        "fix or remove the link",
                    ) from None
                except OSError as exc:
                    if exc.errno == errno.ELOOP:
                        raise link_loop(e.path) from None
                    raise
                if _stat.S_ISDIR(st.st_mode):
                    key = (st.st_dev, st.st_ino)
                    if key in above:
                        raise link_loop(e.path, back_to=above[key])
                    stack.append((e.path, f"{prefix}{e.name}/", {**above, key: e.path}))
                elif _stat.S_ISREG(st.st_mode):
                    found.append((prefix + e.name, Path(e.path), st))
                else:
                    raise not_regular(e.path, st.st_mode)
    found.sort(key=lambda t: t[0])
    return iter(found)


def walk_unfollowed(top: str) -> list[tuple[str, str, os.stat_result]]:
    """``walk_files(top, follow_links=False)`` with plain string paths, as a sorted list (many small files)."""
    found: list[tuple[str, str, os.stat_result]] = []
    pending = [(top, "")]
    while pending:
        d, prefix = pending.pop()
        with os.scandir(d) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    pending.append((e.path, f"{prefix}{e.name}/"))
                else:
                    found.append((prefix + e.name, e.path, e.stat(follow_symlinks=False)))
    found.sort(key=lambda t: t[0])
    return found


def manifest_bytes(entries: list[list[Any]]) -> bytes:
    """Canonical bytes of a directory manifest; its SHA-256 is the directory hash.

    A manifest of regular files only keeps format v1, byte for byte, so directory
    hashes recorded before links were kept stay valid; one that holds a symbolic
    link entry is format v2, a format older versions refuse to read.
    """
    fmt = DIR_FORMAT_LINKS if any(len(e) > 3 for e in entries) else DIR_FORMAT
    body = json.dumps({"format": fmt, "files": entries}, separators=(",", ":"), ensure_ascii=False)
    try:
        return body.encode()
    except UnicodeEncodeError:
        for entry in entries:
            for text in (entry[0], entry[3][SYMLINK] if len(entry) > 3 else ""):
                try:
                    text.encode()
                except UnicodeEncodeError:
                    raise ConsistError(
                        f"The name or link target {text!r} (bytes {os.fsencode(text)!r}) in a directory is not UTF-8",
                        "directory manifests are UTF-8 text; a program wrote the name in another encoding",
                        "rename the file, or make the link again, with a UTF-8 name",
                    ) from None
        raise


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
