"""Storing a directory output of many small files in one pass.

A model's output folder often holds thousands of small files. Storing each one
as :meth:`ObjectStore.put_file` does (hash through the memo, copy, read back,
``fsync``, rename, one memo write) costs several system calls and a database
write per file, and one disk flush per file dominates on a journalling file
system. :class:`Batch` keeps the same guarantees at a per-file cost close to a
plain copy:

- a small file is read once into memory (at most :data:`SMALL_FILE` bytes; a
  file that is or grows larger goes the streaming way of ``put_file``), hashed
  from that buffer and written from the same buffer, so the stored bytes are
  exactly the bytes hashed, whatever the file does meanwhile;
- new objects are written under temporary names in the store and renamed into
  place once all are written; in a durable store (``Tracker(durable=True)``) they
  are first flushed to disk together (one ``syncfs`` of the store's file system,
  or an ``fsync`` per file where that call is missing), so that after a power
  failure an object is whole or absent, as with ``put_file``;
- content the store holds already, or met twice in the same directory, is
  written once;
- the memo learns only the objects large enough that a lookup beats re-hashing
  them (``consist.objects.MEMO_MIN``), in one transaction.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from .hashing import open_regular, stat_key

if TYPE_CHECKING:
    from .objects import ObjectStore
    from .progress import ByteProgress

#: Files up to this size are stored through memory; larger ones are streamed (put_file).
SMALL_FILE = 1 << 20
T = TypeVar("T")
R = TypeVar("R")

#: From this many small files on, they are stored (and restored) on THREADS threads.
PARALLEL_MIN = 256
THREADS = 4


class Batch:
    """Objects written under temporary names, published together by :meth:`publish`."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.pending: dict[str, str] = {}  # digest -> temporary file holding its bytes
        self.sizes: dict[str, int] = {}
        self._prefix: str | None = None  # one unique temporary name, then a counter per object
        self._count = 0
        self._lock = threading.Lock()  # add_bytes is called from several threads (see add_files)

    def add_files(
        self, files: Sequence[tuple[str, int]], bar: ByteProgress | None = None
    ) -> list[tuple[str, int] | None]:
        """:meth:`add_file` of each ``(path, size seen)``, in order; many small files on a few threads.

        Reading, hashing and writing release the interpreter lock, so two cores
        store a folder of small files nearly twice as fast as one. ``bar`` advances
        by each small file stored.
        """

        def store(chunk: Sequence[tuple[str, int]]) -> list[tuple[str, int] | None]:
            out = []
            for path, seen in chunk:
                stored = self.add_file(path, seen)
                if stored is not None and bar is not None:
                    bar.advance(stored[1])
                out.append(stored)
            return out

        return in_threads(store, files)

    def add_file(self, path: str, expect: int) -> tuple[str, int] | None:
        """Store a small regular file (never following a link); (hash, size), or None if it is not small.

        ``expect`` is the size the directory walk saw. A pipe, socket or device is
        refused (ConsistError) without being read.
        """
        if expect > SMALL_FILE:
            return None
        fd = open_regular(path, follow=False)
        try:
            data = _read_upto(fd, SMALL_FILE + 1)
        finally:
            os.close(fd)
        if len(data) > SMALL_FILE:  # grew meanwhile: stream it instead
            return None
        return self.add_bytes(data), len(data)

    def add_bytes(self, data: bytes) -> str:
        """Store bytes (a file's, a link's text or a manifest); returns their hash."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        with self._lock:
            if digest in self.pending or digest in self.sizes:
                return digest  # another thread writes (or wrote) it: publish() waits for every writer
            self.sizes[digest] = len(data)
        if self.store.has(digest, len(data)):
            return digest
        with self._lock:
            if self._prefix is None:
                self._prefix = os.fspath(self.store._tmp())
            self._count += 1
            tmp = f"{self._prefix}.{self._count}"
            self.pending[digest] = tmp  # before writing: discard() removes a half-written file too
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, self.store.object_mode)  # read-only from the start: publish() only renames
        finally:
            os.close(fd)
        return digest

    def publish(self) -> None:
        """Rename every new object into place under its hash (in a durable store, flushed to disk first)."""
        if not self.pending:
            return
        if self.store.durable:
            _flush(list(self.pending.values()))
        memo: list[tuple[tuple[int, int, int, int], str]] = []
        made: set[str] = set()
        for digest, tmp in list(self.pending.items()):
            final = self.store._install(tmp, digest, memo=False, made=made, chmod=False)
            del self.pending[digest]
            if self.sizes[digest] >= self.store.memo_min:
                memo.append((stat_key(os.stat(final)), digest))
        if memo:
            algo = self.store.memo_algo
            put_many = getattr(self.store.memo, "memo_put_many", None)
            if put_many is not None:
                put_many([(key, algo, digest) for key, digest in memo])
            else:
                for key, digest in memo:
                    self.store.memo.memo_put(key, algo, digest)

    def discard(self) -> None:
        """Remove what was written and not published (after an error)."""
        for tmp in self.pending.values():
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        self.pending.clear()


def in_threads(work: Callable[[Sequence[T]], list[R]], items: Sequence[T]) -> list[R]:
    """``work(items)``, split into chunks run on :data:`THREADS` threads when there are many items.

    ``work`` maps a chunk to a list of results; they come back in the order of ``items``.
    The first exception raised by any chunk is raised once every chunk has ended.
    """
    if len(items) < PARALLEL_MIN:
        return work(items)
    from concurrent.futures import ThreadPoolExecutor

    step = -(-len(items) // (THREADS * 4))
    chunks = [items[i : i + step] for i in range(0, len(items), step)]
    with ThreadPoolExecutor(THREADS, thread_name_prefix="consist-files") as pool:
        futures = [pool.submit(work, chunk) for chunk in chunks]
    return [r for f in futures for r in f.result()]


def _read_upto(fd: int, limit: int) -> bytes:
    """Read a file from its start until its end or ``limit`` bytes, whichever comes first."""
    first = os.read(fd, limit)
    if not first or len(first) == limit:
        return first
    parts = [first]
    got = len(first)
    while got < limit:  # a short read: the file is still being written, or a network file system
        more = os.read(fd, limit - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


_SYNCFS: Any = None


def _flush(paths: list[str]) -> None:
    """Make the written files durable: one syncfs of the store's file system, else an fsync each."""
    global _SYNCFS
    if _SYNCFS is None:
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            _SYNCFS = libc.syncfs
            _SYNCFS.argtypes = [ctypes.c_int]
        except (OSError, AttributeError):
            _SYNCFS = False
    if _SYNCFS and len(paths) > 1:
        fd = os.open(paths[0], os.O_RDONLY | os.O_CLOEXEC)
        try:
            if _SYNCFS(fd) == 0:
                return
        finally:
            os.close(fd)
    for path in paths:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


__all__ = ["SMALL_FILE", "Batch", "in_threads"]
