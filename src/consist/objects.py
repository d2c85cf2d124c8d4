"""Content-addressed storage of run outputs.

Every output of a completed run is kept under ``<run_dir>/.consist/objects`` (or ``store_dir``),
named by its SHA-256, so a later cache hit can put back exactly the bytes that
run produced, even after the original file was overwritten or deleted.

- The store is private to its owner: its directories are made with mode 0700
  (an existing store root is narrowed to 0700 when it is next written to), so
  nobody else can reach an object, whatever mode the output had. Objects are
  read-only (0444) inside it.
- An object is copied into a temporary file in the store, hashed as copied (a
  large copy is read back), closed and renamed into place under
  the hash of exactly those bytes: a reader never sees half an object, and a
  file that changes while it is stored is stored as the bytes that were copied,
  never as a mix or a truncated copy under an older hash. The temporary file is
  on the store's own file system, so the rename is atomic on NFS too, and no
  lock is needed: processes on several nodes storing the same content at once
  each rename a complete copy of the same bytes into place (the store may live
  on a shared file system, ``Tracker(store_dir=...)``).
- Durability matches the run index's: an object renamed into place survives the
  death of any process. With ``durable=True`` (``Tracker(durable=True)``) it is
  also flushed to disk (fsync) before the rename, so that a power failure leaves
  every object whole or absent. Without it a power failure may leave a damaged
  object; a restore verifies every byte, so the step then runs again (and stores
  the object anew) instead of restoring it.
- Copies use ``copy_file_range``, which clones (reflinks) on file systems that
  support it (XFS, btrfs) and copies in the kernel elsewhere.
- A directory is stored as its files plus a manifest object (relative path,
  hash, size per file); the manifest's hash is the directory's hash. The store
  never follows a symbolic link: a link is stored as its target text
  (:func:`link_bytes`), and inside a directory it is a manifest entry
  ``[relpath, hash, size, {"symlink": target}]`` (manifest format v2), whose hash
  names that stored text as a file entry's names its bytes. A link to
  ``/etc/passwd`` or to a host key is kept as that link, never as the file.
  Pipes, sockets and devices cannot be stored: they are left out with a warning.
- Modes are not part of an object (equal bytes are one object); the producing
  run's artifact records them (``mode``/``modes`` in its meta, only where they
  differ from 0644), and a restore gives each file that mode, less the umask.
- A restore is verified, never answered from metadata: :meth:`ObjectStore.check`
  looks at every object's type and size before anything is written, then each
  object is hashed as it is copied beside its destination, and the copy is
  renamed into place only when the hash matched. A mismatch raises :class:`IntegrityError` (callers
  turn it into a warning and a re-execution, never into a wrong file), removes
  the damaged object so the next store of that content repairs it, and leaves
  the destination as it was. Anything else at an object's place (a directory,
  a link) is damage too, and the next store replaces it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import stat as _stat
import uuid
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import ConsistError, ConsistWarning, IntegrityError
from .hashing import (
    DIR_FORMAT,
    DIR_FORMAT_LINKS,
    LINK_FORMAT,
    SYMLINK,
    FileHasher,
    HashMemo,
    NullMemo,
    link_bytes,
    link_entry,
    manifest_bytes,
    not_regular,
    open_regular,
    sha256_bytes,
    stat_key,
    walk_files,
    walk_unfollowed,
)
from .progress import ByteProgress

COPY_CHUNK = 64 << 20
READ_CHUNK = 1 << 20
#: Objects from this size on are remembered in the hash memo when stored; re-hashing smaller ones is cheaper.
MEMO_MIN = 64 << 10
ORDINARY_MODE = 0o644  # what a restore gives a file without a recorded mode; never recorded itself
STORE_DIR_MODE = 0o700
OBJECT_MODE = 0o444
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_NO_KERNEL_COPY = (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM)


class Source(str):
    """A checked object: its path (the string), the hash its bytes must have, their size, the mode to restore."""

    digest: str
    size: int
    mode: int | None

    def __new__(cls, path: str, digest: str, size: int, mode: int | None = None) -> Source:
        self = super().__new__(cls, path)
        self.digest, self.size, self.mode = digest, size, mode
        return self


class Link(str):
    """A checked symbolic link to restore: the string is its target, written as is and never followed."""


class Manifest(list):  # type: ignore[type-arg]
    """The entries of a stored directory, with ``modes``: each stored file's mode by relative path."""

    modes: dict[str, int]


