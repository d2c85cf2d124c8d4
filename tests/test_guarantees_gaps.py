"""Guarantees of the hashing memo, the object store and the mount checks that no other test pins.

A linked input is memoised under its target's stat and a freshly written file not at
all; every byte copied into the store is hashed, from the copy itself; restored files
and what already holds an artifact follow the recorded modes; a restore never writes
through a name planted beside its destination and puts an old directory back when
publishing fails; the store leaves directories of other users and links alone; an
unresolvable home directory does not end the list of homes refused as mounts.
Real files throughout, the memo is a real run index.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import stat
import time
import uuid
from pathlib import Path

import pytest

import consist
from consist import hashing as H
from consist.containers import mounts as M
from consist.objects import READ_CHUNK, ObjectStore, holds, mode_meta, modes_meta
from consist.restoring import _holds
from consist.store.sqlite import SQLiteIndex


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def index(tmp_path: Path):
    ix = SQLiteIndex(tmp_path / "ix" / "index.sqlite")
    yield ix
    ix.close()


@pytest.fixture
def store(tmp_path: Path, index: SQLiteIndex) -> ObjectStore:
    return ObjectStore(tmp_path / "objects", memo=index)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def process_umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".consist-" in p.name)


def set_mtime(path: Path, seconds_ago: float, *, follow: bool = True) -> None:
    when = time.time_ns() - int(seconds_ago * 1e9)
    os.utime(path, ns=(when, when), follow_symlinks=follow)


# --------------------------------------------------------------------- the hash memo


def test_an_input_reached_through_a_link_gets_a_new_hash_when_the_target_changes(
    tmp_path: Path, index: SQLiteIndex
) -> None:
    target = tmp_path / "data-v1.csv"
    target.write_bytes(b"a,b\n1,2\n")
    set_mtime(target, 60)
    link = tmp_path / "current.csv"
    link.symlink_to(target.name)
    set_mtime(link, 60, follow=False)  # the link itself is old: outside the racy window
    assert H.FileHasher(index).hash_path(link) == sha(b"a,b\n1,2\n")
    target.write_bytes(b"a,b\n3,4\n")  # the target changes; the link does not
    assert H.FileHasher(index).hash_path(link) == sha(b"a,b\n3,4\n")  # a later run sees the new content
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "current.csv").symlink_to(target)
    set_mtime(tree / "current.csv", 60, follow=False)
    first = H.FileHasher(index).hash_dir(tree)[1]
    assert first == [["current.csv", sha(b"a,b\n3,4\n"), 8]]
    target.write_bytes(b"a,b\n5,6\n")
    assert H.FileHasher(index).hash_dir(tree)[1] == [["current.csv", sha(b"a,b\n5,6\n"), 8]]


def test_a_file_modified_within_the_last_second_is_not_memoised(tmp_path: Path, index: SQLiteIndex) -> None:
    hasher = H.FileHasher(index)
    fresh = tmp_path / "fresh.csv"
    fresh.write_bytes(b"just written")
    assert hasher.hash_path(fresh) == sha(b"just written")
    assert index.memo_get(H.stat_key(fresh.stat()), hasher.algo) is None  # a same-tick rewrite could go unseen
    aged = tmp_path / "aged.csv"
    aged.write_bytes(b"written a while ago")
    set_mtime(aged, 10)
    assert hasher.hash_path(aged) == sha(b"written a while ago")
    assert index.memo_get(H.stat_key(aged.stat()), hasher.algo) == sha(b"written a while ago")


# --------------------------------------------------------------------- storing: every byte, as copied


@pytest.mark.parametrize(
    "size", [READ_CHUNK + 1, READ_CHUNK + 2, 2 * READ_CHUNK - 1, 2 * READ_CHUNK, 2 * READ_CHUNK + 1]
)
def test_every_copied_byte_is_hashed(tmp_path: Path, store: ObjectStore, size: int) -> None:
    data = os.urandom(size)  # above the in-memory limit: copied by the kernel, read back piece by piece
    src = tmp_path / "large.bin"
    src.write_bytes(data)
    digest, stored = store.put_file(src, H.FileHasher(H.NullMemo()))
    obj = store.path_of(digest).read_bytes()
    assert (digest, stored) == (sha(data), size) and obj == data and sha(obj) == digest
    # A restore of such an object hashes every byte it copies too (one left out would look like damage).
    other = store.put_bytes(data[::-1])
    dest = tmp_path / "restored.bin"
    store.write(store.check("file", other, size), dest)
    assert dest.read_bytes() == data[::-1]


def test_a_file_rewritten_while_it_is_stored_is_stored_as_the_bytes_copied(
    tmp_path: Path, store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(2 * READ_CHUNK + 5)
    src = tmp_path / "busy.bin"
    src.write_bytes(data)
    ino = src.stat().st_ino
    kernel_copy = os.copy_file_range
    rewrites: list[int] = []

    def copy_then_rewritten(infd: int, outfd: int, *args: object) -> int:
        # The kernel copies a range; right after, another writer rewrites the start of the source.
        n = kernel_copy(infd, outfd, *args)
        if not rewrites and os.fstat(infd).st_ino == ino:
            with open(src, "r+b") as f:
                f.write(b"\0" * 4096)
            rewrites.append(n)
        return n

    monkeypatch.setattr(os, "copy_file_range", copy_then_rewritten)
    digest, size = store.put_file(src, H.FileHasher(H.NullMemo()))
    assert rewrites  # the rewrite happened between the copy and its hashing
    obj = store.path_of(digest).read_bytes()
    assert sha(obj) == digest and size == len(obj)  # named by the bytes it holds
    assert obj == data  # which are the bytes copied, before the rewrite


def test_put_file_refuses_a_symbolic_link(tmp_path: Path, store: ObjectStore) -> None:
    target = tmp_path / "secret.txt"
    target.write_bytes(b"not to be stored")
    link = tmp_path / "out.txt"
    link.symlink_to(target)
    with pytest.raises(consist.ConsistError, match="is a symbolic link, not a regular file"):
        store.put_file(link, H.FileHasher(H.NullMemo()))
    assert not store.has(sha(b"not to be stored"))


# --------------------------------------------------------------------- recorded modes


def test_restored_files_get_their_recorded_mode(tmp_path: Path, store: ObjectStore) -> None:
    umask = process_umask()
    digest = store.put_bytes(b"#!/bin/sh\necho hi\n")
    for recorded in (0o600, 0o755, 0o640):
        dest = tmp_path / f"out-{recorded:o}"
        store.write(store.check("file", digest, 18, mode_meta(0o100000 | recorded)), dest)
        assert dest.read_bytes() == b"#!/bin/sh\necho hi\n"
        assert mode(dest) == recorded & ~umask
    dest = tmp_path / "ordinary"
    store.write(store.check("file", digest, 18, None), dest)
    assert mode(dest) == 0o644 & ~umask


def test_an_ordinary_file_records_no_mode() -> None:
    assert mode_meta(0o100644) == {}
    assert mode_meta(0o100600) == {"mode": "0600"}
    assert mode_meta(0o104755) == {"mode": "0755"}


def test_storing_a_directory_returns_each_files_mode(tmp_path: Path, store: ObjectStore) -> None:
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "run.sh").write_bytes(b"#!/bin/sh\n")
    (src / "data.csv").write_bytes(b"a\n")
    (src / "link").symlink_to("data.csv")
    os.chmod(src / "bin" / "run.sh", 0o755)
    os.chmod(src / "data.csv", 0o644)
    manifest = store.put_dir(src, H.FileHasher(H.NullMemo()))[2]
    assert {rel: stat.S_IMODE(m) for rel, m in manifest.modes.items()} == {"bin/run.sh": 0o755, "data.csv": 0o644}
    assert modes_meta(manifest.modes) == {"modes": {"bin/run.sh": "0755"}}


def test_a_directory_recorded_with_one_mode_and_no_exceptions_restores_and_is_held(
    tmp_path: Path, store: ObjectStore
) -> None:
    umask = process_umask()
    src = tmp_path / "keys"
    src.mkdir()
    for name in ("a.key", "b.key"):
        (src / name).write_bytes(name.encode())
        os.chmod(src / name, 0o600)
    hasher = H.FileHasher(H.NullMemo())
    digest, _, manifest = store.put_dir(src, hasher)
    meta = modes_meta(manifest.modes)
    assert meta == {"mode": "0600"}  # no "modes": no file differs from the usual mode
    dest = tmp_path / "restored"
    store.write(store.check("dir", digest, None, meta), dest)
    assert {p.name: mode(p) for p in dest.iterdir()} == {"a.key": 0o600 & ~umask, "b.key": 0o600 & ~umask}
    assert holds("dir", digest, None, meta, dest, hasher)
    assert holds("dir", digest, None, json.dumps(meta), dest, hasher)
    os.chmod(dest / "b.key", 0o644)
    assert not holds("dir", digest, None, meta, dest, hasher)


def test_a_file_whose_mode_differs_from_the_recorded_one_is_not_held(tmp_path: Path) -> None:
    hasher = H.FileHasher(H.NullMemo())
    f = tmp_path / "id.key"
    f.write_bytes(b"private key")
    os.chmod(f, 0o600 & ~process_umask())
    row = {"kind": "file", "hash": sha(b"private key"), "size": 11, "meta": json.dumps({"mode": "0600"})}
    assert _holds(row, f, hasher)  # the right bytes with the recorded mode: nothing to restore
    os.chmod(f, 0o644)  # widened since: a restore must narrow it again
    assert not _holds(row, f, hasher)


# --------------------------------------------------------------------- restoring


def test_a_destination_that_cannot_be_hashed_is_not_taken_as_holding_the_artifact(tmp_path: Path) -> None:
    hasher = H.FileHasher(H.NullMemo())
    dest = tmp_path / "out"
    dest.mkdir()
    fd = os.open(os.fsencode(dest) + b"/caf\xe9.csv", os.O_WRONLY | os.O_CREAT, 0o644)  # a Latin-1 name
    os.close(fd)
    with pytest.raises(consist.ConsistError, match="is not UTF-8"):
        hasher.hash_dir(dest, follow_links=False)
    assert not holds("dir", sha(b"anything"), None, None, dest, hasher)


def test_a_directory_publish_that_fails_puts_the_old_directory_back(tmp_path: Path, store: ObjectStore) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "new.csv").write_bytes(b"new")
    digest = store.put_dir(src, H.FileHasher(H.NullMemo()))[0]
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old.csv").write_bytes(b"old")
    staged = store.stage(store.check("dir", digest, None), dest)
    shutil.rmtree(staged.tmp)  # the staged copy is gone when it is put in place: that rename fails
    with pytest.raises(FileNotFoundError):
        staged.publish()
    staged.discard()
    assert [p.name for p in dest.iterdir()] == ["old.csv"] and (dest / "old.csv").read_bytes() == b"old"
    assert leftovers(tmp_path) == []  # the old directory was moved back, not left aside


def test_a_restore_never_writes_through_a_name_planted_at_its_temporary_file(
    tmp_path: Path, store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = store.put_bytes(b"restored bytes")
    fixed = uuid.UUID("12345678123456781234567812345678")
    monkeypatch.setattr(uuid, "uuid4", lambda: fixed)  # the temporary name is known in advance
    dest = tmp_path / "out.txt"
    dest.write_bytes(b"current")
    planted = tmp_path / f".out.txt.consist-{fixed.hex[:8]}"
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"someone else's file")
    planted.symlink_to(victim)
    with pytest.raises(FileExistsError):
        store.write(store.check("file", digest, 14), dest)
    assert victim.read_bytes() == b"someone else's file"
    assert dest.read_bytes() == b"current" and not dest.is_symlink()
    planted.unlink(missing_ok=True)
    planted.symlink_to(tmp_path / "created-through-the-link")  # a dangling link: no file may appear behind it
    with pytest.raises(FileExistsError):
        store.write(store.check("file", digest, 14), dest)
    assert not (tmp_path / "created-through-the-link").exists()
    assert dest.read_bytes() == b"current" and not dest.is_symlink()


# --------------------------------------------------------------------- store directories


def test_a_link_in_place_of_the_store_directory_is_not_chmod_ed(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o755)
    root = tmp_path / "objects"
    root.symlink_to(shared)
    store = ObjectStore(root)
    digest = store.put_bytes(b"through a link")
    assert store.path_of(digest).read_bytes() == b"through a link"
    assert mode(shared) == 0o755  # the link was left alone, and nothing was changed through it


@pytest.mark.skipif(os.geteuid() != 0, reason="making a directory of another user needs root")
def test_a_store_directory_of_another_user_is_not_chmod_ed(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    root.mkdir()
    os.chmod(root, 0o755)
    os.chown(root, 65534, 65534)  # nobody's
    store = ObjectStore(root)
    digest = store.put_bytes(b"in a shared store")
    assert store.path_of(digest).read_bytes() == b"in a shared store"
    st = root.lstat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o755, 65534)


# --------------------------------------------------------------------- mounts


def test_a_home_that_cannot_be_resolved_does_not_stop_the_other_homes_from_being_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = tmp_path / "home"
    base.mkdir()
    homes = [base / f"user{i:02d}" for i in range(12)]
    loops = [base / f"loop{i:02d}" for i in range(12)]
    for h in homes:
        h.mkdir()
    for loop in loops:
        loop.symlink_to(loop.name)  # a link to itself: resolving it never ends
    # Homes are kept in a set, whose order changes from one process to the next: with this many
    # unresolvable homes, some real home comes after one of them in all but ~1 in 2.7 million orders.
    users = [
        pwd.struct_passwd((p.name, "x", 1000 + i, 1000 + i, "", str(p), "/bin/sh")) for i, p in enumerate(loops + homes)
    ]
    monkeypatch.setattr(pwd, "getpwall", lambda: users)
    monkeypatch.setattr(M, "_LOGIN_HOMES", (None, []))  # read the user database again (restored afterwards)
    monkeypatch.setenv("HOME", str(loops[0]))
    assert set(M._homes()) == set(homes)
    for h in homes:
        with pytest.raises(consist.PathNotAllowedError):
            M.check_sensitive(h)
    M.check_sensitive(tmp_path / "data")  # not a home and holding none: allowed
