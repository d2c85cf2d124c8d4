"""Content-addressed storage of run outputs.

Every output of a completed run is kept under ``<run_dir>/.consist/objects``,
named by its SHA-256, so a later cache hit can put back exactly the bytes that
run produced, even after the original file was overwritten or deleted.

- Objects are written to a temporary file in the store and renamed into place,
  then made read-only: a reader never sees half an object.
- Copies use ``copy_file_range``, which clones (reflinks) on file systems that
  support it (XFS, btrfs) and copies in the kernel elsewhere.
- A directory is stored as its files plus a manifest object (relative path,
  hash, size per file); the manifest's hash is the directory's hash.
- Before anything is restored the object is checked against its name (size,
  then the hash, memoised by stat so an untouched object is not re-read). A
  damaged object raises :class:`IntegrityError`; callers turn that into a
  warning and a re-execution, never into a wrong file.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import IntegrityError
from .hashing import (
    DIR_FORMAT,
    FileHasher,
    HashMemo,
    NullMemo,
    manifest_bytes,
    sha256_bytes,
    stat_key,
)
from .progress import ByteProgress

COPY_CHUNK = 64 << 20

#: What ObjectStore.check returns: an object path (a file), or (relative name,
#: object path, size) for each file of a directory.
Checked = str | list[tuple[str, str, int]]


def _copy_fd(infd: int, outfd: int, size: int, bar: ByteProgress) -> None:
    """Copy size bytes between open descriptors; copy_file_range clones where supported."""
    left = size
    try:
        while left > 0:
            n = os.copy_file_range(infd, outfd, min(left, COPY_CHUNK))
            if n == 0:
                break
            left -= n
            bar.advance(n)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
            raise
        os.lseek(infd, size - left, os.SEEK_SET)
        while chunk := os.read(infd, 1 << 20):
            os.write(outfd, chunk)  # regular files: complete writes
            bar.advance(len(chunk))


def copy_bytes(src: Path, dst: Path, size: int, label: str) -> None:
    """Copy src to a new file dst (clones where the file system supports it)."""
    with open(src, "rb") as fin, open(dst, "xb") as fout, ByteProgress(f"copying {label}", size) as bar:
        _copy_fd(fin.fileno(), fout.fileno(), size, bar)


class ObjectStore:
    """Objects named by content under ``root``; ``memo`` remembers verified hashes."""

    def __init__(self, root: Path, memo: HashMemo | None = None) -> None:
        self.root = root
        self._root_str = os.fspath(root)
        self.memo: HashMemo = memo or NullMemo()
        self._made = False

    # ---------------------------------------------------------------- layout

    def path_of(self, digest: str) -> Path:
        return Path(self._path_str(digest))

    def _path_str(self, digest: str) -> str:
        # Plain strings: a restore of many small files calls this once per file.
        algo, _, hexd = digest.partition(":")
        return f"{self._root_str}/{algo}/{hexd[:2]}/{hexd[2:]}"

    def _tmp(self) -> Path:
        tmp = self.root / "tmp"
        if not self._made:
            tmp.mkdir(parents=True, exist_ok=True)
            self._made = True
        return tmp / uuid.uuid4().hex

    def _install(self, tmp: Path, digest: str) -> Path:
        final = self.path_of(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o444)
        os.replace(tmp, final)
        # The store wrote and hashed these bytes itself and keeps them read-only,
        # so the memo may trust this stat right away (no racy-timestamp wait).
        self.memo.memo_put(stat_key(final.stat()), _object_algo(), digest)
        return final

    def has(self, digest: str) -> bool:
        return self.path_of(digest).is_file()

    # ---------------------------------------------------------------- store

    def put_file(self, src: Path, hasher: FileHasher) -> tuple[str, int]:
        """Store a file; returns (hash, size). Reads the source once when it is new."""
        before = src.stat()
        digest = hasher.hash_file(src, before)
        if self.has(digest):
            return digest, before.st_size
        tmp = self._tmp()
        try:
            copy_bytes(src, tmp, before.st_size, src.name)
            after = src.stat()
            if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (
                before.st_size,
                before.st_mtime_ns,
                before.st_ctime_ns,
            ):
                # The file changed while we copied it: hash what we actually hold.
                digest = FileHasher(NullMemo()).hash_file(tmp)
            self._install(tmp, digest)
        finally:
            tmp.unlink(missing_ok=True)
        return digest, before.st_size

    def put_bytes(self, data: bytes) -> str:
        digest = sha256_bytes(data)
        if not self.has(digest):
            tmp = self._tmp()
            try:
                tmp.write_bytes(data)
                self._install(tmp, digest)
            finally:
                tmp.unlink(missing_ok=True)
        return digest

    def put_dir(self, src: Path, hasher: FileHasher) -> tuple[str, int, list[list[Any]]]:
        """Store every file of a directory and its manifest; returns (hash, total size, manifest)."""
        from .hashing import walk_files

        entries: list[list[Any]] = []
        total = 0
        for rel, full, _st in walk_files(src):
            digest, size = self.put_file(full, hasher)
            entries.append([rel, digest, size])
            total += size
        return self.put_bytes(manifest_bytes(entries)), total, entries

    # ---------------------------------------------------------------- verify

    def verify(self, digest: str, size: int | None = None) -> Path:
        """The object's path after checking size and hash; IntegrityError if damaged or absent."""
        return Path(self._verified(digest, size))

    def _verified(self, digest: str, size: int | None = None) -> str:
        path = self._path_str(digest)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            err = IntegrityError(
                f"Stored object {digest} is missing from {self.root}",
                "the object store was pruned or files were deleted by hand",
                "nothing to do: the step runs again and stores its outputs anew",
            )
            err.missing_digest = digest
            raise err from None
        if size is not None and st.st_size != size:
            raise IntegrityError(
                f"Stored object {path} has {st.st_size} bytes, expected {size}",
                "the file was modified or truncated after it was stored",
                "nothing to do: the step runs again; run tracker.prune_store() to drop damaged objects",
            )
        algo = _object_algo()
        if self.memo.memo_get(stat_key(st), algo) == digest:
            return path
        actual = FileHasher(NullMemo()).hash_file(Path(path), st)
        if actual != digest:
            raise IntegrityError(
                f"Stored object {path} hashes to {actual}, not {digest}",
                "the file was modified after it was stored, or the disk damaged it",
                "nothing to do: the step runs again; run tracker.prune_store() to drop damaged objects",
            )
        self.memo.memo_put(stat_key(st), algo, digest)
        return path

    def read_manifest(self, digest: str) -> list[list[Any]]:
        data = self.verify(digest).read_bytes()
        body = json.loads(data)
        if body.get("format") != DIR_FORMAT:
            raise IntegrityError(f"Object {digest} is not a directory manifest")
        return body["files"]

    # ---------------------------------------------------------------- restore

    def check(self, kind: str, digest: str, size: int | None) -> Checked:
        """Verify everything a restore of this artifact will copy, before anything is written.

        Returns what :meth:`write` needs; raises IntegrityError when any object is
        missing or damaged.
        """
        if kind != "dir":
            return self._verified(digest, size)
        entries = self.read_manifest(digest)
        for rel, _, _ in entries:
            if not rel or os.path.isabs(rel) or ".." in rel.split("/"):
                raise IntegrityError(
                    f"Directory manifest {digest} lists {rel!r}, which points outside its directory",
                    "the object store was edited by hand",
                    "nothing to do: the step runs again; run tracker.prune_store() to drop the entry",
                )
        return [(rel, self._verified(fdigest, fsize), fsize) for rel, fdigest, fsize in entries]

    def write(self, checked: Checked, dest: Path) -> None:
        """Put checked bytes at ``dest``, replacing whatever is there in one rename."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(checked, str):
            tmp = dest.parent / f".{dest.name}.consist-{uuid.uuid4().hex[:8]}"
            try:
                copy_bytes(Path(checked), tmp, os.stat(checked).st_size, dest.name)
                os.chmod(tmp, 0o644 & ~_umask())
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)
            return
        build = dest.parent / f".{dest.name}.consist-{uuid.uuid4().hex[:8]}"
        build.mkdir()
        try:
            self._fill(build, checked, dest.name)
            if dest.exists() or dest.is_symlink():
                trash = dest.parent / f".{dest.name}.consist-old-{uuid.uuid4().hex[:8]}"
                os.replace(dest, trash)
                os.replace(build, dest)
                shutil.rmtree(trash, ignore_errors=True) if trash.is_dir() else trash.unlink()
            else:
                os.replace(build, dest)
        finally:
            if build.exists():
                shutil.rmtree(build, ignore_errors=True)

    @staticmethod
    def _fill(build: Path, sources: list[tuple[str, str, int]], label: str) -> None:
        """Copy verified objects into a private build directory.

        Directory outputs are often thousands of small files, where per-file Python
        overhead dominates: the build directory is not visible yet, so files are
        written under their final names (no temporary name, rename or chmod; the
        umask applies through the create mode) and each parent is made once.
        """
        base = os.fspath(build)
        made = {base}
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL  # os.open descriptors are not inherited anyway
        with ByteProgress(f"restoring {label}", sum(size for _, _, size in sources)) as bar:
            for rel, src, size in sources:
                target = os.path.join(base, rel)
                parent = os.path.dirname(target)
                if parent not in made:
                    os.makedirs(parent, exist_ok=True)
                    made.add(parent)
                infd = os.open(src, os.O_RDONLY)
                try:
                    outfd = os.open(target, flags, 0o644)
                    try:
                        _copy_fd(infd, outfd, size, bar)
                    finally:
                        os.close(outfd)
                finally:
                    os.close(infd)

    # ---------------------------------------------------------------- prune

    def all_objects(self) -> Iterable[tuple[str, Path]]:
        base = self.root / "sha256"
        if not base.is_dir():
            return
        for sub in base.iterdir():
            if sub.is_dir():
                for f in sub.iterdir():
                    yield f"sha256:{sub.name}{f.name}", f

    def remove(self, digest: str) -> int:
        path = self.path_of(digest)
        try:
            size = path.stat().st_size
            path.unlink()
            return size
        except FileNotFoundError:
            return 0

    def clear_tmp(self, older_than_s: float = 3600.0) -> None:
        """Remove temporary files left by killed processes (recent ones may be in use)."""
        import time

        tmp = self.root / "tmp"
        if not tmp.is_dir():
            return
        limit = time.time() - older_than_s
        for f in tmp.iterdir():
            try:
                if f.stat().st_mtime < limit:
                    f.unlink()
            except FileNotFoundError:
                pass


def _object_algo() -> str:
    return "sha256/object-v1"


_UMASK: int | None = None


def _umask() -> int:
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0)
        os.umask(_UMASK)
    return _UMASK


__all__ = ["ObjectStore", "copy_bytes"]