#: What ObjectStore.check returns: an object (a file) or a link, or (relative name,
#: object or link, size) for each entry of a directory.
Checked = str | list[tuple[str, str, int]]


# ------------------------------------------------------------------------- copying


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
        if exc.errno not in _NO_KERNEL_COPY:
            raise
        os.lseek(infd, size - left, os.SEEK_SET)
        while chunk := os.read(infd, 1 << 20):
            os.write(outfd, chunk)  # regular files: complete writes
            bar.advance(len(chunk))


def copy_bytes(src: Path, dst: Path, size: int, label: str) -> None:
    """Copy src to a new file dst (clones where the file system supports it)."""
    with open(src, "rb") as fin, open(dst, "xb") as fout, ByteProgress(f"copying {label}", size) as bar:
        _copy_fd(fin.fileno(), fout.fileno(), size, bar)


def _copy_hashed(
    infd: int, outfd: int, size: int | None, bar: ByteProgress, *, expect: int, readback: bool
) -> tuple[str, int]:
    """Copy from the start of infd into the empty outfd, hashing the bytes copied.

    Copies ``size`` bytes (fewer if infd ends first), or up to the end of infd,
    however far it has grown, when ``size`` is None. Returns the SHA-256 (hex) of
    the bytes copied and their count. Up to ``expect`` = 1 MiB the bytes go through
    memory: one read, hashed, and written from the same buffer. Larger files are
    copied by ``copy_file_range`` (a clone where the file system can), chunk by
    chunk, and each chunk is hashed after it is copied: read back from outfd with
    ``readback`` (the copy itself: right even if infd is being rewritten
    meanwhile), else from infd (a read-only object, whose pages are likely cached).
    """
    h = hashlib.sha256()
    done = 0
    kernel = expect > READ_CHUNK
    while size is None or done < size:
        want = COPY_CHUNK if size is None else min(COPY_CHUNK, size - done)
        if kernel:
            try:
                n = os.copy_file_range(infd, outfd, want, done, done)
            except OSError as exc:
                if exc.errno not in _NO_KERNEL_COPY:
                    raise
                kernel = False
                continue
            if n == 0:
                break
            offset, left, fd = done, n, outfd if readback else infd
            while left > 0:
                data = os.pread(fd, min(left, READ_CHUNK), offset)
                if not data:
                    raise OSError(errno.EIO, "a copied range reads back shorter than it was copied")
                h.update(data)
                offset += len(data)
                left -= len(data)
        else:
            data = os.pread(infd, min(want, READ_CHUNK), done)
            n = len(data)
            if n == 0:
                break
            h.update(data)
            written = 0
            while written < n:
                written += os.pwrite(outfd, data[written:], done + written)
        done += n
        bar.advance(n)
    return h.hexdigest(), done


def _remove(path: str | os.PathLike[str]) -> None:
    """Remove a file, a link (never what it points to) or a directory tree; absent is fine."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if _stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _private_dir(path: Path) -> None:
    """Make a store directory with mode 0700; narrow an existing one of ours that others could enter."""
    try:
        os.mkdir(path, STORE_DIR_MODE)
    except FileExistsError:
        st = os.lstat(path)
        if _stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and st.st_mode & 0o077:
            os.chmod(path, _stat.S_IMODE(st.st_mode) & ~0o077)


# ------------------------------------------------------------------------- modes


def _perm(mode: int) -> int:
    """Permission bits worth keeping: read, write, execute; never set-id or sticky bits."""
    return _stat.S_IMODE(mode) & 0o777


def _octal(mode: int) -> str:
    return f"{mode:04o}"


def mode_meta(mode: int) -> dict[str, str]:
    """Artifact meta recording a file's mode: ``{"mode": "0600"}``, or nothing for the ordinary 0644."""
    perm = _perm(mode)
    return {} if perm == ORDINARY_MODE else {"mode": _octal(perm)}


def modes_meta(modes: Mapping[str, int]) -> dict[str, Any]:
    """Artifact meta recording the modes of a directory's files: the usual one and the exceptions.

    ``{"mode": "0600"}`` when most files have a mode other than 0644, and
    ``{"modes": {relpath: "0755", ...}}`` for the files that differ from it.
    """
    perms = {rel: _perm(m) for rel, m in modes.items()}
    if not perms:
        return {}
    counts = Counter(perms.values())
    usual = max(counts, key=lambda m: (counts[m], m == ORDINARY_MODE))
    out: dict[str, Any] = {} if usual == ORDINARY_MODE else {"mode": _octal(usual)}
    odd = {rel: _octal(m) for rel, m in perms.items() if m != usual}
    if odd:
        out["modes"] = odd
    return out


def _parse_mode(value: Any) -> int | None:
    if isinstance(value, str) and re.fullmatch(r"[0-7]{3,4}", value):
        return int(value, 8) & 0o777
    return None


def _recorded_modes(meta: Any) -> tuple[int | None, Mapping[str, Any]]:
    """(usual mode, exceptions by relative path) from an artifact's meta (JSON text or a dict)."""
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except ValueError:
            return None, {}
    if not isinstance(meta, Mapping):
        return None, {}
    odd = meta.get("modes")
    return _parse_mode(meta.get("mode")), odd if isinstance(odd, Mapping) else {}


def _restored_perm(mode: int | None) -> int:
    """The mode a restore gives: the recorded one (or 0644) less the process umask, as a new file would get."""
    return (ORDINARY_MODE if mode is None else mode) & ~_umask() & 0o777


# ------------------------------------------------------------------------- links and manifests


def link_digest(path: Path) -> tuple[str, int]:
    """(hash, size) of a symbolic link as the store keeps it: its target text, never what it points to."""
    target = os.readlink(path)
    return sha256_bytes(link_bytes(target)), len(os.fsencode(target))


def file_entries(manifest: Iterable[list[Any]]) -> list[list[Any]]:
    """The manifest entries that are regular files (links left out)."""
    return [e for e in manifest if len(e) == 3]


def manifest_size(manifest: Iterable[list[Any]]) -> int:
    """Total bytes of a directory's regular files."""
    return sum(e[2] for e in manifest if len(e) == 3)


def place(path: Path) -> Path:
    """The absolute path of ``path`` itself: its parents resolved, a link at the end left unfollowed."""
    path = Path(path)
    return path.parent.resolve() / path.name if path.is_symlink() else path.resolve()


def _damaged(problem: str) -> IntegrityError:
    return IntegrityError(
        problem,
        "the object store was edited by hand, or its files were damaged",
        "nothing to do: the step runs again; run tracker.prune_store(verify=True) to drop damaged objects",
    )


# ------------------------------------------------------------------------- the store


class Staged:
    """A restore copied and verified under a hidden name beside its destination; not visible until published."""

    def __init__(self, tmp: Path, dest: Path, is_dir: bool) -> None:
        self.tmp, self.dest, self.is_dir = tmp, dest, is_dir
        self.done = False

    def publish(self) -> None:
        """Put the staged copy at its destination, replacing whatever is there (a link is replaced, not followed)."""
        dest = self.dest
        try:
            st: os.stat_result | None = os.lstat(dest)
        except FileNotFoundError:
            st = None
        if st is None or not (self.is_dir or _stat.S_ISDIR(st.st_mode)):
            os.replace(self.tmp, dest)  # a file or a link replaces a file or a link in one rename
            self.done = True
            return
        trash = dest.parent / f".{dest.name}.consist-old-{uuid.uuid4().hex[:8]}"
        os.replace(dest, trash)
        try:
            os.replace(self.tmp, dest)
        except BaseException:
            os.replace(trash, dest)
            raise
        self.done = True
        _remove(trash)

    def discard(self) -> None:
        """Remove the staged copy unless it was published."""
        if not self.done:
            _remove(self.tmp)


class ObjectStore:
    """Objects named by content under ``root``; ``memo`` remembers verified hashes."""

    #: The mode of every object; the hash memo's name for the hash of a stored object.
    object_mode = OBJECT_MODE
    memo_algo = "sha256/object-v1"
    memo_min = MEMO_MIN

    def __init__(self, root: Path, memo: HashMemo | None = None, *, durable: bool = False) -> None:
        self.root = root
        self.durable = durable  # fsync every object before it is renamed into place
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
        if not self._made:
            self.root.parent.mkdir(parents=True, exist_ok=True)
            _private_dir(self.root)
            _private_dir(self.root / "tmp")
            self._made = True
        return self.root / "tmp" / uuid.uuid4().hex

    def _install(
        self, tmp: str | Path, digest: str, *, memo: bool = True, made: set[str] | None = None, chmod: bool = True
    ) -> str:
        """Rename a complete temporary file into place under its hash; returns the object's path.

        ``memo=False`` leaves the hash memo alone (the caller remembers in bulk, or not at all);
        ``made`` collects the shard directories known to exist (a caller storing many objects);
        ``chmod=False``: the temporary file is read-only already.
        """
        final = self._path_str(digest)
        shard = final.rpartition("/")[0]
        if made is None or shard not in made:
            if not os.path.isdir(shard):
                _private_dir(Path(shard).parent)
                _private_dir(Path(shard))
            if made is not None:
                made.add(shard)
        if chmod:
            os.chmod(tmp, OBJECT_MODE)
        try:
            os.replace(tmp, final)
        except OSError as exc:
            if exc.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise
            # A directory sits where this object goes: damage. Move it out of the way, then install.
            aside = self._tmp()
            os.replace(final, aside)
            _remove(aside)
            os.replace(tmp, final)
        if memo:
            # The store wrote and hashed these bytes itself and keeps them read-only,
            # so the memo may trust this stat right away (no racy-timestamp wait).
            st = os.stat(final)
            if st.st_size >= MEMO_MIN:  # re-hashing a smaller object costs less than remembering it
                self.memo.memo_put(stat_key(st), _object_algo(), digest)
        return final

    def has(self, digest: str, size: int | None = None) -> bool:
        """Whether a regular file (of ``size`` bytes, when given) is stored under this hash.

        A directory or a link at an object's place is not an object, nor is a file
        of the wrong size: storing that content again replaces it.
        """
        try:
            st = os.lstat(self._path_str(digest))
        except OSError:
            return False
        return _stat.S_ISREG(st.st_mode) and (size is None or st.st_size == size)

    # ---------------------------------------------------------------- store

    def put_file(self, src: Path, hasher: FileHasher) -> tuple[str, int]:
        """Store a regular file; returns (hash, size) of exactly the bytes stored.

        ``src`` is never followed if it is a symbolic link, and a pipe, socket or
        device is refused (ConsistError) without being opened for reading. The
        file is hashed through the memo first, so known content is not copied;
        new content is copied up to its end, however far it grew meanwhile, and
        stored under the hash of what the copy holds.
        """
        fd = open_regular(src, follow=False)
        try:
            st = os.fstat(fd)
            digest = hasher.hash_file(src, st, fd=fd)
            if self.has(digest, st.st_size):
                return digest, st.st_size
            tmp = self._tmp()
            try:
                outfd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                try:
                    with ByteProgress(f"copying {src.name}", st.st_size) as bar:
                        hexd, size = _copy_hashed(fd, outfd, None, bar, expect=st.st_size, readback=True)
                    if self.durable:
                        # On disk before the rename makes it visible: after a power failure (or on a network
                        # file system whose server restarts) an object is whole or absent, never a stub.
                        os.fsync(outfd)
                finally:
                    os.close(outfd)
                digest = f"sha256:{hexd}"
                if not self.has(digest, size):
                    self._install(tmp, digest)
            finally:
                tmp.unlink(missing_ok=True)
            return digest, size
        finally:
            os.close(fd)

    def put_bytes(self, data: bytes) -> str:
        digest = sha256_bytes(data)
        if not self.has(digest):
            tmp = self._tmp()
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    if self.durable:
                        f.flush()
                        os.fsync(f.fileno())
                self._install(tmp, digest)
            finally:
                tmp.unlink(missing_ok=True)
        return digest

    def put_link(self, path: Path) -> tuple[str, int]:
        """Store a symbolic link as its target text (never what it points to); returns (hash, target size)."""
        target = os.readlink(path)
        return self.put_bytes(link_bytes(target)), len(os.fsencode(target))

    def put_dir(self, src: Path, hasher: FileHasher) -> tuple[str, int, list[list[Any]]]:
        """Store every file of a directory and its manifest; returns (hash, total size, manifest).

        Nothing is followed: a symbolic link is stored as its target text and
        listed as ``[relpath, hash, size, {"symlink": target}]``, whatever it points
        to. Pipes, sockets and devices are left out with a ConsistWarning. The
        manifest returned is a :class:`Manifest`: its ``modes`` give each file's mode.
        Small files are stored together (see :mod:`consist.dirstore`), large ones
        one at a time; nothing is visible in the store before its bytes are on disk.
        """
        from .dirstore import Batch

        entries = Manifest()
        entries.modes = modes = {}
        total = 0
        walked = walk_unfollowed(os.fspath(src))
        batch = Batch(self)
        try:
            with ByteProgress(f"storing {src.name}", sum(st.st_size for _, _, st in walked)) as bar:
                regular = [(full, st.st_size) for _, full, st in walked if _stat.S_ISREG(st.st_mode)]
                small = iter(batch.add_files(regular, bar))
                for rel, full, st in walked:
                    if _stat.S_ISLNK(st.st_mode):
                        target = os.readlink(full)
                        batch.add_bytes(link_bytes(target))
                        entries.append(link_entry(rel, target))
                    elif _stat.S_ISREG(st.st_mode):
                        stored = next(small)
                        if stored is None:  # large: streamed on its own
                            stored = self.put_file(Path(full), hasher)
                            bar.advance(stored[1])
                        digest, size = stored
                        entries.append([rel, digest, size])
                        total += size
                        modes[rel] = st.st_mode
                    else:
                        warnings.warn(
                            f"{not_regular(full, st.st_mode).problem}: the object store keeps regular files, "
                            "directories and symbolic links only, so it is left out of the stored directory",
                            ConsistWarning,
                            stacklevel=2,
                        )
                digest = batch.add_bytes(manifest_bytes(entries))
                batch.publish()
        finally:
            batch.discard()
        return digest, total, entries

    # ---------------------------------------------------------------- verify

    def verify(self, digest: str, size: int | None = None) -> Path:
        """The object's path after checking size and hash; IntegrityError if damaged or absent."""
        return Path(self._verified(digest, size))

    def _missing(self, digest: str) -> IntegrityError:
        err = IntegrityError(
            f"Stored object {digest} is missing from {self.root}",
            "the object store was pruned or files were deleted by hand",
            "nothing to do: the step runs again and stores its outputs anew",
        )
        err.missing_digest = digest
        return err

    def _stat_object(self, digest: str, size: int | None) -> tuple[str, os.stat_result]:
        """An object's path and lstat: present, a regular file, of the expected size; else IntegrityError."""
        if not _DIGEST.fullmatch(digest):
            raise _damaged(f"{digest!r} is not the name of a stored object")
        path = self._path_str(digest)
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            raise self._missing(digest) from None
        if not _stat.S_ISREG(st.st_mode):
            raise _damaged(f"Stored object {not_regular(path, st.st_mode).problem}")
        if size is not None and st.st_size != size:  # storing this content again replaces it (see has)
            raise IntegrityError(
                f"Stored object {path} has {st.st_size} bytes, expected {size}",
                "the file was modified or truncated after it was stored",
                "nothing to do: the step runs again; run tracker.prune_store() to drop damaged objects",
            )
        return path, st

    def _verified(self, digest: str, size: int | None = None) -> str:
        path, st = self._stat_object(digest, size)
        algo = _object_algo()
        if self.memo.memo_get(stat_key(st), algo) == digest:
            return path
        actual = FileHasher(NullMemo()).hash_file(Path(path), st, follow=False)
        if actual != digest:
            raise IntegrityError(
                f"Stored object {path} hashes to {actual}, not {digest}",
                "the file was modified after it was stored, or the disk damaged it",
                "nothing to do: the step runs again; run tracker.prune_store() to drop damaged objects",
            )
        self.memo.memo_put(stat_key(st), algo, digest)
        return path

    def _read_verified(self, digest: str) -> bytes:
        """A small object's bytes, hashed as read (never from the memo)."""
        path, _ = self._stat_object(digest, None)
        try:
            fd = open_regular(path, follow=False)
        except ConsistError as exc:
            raise _damaged(f"Stored object {exc.problem}") from None
        try:
            st = os.fstat(fd)
            with os.fdopen(os.dup(fd), "rb") as f:
                data = f.read()
        finally:
            os.close(fd)
        actual = sha256_bytes(data)
        if actual != digest:
            self._drop(path, st)
            raise IntegrityError(
                f"Stored object {path} hashes to {actual}, not {digest}",
                "the file was modified after it was stored, or the disk damaged it",
                "nothing to do: the step runs again and stores its outputs anew",
            )
        return data

    def read_manifest(self, digest: str) -> list[list[Any]]:
        data = self._read_verified(digest)
        try:
            body = json.loads(data)
        except ValueError:
            body = None
        fmt = body.get("format") if isinstance(body, dict) else None
        if fmt not in (DIR_FORMAT, DIR_FORMAT_LINKS) or not isinstance(body.get("files"), list):
            raise IntegrityError(f"Object {digest} is not a directory manifest")
        files = body["files"]
        if fmt == DIR_FORMAT and any(isinstance(e, list) and len(e) != 3 for e in files):
            raise _damaged(f"Directory manifest {digest} of format {DIR_FORMAT} lists a symbolic link")
        return files

    def _drop(self, path: str, st: os.stat_result) -> None:
        """Remove a damaged object of this store (if it is still the file found damaged), so a store repairs it."""
        if not path.startswith(self._root_str + os.sep):
            return
        try:
            now = os.lstat(path)
            if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                os.unlink(path)
        except OSError:
            pass

    # ---------------------------------------------------------------- restore

    def check(self, kind: str, digest: str, size: int | None, meta: Any = None) -> Checked:
        """Check everything a restore of this artifact will copy, before anything is written.

        Every object must be present, a regular file and of its recorded size; a
        directory manifest and a stored link are read and hashed here. The bytes
        of file objects are hashed by :meth:`write` as they are copied. ``meta`` is
        the artifact's meta (the recorded modes). Returns what :meth:`write`
        needs; raises IntegrityError when anything is missing or damaged.
        """
        usual, odd = _recorded_modes(meta)
        if kind == "link":
            return self._link(digest, size)
        if kind != "dir":
            path, st = self._stat_object(digest, size)
            return Source(path, digest, st.st_size, usual)
        entries = self.read_manifest(digest)
        names: set[str] = set()
        for entry in entries:
            rel = entry[0] if isinstance(entry, list) and len(entry) in (3, 4) else None
            if not isinstance(rel, str):
                raise _damaged(f"Directory manifest {digest} holds a malformed entry {entry!r}")
            if not rel or os.path.isabs(rel) or ".." in rel.split("/"):
                raise IntegrityError(
                    f"Directory manifest {digest} lists {rel!r}, which points outside its directory",
                    "the object store was edited by hand",
                    "nothing to do: the step runs again; run tracker.prune_store() to drop the entry",
                )
            if "" in rel.split("/") or "." in rel.split("/") or "\0" in rel or rel in names:
                raise _damaged(f"Directory manifest {digest} lists {rel!r} twice or not as a plain relative path")
            names.add(rel)
        out: list[tuple[str, str, int]] = []
        for entry in entries:
            rel, fdigest, fsize = entry[:3]
            parts = rel.split("/")
            for i in range(1, len(parts)):
                if "/".join(parts[:i]) in names:
                    raise _damaged(f"Directory manifest {digest} lists {rel!r} inside the file or link {parts[0]!r}")
            if len(entry) == 4:  # a symbolic link, restored from its target text in the (verified) manifest
                target = entry[3].get(SYMLINK) if isinstance(entry[3], dict) else None
                if not isinstance(target, str) or not target or "\0" in target or link_entry(rel, target) != entry:
                    raise _damaged(f"Directory manifest {digest} lists a malformed link {rel!r}")
                out.append((rel, Link(target), 0))
                continue
            if not isinstance(fdigest, str) or not isinstance(fsize, int) or isinstance(fsize, bool) or fsize < 0:
                raise _damaged(f"Directory manifest {digest} holds a malformed entry for {rel!r}")
            path, st = self._stat_object(fdigest, fsize)
            mode = _parse_mode(odd[rel]) if rel in odd else usual
            out.append((rel, Source(path, fdigest, fsize, mode), fsize))
        return out

    def _link(self, digest: str, size: int | None) -> Link:
        data = self._read_verified(digest)
        tag = f"{LINK_FORMAT}\0".encode()
        target = data[len(tag) :]
        if not data.startswith(tag) or not target or b"\0" in target:
            raise _damaged(f"Object {digest} is not a stored symbolic link")
        if size is not None and len(target) != size:
            raise _damaged(f"Stored link {digest} has a target of {len(target)} bytes, expected {size}")
        return Link(os.fsdecode(target))

    def write(self, checked: Checked, dest: Path) -> None:
        """Put checked bytes at ``dest``, replacing whatever is there in one rename (see :meth:`stage`)."""
        staged = self.stage(checked, dest)
        try:
            staged.publish()
        finally:
            staged.discard()

    def stage(self, checked: Checked, dest: Path) -> Staged:
        """Copy and verify a restore under a hidden name beside ``dest``; publish() makes it visible.

        Each object is hashed as it is copied: one whose bytes do not match the hash
        it is stored under raises IntegrityError, and nothing is left behind.
        """
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".{dest.name}.consist-{uuid.uuid4().hex[:8]}"
        is_dir = not isinstance(checked, str)
        try:
            if isinstance(checked, Link):
                os.symlink(checked, tmp)
            elif isinstance(checked, str):
                with ByteProgress(f"copying {dest.name}", getattr(checked, "size", None)) as bar:
                    self._restore_file(checked, os.fspath(tmp), None, bar)
            else:
                os.mkdir(tmp)
                self._fill(tmp, checked, dest.name)
        except BaseException:
            _remove(tmp)
            raise
        return Staged(tmp, dest, is_dir)

    def _restore_file(self, src: str, target: str, size: int | None, bar: ByteProgress) -> None:
        """Copy one object to the new file ``target`` with its mode; IntegrityError unless the copy hashes right."""
        infd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            st = os.fstat(infd)
            if not _stat.S_ISREG(st.st_mode):
                raise _damaged(f"Stored object {not_regular(src, st.st_mode).problem}")
            digest = getattr(src, "digest", None) or _digest_at(src)
            if size is None:
                size = getattr(src, "size", st.st_size)
            mode = getattr(src, "mode", None)
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            outfd = os.open(target, flags, ORDINARY_MODE if mode is None else mode)
            try:
                hexd, copied = _copy_hashed(infd, outfd, size, bar, expect=size, readback=False)
            finally:
                os.close(outfd)
            if copied != size or f"sha256:{hexd}" != digest:
                self._drop(src, st)
                problem = (
                    f"Stored object {src} has {copied} bytes, expected {size}"
                    if copied != size
                    else f"Stored object {src} hashes to sha256:{hexd}, not {digest}"
                )
                raise IntegrityError(
                    problem,
                    "the file was modified after it was stored, or the disk damaged it",
                    "nothing to do: the step runs again and stores its outputs anew",
                )
        finally:
            os.close(infd)

    def _fill(self, build: Path, sources: list[tuple[str, str, int]], label: str) -> None:
        """Copy checked objects into a private build directory, each one verified.

        Directory outputs are often thousands of small files, where per-file Python
        overhead dominates: the build directory is not visible yet, so files are
        written under their final names (no temporary name or rename; each file is
        created with its recorded mode, the umask applies), each parent is made once,
        and many files are copied on a few threads (:func:`consist.dirstore.in_threads`).
        """
        from .dirstore import in_threads

        base = os.fspath(build)
        made = {base}
        files: list[tuple[str, str, int]] = []
        for rel, src, size in sources:  # folders and links first, in order; then the files
            target = os.path.join(base, rel)
            parent = os.path.dirname(target)
            if parent not in made:
                os.makedirs(parent, exist_ok=True)
                made.add(parent)
            if isinstance(src, Link):
                os.symlink(src, target)
            else:
                files.append((src, target, size))
        with ByteProgress(f"restoring {label}", sum(size for _, _, size in files)) as bar:

            def restore(chunk: list[tuple[str, str, int]]) -> list[IntegrityError | None]:
                return [self._restore_checked(src, target, size, bar) for src, target, size in chunk]

            # Every damaged object is found and dropped now, then the first damage is raised.
            damage = next((d for d in in_threads(restore, files) if d is not None), None)
        if damage is not None:
            raise damage

    def _restore_checked(self, src: str, target: str, size: int, bar: ByteProgress) -> IntegrityError | None:
        try:
            self._restore_file(src, target, size, bar)
        except IntegrityError as exc:
            return exc
        return None

    # ---------------------------------------------------------------- prune

    def all_objects(self) -> Iterable[tuple[str, Path]]:
        base = self.root / "sha256"
        if not base.is_dir():
            return
        for sub in base.iterdir():
            if sub.is_dir() and not sub.is_symlink():
                for f in sub.iterdir():
                    yield f"sha256:{sub.name}{f.name}", f

    def remove(self, digest: str) -> int:
        path = self.path_of(digest)
        try:
            size = path.lstat().st_size
        except FileNotFoundError:
            return 0
        _remove(path)
        return size

    def clear_tmp(self, older_than_s: float = 3600.0) -> None:
        """Remove temporary files left by killed processes (recent ones may be in use)."""
        import time

        tmp = self.root / "tmp"
        if not tmp.is_dir():
            return
        limit = time.time() - older_than_s
        for f in tmp.iterdir():
            try:
                if f.lstat().st_mtime < limit:
                    _remove(f)
            except FileNotFoundError:
                pass


def restore_all(items: Iterable[tuple[ObjectStore, Checked, Path]]) -> None:
    """Restore several checked artifacts: all are copied and verified before any is published.

    A damaged object does not stop the others from being verified (each damaged
    object is dropped, so the re-execution stores all of them again); then the
    first error is raised and nothing is published.
    """
    staged: list[Staged] = []
    damage: IntegrityError | None = None
    try:
        for store, checked, dest in items:
            try:
                staged.append(store.stage(checked, dest))
            except IntegrityError as exc:
                damage = damage or exc
        if damage is not None:
            raise damage
        for s in staged:
            s.publish()
    finally:
        for s in staged:
            s.discard()


def holds(kind: str, digest: str, size: int | None, meta: Any, dest: Path, hasher: FileHasher) -> bool:
    """True when ``dest`` already is what a restore of the artifact would make: kind, content and modes.

    A symbolic link at ``dest`` holds only a link artifact with the same target:
    a file or directory artifact is never read through a link there (a restore
    replaces the link instead).
    """
    try:
        st = os.lstat(dest)
    except (FileNotFoundError, NotADirectoryError):
        return False
    if kind == "link":
        return _stat.S_ISLNK(st.st_mode) and link_digest(dest)[0] == digest
    usual, odd = _recorded_modes(meta)
    try:
        if kind == "dir":
            if not _stat.S_ISDIR(st.st_mode):
                return False
            walked = list(walk_files(dest, follow_links=False))
            if hasher.hash_dir(dest, follow_links=False, walked=walked)[0] != digest:
                return False
            return all(
                _perm(fst.st_mode) == _restored_perm(_parse_mode(odd[rel]) if rel in odd else usual)
                for rel, _, fst in walked
                if _stat.S_ISREG(fst.st_mode)
            )
        return (
            _stat.S_ISREG(st.st_mode)
            and st.st_size == size
            and _perm(st.st_mode) == _restored_perm(usual)
            and hasher.hash_file(dest, st, follow=False) == digest
        )
    except ConsistError:  # changed into something that cannot be read meanwhile: restore it
        return False


def _digest_at(path: str) -> str:
    """The hash an object path names (``<root>/<algo>/<2 hex>/<62 hex>``)."""
    head, shard, rest = path.rsplit("/", 2)
    digest = f"{os.path.basename(head)}:{shard}{rest}"
    if not _DIGEST.fullmatch(digest):
        raise _damaged(f"{path} is not the path of a stored object")
    return digest


def _object_algo() -> str:
    return ObjectStore.memo_algo


_UMASK: int | None = None


def _umask() -> int:
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0)
        os.umask(_UMASK)
    return _UMASK


__all__ = ["Link", "Manifest", "ObjectStore", "Source", "Staged", "copy_bytes", "holds", "restore_all"]
