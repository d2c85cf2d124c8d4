"""Guarantees of consist.objects: the content-addressed store and what a restore writes.

An object is only ever named by the hash of its bytes, is read-only, and is checked
before anything is restored from it; a restore replaces its destination in one
rename and never writes through a symlink. The memo is a real run index.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from pathlib import Path

import pytest

import consist
from consist import hashing as H
from consist.objects import ObjectStore, copy_bytes
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


def hasher(index: SQLiteIndex) -> H.FileHasher:
    return H.FileHasher(index)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".consist-" in p.name)


# --------------------------------------------------------------------- layout and storing


def test_object_path_layout(tmp_path: Path) -> None:
    s = ObjectStore(tmp_path / "objects")
    digest = "sha256:" + "ab" + "c" * 62
    assert s.path_of(digest) == tmp_path / "objects" / "sha256" / "ab" / ("c" * 62)


def test_put_file_stores_read_only_bytes_under_their_hash(
    tmp_path: Path, store: ObjectStore, index: SQLiteIndex
) -> None:
    src = tmp_path / "out.csv"
    src.write_bytes(b"a,b\n1,2\n")
    digest, size = store.put_file(src, hasher(index))
    assert (digest, size) == (sha(b"a,b\n1,2\n"), 8)
    obj = store.path_of(digest)
    assert obj.read_bytes() == b"a,b\n1,2\n" and mode(obj) == 0o444
    assert store.has(digest) and not store.has(sha(b"other"))
    assert list((store.root / "tmp").iterdir()) == []  # the temporary copy was renamed into place
    # A small object is not remembered: hashing it again costs less than a database write.
    assert index.memo_get(H.stat_key(obj.stat()), "sha256/object-v1") is None
    # The store trusts its own write of a larger one: its stat is memoised under the object algorithm.
    big = tmp_path / "big.bin"
    big.write_bytes(b"b" * ObjectStore.memo_min)
    digest, _ = store.put_file(big, hasher(index))
    assert index.memo_get(H.stat_key(store.path_of(digest).stat()), "sha256/object-v1") == digest
    assert ObjectStore.memo_min == 64 * 1024


def test_storing_known_content_again_copies_nothing(tmp_path: Path, store: ObjectStore, index: SQLiteIndex) -> None:
    (tmp_path / "a").write_bytes(b"same")
    (tmp_path / "b").write_bytes(b"same")
    digest, _ = store.put_file(tmp_path / "a", hasher(index))
    before = store.path_of(digest).stat()
    assert store.put_file(tmp_path / "b", hasher(index)) == (digest, 4)
    after = store.path_of(digest).stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert store.put_bytes(b"same") == digest and store.path_of(digest).stat().st_ino == before.st_ino


def _rewrite_after_hashing(src: Path, data: bytes) -> H.FileHasher:
    """A hasher whose memo rewrites ``src`` once it is hashed, before the store copies it."""
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns - 10 * 10**9))  # old enough to be memoised

    class RewriteAfterHashing(H.NullMemo):
        def memo_put(self, key, algo, digest):
            src.write_bytes(data)

    return H.FileHasher(RewriteAfterHashing())


def test_a_file_rewritten_between_hashing_and_copying_is_stored_under_its_real_hash(
    tmp_path: Path, store: ObjectStore
) -> None:
    src = tmp_path / "moving.bin"
    src.write_bytes(b"first version")
    digest, size = store.put_file(src, _rewrite_after_hashing(src, b"other version"))  # same size
    assert (digest, size) == (sha(b"other version"), 13)
    assert store.verify(digest, size).read_bytes() == b"other version"
    assert not store.has(sha(b"first version"))


def test_a_file_that_grows_while_stored_is_not_stored_truncated(tmp_path: Path, store: ObjectStore) -> None:
    src = tmp_path / "growing.bin"
    src.write_bytes(b"first version")
    digest, size = store.put_file(src, _rewrite_after_hashing(src, b"second, longer version"))
    assert store.verify(digest, size).read_bytes() in (b"first version", b"second, longer version")


def test_put_bytes_and_directories(tmp_path: Path, store: ObjectStore, index: SQLiteIndex) -> None:
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "x.csv").write_bytes(b"xx")
    (d / "sub" / "y.csv").write_bytes(b"yyy")
    digest, total, manifest = store.put_dir(d, hasher(index))
    assert manifest == [["sub/y.csv", sha(b"yyy"), 3], ["x.csv", sha(b"xx"), 2]]
    assert total == 5
    assert digest == sha(H.manifest_bytes(manifest)) == H.FileHasher(H.NullMemo()).hash_path(d)
    assert store.path_of(digest).read_bytes() == H.manifest_bytes(manifest)
    assert store.read_manifest(digest) == manifest
    assert store.put_bytes(b"blob") == sha(b"blob") and store.path_of(sha(b"blob")).read_bytes() == b"blob"
    assert mode(store.path_of(sha(b"blob"))) == 0o444


def test_a_manifest_of_another_format_is_refused(store: ObjectStore) -> None:
    digest = store.put_bytes(b'{"format":"something-else","files":[]}')
    with pytest.raises(consist.IntegrityError, match="not a directory manifest"):
        store.read_manifest(digest)


# --------------------------------------------------------------------- verifying


def test_verify_reports_missing_short_and_damaged_objects(store: ObjectStore, tmp_path: Path) -> None:
    digest = store.put_bytes(b"0123456789")
    assert store.verify(digest, 10) == store.path_of(digest)
    assert store.verify(digest) == store.path_of(digest)
    with pytest.raises(consist.IntegrityError, match="has 10 bytes, expected 11"):
        store.verify(digest, 11)
    absent = sha(b"never stored")
    with pytest.raises(consist.IntegrityError, match="is missing from") as err:
        store.verify(absent)
    assert err.value.missing_digest == absent
    obj = store.path_of(digest)
    os.chmod(obj, 0o644)
    obj.write_bytes(b"0123456780")  # same size, other bytes, new mtime
    with pytest.raises(consist.IntegrityError) as err:
        store.verify(digest, 10)
    assert str(err.value) == (
        f"Stored object {obj} hashes to {sha(b'0123456780')}, not {digest}. Likely cause: the file was modified "
        "after it was stored, or the disk damaged it. Fix: nothing to do: the step runs again; run "
        "tracker.prune_store() to drop damaged objects."
    )
    with pytest.raises(consist.IntegrityError) as err:
        store.verify(digest, 12)
    assert str(err.value) == (
        f"Stored object {obj} has 10 bytes, expected 12. Likely cause: the file was modified or truncated after "
        "it was stored. Fix: nothing to do: the step runs again; run tracker.prune_store() to drop damaged objects."
    )


def test_a_verified_object_is_not_read_again_while_its_stat_is_unchanged(
    store: ObjectStore, index: SQLiteIndex
) -> None:
    pad = b"." * ObjectStore.memo_min  # large enough to be remembered when stored
    digest = store.put_bytes(b"original" + pad)
    obj = store.path_of(digest)
    other = store.put_bytes(b"verified" + pad)
    assert store.verify(other) == store.path_of(other)
    st = obj.stat()
    os.chmod(obj, 0o644)
    with open(obj, "r+b") as f:
        f.write(b"ORIGINAL")  # same size, same inode
    os.utime(obj, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime: the memo key is unchanged
    assert store.verify(digest) == obj  # trusted: memoised when the store wrote it
    index.execute("DELETE FROM hash_memo")
    with pytest.raises(consist.IntegrityError, match="hashes to"):
        store.verify(digest)
    # A small object is never remembered when stored: changed in place, verify reads it and says so.
    small = store.put_bytes(b"small")
    path = store.path_of(small)
    st = path.stat()
    os.chmod(path, 0o644)
    path.write_bytes(b"SMALL")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(consist.IntegrityError, match="hashes to"):
        store.verify(small)


def test_a_successful_check_is_memoised(tmp_path: Path, index: SQLiteIndex) -> None:
    (tmp_path / "objs").mkdir()
    writer = ObjectStore(tmp_path / "objs")  # no memo: nothing recorded when written
    digest = writer.put_bytes(b"checked once")
    reader = ObjectStore(tmp_path / "objs", memo=index)
    key = H.stat_key(reader.path_of(digest).stat())
    assert index.memo_get(key, "sha256/object-v1") is None
    reader.verify(digest)
    assert index.memo_get(key, "sha256/object-v1") == digest


def test_check_of_a_file_and_of_a_directory(tmp_path: Path, store: ObjectStore, index: SQLiteIndex) -> None:
    f = store.put_bytes(b"file")
    assert store.check("file", f, 4) == str(store.path_of(f))
    d = tmp_path / "d"
    d.mkdir()
    (d / "a").write_bytes(b"A")
    digest, _total, _manifest = store.put_dir(d, hasher(index))
    assert store.check("dir", digest, None) == [("a", str(store.path_of(sha(b"A"))), 1)]


@pytest.mark.parametrize("bad", ["", "/etc/passwd", "../escape", "a/../../escape", "a/.."])
def test_manifest_entries_that_leave_their_directory_are_refused(store: ObjectStore, bad: str) -> None:
    inner = store.put_bytes(b"x")
    digest = store.put_bytes(H.manifest_bytes([["ok", inner, 1], [bad, inner, 1]]))
    with pytest.raises(consist.IntegrityError, match="points outside its directory"):
        store.check("dir", digest, None)


def test_a_dotdot_lookalike_name_is_fine(store: ObjectStore) -> None:
    inner = store.put_bytes(b"x")
    digest = store.put_bytes(H.manifest_bytes([["..data/x", inner, 1], ["a..b", inner, 1]]))
    assert [rel for rel, _p, _s in store.check("dir", digest, None)] == ["..data/x", "a..b"]


# --------------------------------------------------------------------- writing


def test_restored_file_replaces_the_destination_with_a_normal_mode(tmp_path: Path, store: ObjectStore) -> None:
    digest = store.put_bytes(b"restored")
    dest = tmp_path / "new" / "dir" / "out.csv"
    store.write(store.check("file", digest, 8), dest)
    assert dest.read_bytes() == b"restored"
    assert mode(dest) == 0o644 & ~process_umask()
    dest.write_bytes(b"scribbled over, longer")
    store.write(store.check("file", digest, 8), dest)
    assert dest.read_bytes() == b"restored" and leftovers(dest.parent) == []


def process_umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def test_umask_is_the_process_umask() -> None:
    from consist import objects

    before = process_umask()
    assert objects._umask() == before
    assert process_umask() == before  # reading it left the process umask unchanged


def test_restoring_through_a_symlink_replaces_the_link_not_its_target(tmp_path: Path, store: ObjectStore) -> None:
    digest = store.put_bytes(b"restored")
    target = tmp_path / "precious.txt"
    target.write_bytes(b"do not touch")
    link = tmp_path / "out.txt"
    link.symlink_to(target)
    store.write(store.check("file", digest, None), link)
    assert not link.is_symlink() and link.read_bytes() == b"restored"
    assert target.read_bytes() == b"do not touch"


def _stored_dir(tmp_path: Path, store: ObjectStore, index: SQLiteIndex) -> str:
    src = tmp_path / "src_dir"
    (src / "deep" / "er").mkdir(parents=True)
    (src / "deep" / "er" / "f.csv").write_bytes(b"deep")
    (src / "deep" / "g.csv").write_bytes(b"g")
    (src / "top.csv").write_bytes(b"top")
    return store.put_dir(src, hasher(index))[0]


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


EXPECTED_TREE = {"deep/er/f.csv": b"deep", "deep/g.csv": b"g", "top.csv": b"top"}


def test_directory_restore_into_nothing_an_old_directory_a_file_or_a_link(
    tmp_path: Path, store: ObjectStore, index: SQLiteIndex
) -> None:
    digest = _stored_dir(tmp_path, store, index)
    out = tmp_path / "outs"
    fresh = out / "fresh"
    store.write(store.check("dir", digest, None), fresh)
    assert tree(fresh) == EXPECTED_TREE

    stale = out / "stale"
    (stale / "deep").mkdir(parents=True)
    (stale / "deep" / "g.csv").write_bytes(b"old")
    (stale / "stray.txt").write_bytes(b"not from the run")
    store.write(store.check("dir", digest, None), stale)
    assert tree(stale) == EXPECTED_TREE

    was_file = out / "was_file"
    was_file.write_bytes(b"a file where the directory goes")
    store.write(store.check("dir", digest, None), was_file)
    assert tree(was_file) == EXPECTED_TREE

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_bytes(b"keep")
    link = out / "link"
    link.symlink_to(elsewhere, target_is_directory=True)
    store.write(store.check("dir", digest, None), link)
    assert not link.is_symlink() and tree(link) == EXPECTED_TREE
    assert tree(elsewhere) == {"keep.txt": b"keep"}
    assert leftovers(out) == []


def test_directory_restore_over_a_symlink_leaves_nothing_behind(
    tmp_path: Path, store: ObjectStore, index: SQLiteIndex
) -> None:
    digest = _stored_dir(tmp_path, store, index)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "outs"
    out.mkdir()
    (out / "link").symlink_to(elsewhere, target_is_directory=True)
    store.write(store.check("dir", digest, None), out / "link")
    assert tree(out / "link") == EXPECTED_TREE
    assert sorted(p.name for p in out.iterdir()) == ["link"]


def test_restored_directory_files_get_the_umask_mode(tmp_path: Path, store: ObjectStore, index: SQLiteIndex) -> None:
    from consist import objects

    digest = _stored_dir(tmp_path, store, index)
    dest = tmp_path / "restored"
    store.write(store.check("dir", digest, None), dest)
    assert {mode(p) for p in dest.rglob("*") if p.is_file()} == {0o644 & ~process_umask()}
    assert objects._umask() == process_umask()


def test_a_failed_directory_restore_leaves_the_destination_and_no_build_dir(
    tmp_path: Path, store: ObjectStore, index: SQLiteIndex
) -> None:
    digest = _stored_dir(tmp_path, store, index)
    checked = store.check("dir", digest, None)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "mine.txt").write_bytes(b"mine")
    broken = [*checked, ("missing.csv", str(tmp_path / "no-such-object"), 1)]
    with pytest.raises(FileNotFoundError):
        store.write(broken, dest)
    assert tree(dest) == {"mine.txt": b"mine"} and leftovers(tmp_path) == []


# --------------------------------------------------------------------- copying


def test_copy_bytes_copies_exactly_and_never_overwrites(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    data = os.urandom(3 << 20)
    src.write_bytes(data)
    copy_bytes(src, tmp_path / "dst.bin", len(data), "dst")
    assert (tmp_path / "dst.bin").read_bytes() == data
    with pytest.raises(FileExistsError):
        copy_bytes(src, tmp_path / "dst.bin", len(data), "dst")


def test_copy_stops_at_the_end_of_a_file_shorter_than_expected(tmp_path: Path) -> None:
    src = tmp_path / "short.bin"
    src.write_bytes(b"only this")
    copy_bytes(src, tmp_path / "copy.bin", 1000, "copy")  # the file shrank after its size was read
    assert (tmp_path / "copy.bin").read_bytes() == b"only this"


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs /dev/shm (tmpfs) for a cross-device copy")
def test_copy_across_file_systems_falls_back_to_read_and_write(tmp_path: Path) -> None:
    if os.stat("/dev/shm").st_dev == tmp_path.stat().st_dev:
        pytest.skip("/dev/shm is on the same file system as the test directory")
    src = Path("/dev/shm") / f"consist-test-{os.getpid()}-{time.monotonic_ns()}"
    data = os.urandom((1 << 20) + 123)
    src.write_bytes(data)
    try:
        copy_bytes(src, tmp_path / "copied.bin", len(data), "copied")
        assert (tmp_path / "copied.bin").read_bytes() == data
        store = ObjectStore(tmp_path / "objects")
        digest, size = store.put_file(src, H.FileHasher(H.NullMemo()))
        assert (digest, size) == (sha(data), len(data)) and store.verify(digest, size).read_bytes() == data
    finally:
        src.unlink()


def test_copy_progress_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd) -> None:
    monkeypatch.setenv("CONSIST_PROGRESS", "1")
    monkeypatch.setenv("CONSIST_PROGRESS_DELAY", "0")
    src = tmp_path / "big.bin"
    src.write_bytes(b"z" * (3 << 20))
    store = ObjectStore(tmp_path / "objects")
    digest, _ = store.put_file(src, H.FileHasher(H.NullMemo()))
    err = capfd.readouterr().err
    assert "copying big.bin" in err and "3.1/3.1 MB" in err
    store.write(store.check("file", digest, 3 << 20), tmp_path / "restored.bin")
    err = capfd.readouterr().err
    assert "copying restored.bin" in err and "3.1/3.1 MB" in err


# --------------------------------------------------------------------- maintenance


def test_all_objects_remove_and_clear_tmp(tmp_path: Path, store: ObjectStore) -> None:
    assert list(ObjectStore(tmp_path / "empty").all_objects()) == []
    a, b = store.put_bytes(b"a"), store.put_bytes(b"bb")
    (store.root / "sha256" / "stray-file").write_bytes(b"not a shard")
    assert sorted(store.all_objects()) == sorted([(a, store.path_of(a)), (b, store.path_of(b))])
    assert store.remove(b) == 2 and not store.has(b)
    assert store.remove(b) == 0
    tmp = store.root / "tmp"
    old, new = tmp / "old", tmp / "new"
    old.write_bytes(b"left by a killed process")
    new.write_bytes(b"in use")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    store.clear_tmp()
    assert not old.exists() and new.exists()
    store.clear_tmp(older_than_s=-1)
    assert not new.exists()
    ObjectStore(tmp_path / "never-used").clear_tmp()  # no tmp directory: nothing to do


# --------------------------------------------------------------------- damage, worded in full


def test_missing_and_damaged_objects_read_in_full(store: ObjectStore, tmp_path: Path) -> None:
    absent = sha(b"never stored")
    with pytest.raises(consist.IntegrityError) as err:
        store.verify(absent)
    assert str(err.value) == (
        f"Stored object {absent} is missing from {store.root}. Likely cause: the object store was pruned or "
        "files were deleted by hand. Fix: nothing to do: the step runs again and stores its outputs anew."
    )
    digest = store.put_bytes(b'{"format":"something-else","files":[]}')
    with pytest.raises(consist.IntegrityError) as err:
        store.read_manifest(digest)
    assert str(err.value) == f"Object {digest} is not a directory manifest."


def test_a_damaged_manifest_is_dropped_so_the_next_store_repairs_it(store: ObjectStore, tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "a").write_bytes(b"a")
    digest = store.put_dir(d, H.FileHasher(H.NullMemo()))[0]
    obj = store.path_of(digest)
    os.chmod(obj, 0o644)
    obj.write_bytes(obj.read_bytes().replace(b'"a"', b'"b"'))
    with pytest.raises(consist.IntegrityError) as err:
        store.read_manifest(digest)
    assert str(err.value).startswith(f"Stored object {obj} hashes to sha256:")
    assert str(err.value).endswith(
        f"not {digest}. Likely cause: the file was modified after it was stored, or the disk damaged it. "
        "Fix: nothing to do: the step runs again and stores its outputs anew."
    )
    assert not obj.exists()  # removed: storing the directory again puts it back
    assert store.put_dir(d, H.FileHasher(H.NullMemo()))[0] == digest and store.read_manifest(digest)


def test_a_link_at_an_objects_place_is_damage(store: ObjectStore, tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "a").write_bytes(b"a")
    digest = store.put_dir(d, H.FileHasher(H.NullMemo()))[0]
    obj = store.path_of(digest)
    (tmp_path / "elsewhere.json").write_bytes(obj.read_bytes())
    obj.unlink()
    obj.symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(consist.IntegrityError) as err:
        store.read_manifest(digest)
    assert str(err.value).startswith(f"Stored object {obj} is a symbolic link, not a regular file. Likely cause:")


def test_stored_links_are_checked(store: ObjectStore, tmp_path: Path) -> None:
    from consist.objects import link_digest

    link = tmp_path / "l"
    link.symlink_to("some/target.csv")
    assert link_digest(link) == (sha(b"consist-link-v1\x00some/target.csv"), 15)
    good = store.put_bytes(H.link_bytes("some/target.csv"))
    assert str(store.check("link", good, 15)) == "some/target.csv"
    with pytest.raises(consist.IntegrityError) as err:
        store.check("link", good, 16)
    assert str(err.value).startswith(f"Stored link {good} has a target of 15 bytes, expected 16.")
    for data in (b"not a link at all", H.link_bytes(""), H.link_bytes("a") + b"\x00b"):
        bad = store.put_bytes(data)
        with pytest.raises(consist.IntegrityError) as err:
            store.check("link", bad, None)
        assert str(err.value) == (
            f"Object {bad} is not a stored symbolic link. Likely cause: the object store was edited by hand, or "
            "its files were damaged. Fix: nothing to do: the step runs again; run "
            "tracker.prune_store(verify=True) to drop damaged objects."
        )


def test_object_paths_name_their_digest(store: ObjectStore) -> None:
    from consist.objects import _digest_at

    digest = "sha256:" + "ab" * 32
    assert _digest_at(str(store.path_of(digest))) == digest
    with pytest.raises(consist.IntegrityError, match="is not the path of a stored object"):
        _digest_at("/somewhere/else/file.txt")


def test_copy_bytes_copies_exactly_the_size_asked(tmp_path: Path) -> None:
    src = tmp_path / "long.bin"
    src.write_bytes(b"0123456789" * 10)
    copy_bytes(src, tmp_path / "ten.bin", 10, "ten")
    assert (tmp_path / "ten.bin").read_bytes() == b"0123456789"
    (tmp_path / "one.bin").write_bytes(b"x")
    copy_bytes(tmp_path / "one.bin", tmp_path / "one-copy.bin", 1, "one")
    assert (tmp_path / "one-copy.bin").read_bytes() == b"x"


def test_copy_and_directory_restore_progress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd) -> None:
    monkeypatch.setenv("CONSIST_PROGRESS", "1")
    monkeypatch.setenv("CONSIST_PROGRESS_DELAY", "0")
    src = tmp_path / "big.bin"
    src.write_bytes(b"z" * (3 << 20))
    copy_bytes(src, tmp_path / "copy.bin", 3 << 20, "my label")
    err = capfd.readouterr().err
    assert "copying my label" in err and "3.1/3.1 MB" in err
    d = tmp_path / "d"
    d.mkdir()
    (d / "big.bin").write_bytes(b"y" * (3 << 20))
    for i in range(300):  # small files, stored in one pass on threads, advance the same bar
        (d / f"s{i:03d}.txt").write_bytes(b"%03d" % i * 3414)
    store = ObjectStore(tmp_path / "objects")
    capfd.readouterr()
    digest = store.put_dir(d, H.FileHasher(H.NullMemo()))[0]
    err = capfd.readouterr().err
    assert "storing d" in err and "6.2/6.2 MB" in err
    store.write(store.check("dir", digest, None), tmp_path / "restored_dir")
    err = capfd.readouterr().err
    assert "restoring restored_dir" in err and "6.2/6.2 MB" in err


def test_the_umask_is_read_once_and_left_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    from consist import objects

    monkeypatch.setattr(objects, "_UMASK", None)  # as in a fresh process
    before = process_umask()
    assert objects._umask() == before and objects._UMASK == before
    assert process_umask() == before


def test_manifest_bodies_that_are_not_manifests(store: ObjectStore) -> None:
    for data in (b"[1, 2]", b"not json", b'{"format":"consist-dir-v1","files":{}}'):
        digest = store.put_bytes(data)
        with pytest.raises(consist.IntegrityError) as err:
            store.read_manifest(digest)
        assert str(err.value) == f"Object {digest} is not a directory manifest."
    link = H.link_entry("l", "t")
    old_format_with_link = store.put_bytes(b'{"format":"consist-dir-v1","files":' + json.dumps([link]).encode() + b"}")
    with pytest.raises(consist.IntegrityError) as err:
        store.read_manifest(old_format_with_link)
    assert str(err.value).startswith(
        f"Directory manifest {old_format_with_link} of format consist-dir-v1 lists a symbolic link. Likely cause:"
    )


def test_pipes_in_an_output_directory_are_left_out_with_a_warning(store: ObjectStore, tmp_path: Path) -> None:
    d = tmp_path / "out"
    d.mkdir()
    (d / "table.csv").write_bytes(b"t")
    os.mkfifo(d / "feed")
    with pytest.warns(consist.ConsistWarning) as caught:
        _digest, total, manifest = store.put_dir(d, H.FileHasher(H.NullMemo()))
    assert [e[0] for e in manifest] == ["table.csv"] and total == 1
    assert str(caught[0].message) == (
        f"{d / 'feed'} is a named pipe (FIFO), not a regular file: the object store keeps regular files, "
        "directories and symbolic links only, so it is left out of the stored directory"
    )


def test_damage_found_while_restoring_leaves_the_destination_and_drops_the_object(store: ObjectStore, tmp_path: Path):
    digest = store.put_bytes(b"0123456789")
    checked = store.check("file", digest, 10)  # present and of its size: its bytes are hashed as they are copied
    obj = store.path_of(digest)
    os.chmod(obj, 0o644)
    obj.write_bytes(b"0123456780")
    dest = tmp_path / "dest.txt"
    dest.write_bytes(b"old content")
    with pytest.raises(consist.IntegrityError) as err:
        store.write(checked, dest)
    assert str(err.value) == (
        f"Stored object {obj} hashes to {sha(b'0123456780')}, not {digest}. Likely cause: the file was modified "
        "after it was stored, or the disk damaged it. Fix: nothing to do: the step runs again and stores its "
        "outputs anew."
    )
    assert dest.read_bytes() == b"old content" and leftovers(tmp_path) == []
    assert not obj.exists()


def test_an_object_cut_short_while_restoring_is_reported(store: ObjectStore, tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "f").write_bytes(b"0123456789")
    digest = store.put_dir(d, H.FileHasher(H.NullMemo()))[0]
    checked = store.check("dir", digest, None)
    obj = store.path_of(sha(b"0123456789"))
    os.chmod(obj, 0o644)
    obj.write_bytes(b"01234")
    with pytest.raises(consist.IntegrityError) as err:
        store.write(checked, tmp_path / "restored")
    assert str(err.value).startswith(f"Stored object {obj} has 5 bytes, expected 10. Likely cause:")
    assert not (tmp_path / "restored").exists() and leftovers(tmp_path) == []


def test_a_pipe_at_an_objects_place_is_damage(store: ObjectStore, tmp_path: Path) -> None:
    digest = store.put_bytes(b"abc")
    obj = store.path_of(digest)
    checked = store.check("file", digest, 3)
    obj.unlink()
    os.mkfifo(obj)  # swapped in after the check: the restore itself refuses it, without blocking
    with pytest.raises(consist.IntegrityError) as err:
        store.write(checked, tmp_path / "dest")
    assert str(err.value).startswith(f"Stored object {obj} is a named pipe (FIFO), not a regular file. Likely cause:")
    with pytest.raises(consist.IntegrityError) as err:
        store.check("file", digest, 3)
    assert str(err.value).startswith(f"Stored object {obj} is a named pipe (FIFO), not a regular file. Likely cause:")


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ("just a string", "holds a malformed entry"),
        (["a", "sha256:x", 1, {}, "fifth"], "holds a malformed entry"),
        ([5, "sha256:x", 1], "holds a malformed entry"),
        (["a//b", None, 1], "twice or not as a plain relative path"),
        (["./a", None, 1], "twice or not as a plain relative path"),
        (["a/.", None, 1], "twice or not as a plain relative path"),
        (["a\x00b", None, 1], "twice or not as a plain relative path"),
        (["ok", None, 1], "twice or not as a plain relative path"),  # listed twice
    ],
)
def test_malformed_manifest_entries_are_damage(store: ObjectStore, entry: object, words: str) -> None:
    inner = store.put_bytes(b"x")
    fixed = [*entry[:1], inner, *entry[2:]] if isinstance(entry, list) and len(entry) == 3 else entry
    digest = store.put_bytes(H.manifest_bytes([["ok", inner, 1], fixed]))
    with pytest.raises(consist.IntegrityError) as err:
        store.check("dir", digest, None)
    assert f"Directory manifest {digest} " in str(err.value) and words in str(err.value)
    assert str(err.value).endswith(
        "Likely cause: the object store was edited by hand, or its files were damaged. Fix: nothing to do: the "
        "step runs again; run tracker.prune_store(verify=True) to drop damaged objects."
    )


def test_a_manifest_entry_outside_its_directory_reads_in_full(store: ObjectStore) -> None:
    inner = store.put_bytes(b"x")
    digest = store.put_bytes(H.manifest_bytes([["../up", inner, 1]]))
    with pytest.raises(consist.IntegrityError) as err:
        store.check("dir", digest, None)
    assert str(err.value) == (
        f"Directory manifest {digest} lists '../up', which points outside its directory. Likely cause: the object "
        "store was edited by hand. Fix: nothing to do: the step runs again; run tracker.prune_store() to drop "
        "the entry."
    )


def test_check_compares_the_recorded_size(store: ObjectStore) -> None:
    digest = store.put_bytes(b"four")
    assert store.check("file", digest, 4) == str(store.path_of(digest))
    with pytest.raises(consist.IntegrityError, match="has 4 bytes, expected 5"):
        store.check("file", digest, 5)


# --------------------------------------------------------------------- what already holds an artifact


def test_holds_compares_kind_content_and_modes(tmp_path: Path) -> None:
    from consist.objects import holds, mode_meta, modes_meta

    hasher = H.FileHasher(H.NullMemo())
    umask = process_umask()
    f = tmp_path / "f.txt"
    f.write_bytes(b"abc")
    os.chmod(f, 0o644 & ~umask)
    d = sha(b"abc")
    assert holds("file", d, 3, None, f, hasher)
    assert not holds("file", d, 4, None, f, hasher)
    assert not holds("file", sha(b"abd"), 3, None, f, hasher)
    assert not holds("file", d, 3, None, tmp_path / "absent", hasher)
    assert not holds("file", d, 3, None, f / "below-a-file", hasher)
    os.chmod(f, 0o600 & ~umask)
    assert not holds("file", d, 3, None, f, hasher)  # a restore would give it 0644
    assert holds("file", d, 3, mode_meta(0o100600), f, hasher)
    assert holds("file", d, 3, json.dumps(mode_meta(0o100600)), f, hasher)  # meta as stored (JSON text)
    link = tmp_path / "l.txt"
    link.symlink_to(f)
    assert not holds("file", d, 3, mode_meta(0o100600), link, hasher)  # never read through a link
    link_digest_ = sha(b"consist-link-v1\x00" + os.fsencode(str(f)))
    assert holds("link", link_digest_, None, None, link, hasher)
    assert not holds("link", sha(b"consist-link-v1\x00elsewhere"), None, None, link, hasher)
    assert not holds("link", link_digest_, None, None, f, hasher)

    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "a.csv").write_bytes(b"a")
    (tree / "run.sh").write_bytes(b"#!/bin/sh\n")
    (tree / "alias").symlink_to("sub/a.csv")
    os.chmod(tree / "sub" / "a.csv", 0o644 & ~umask)
    os.chmod(tree / "run.sh", 0o755 & ~umask)
    digest = hasher.hash_dir(tree, follow_links=False)[0]
    meta = modes_meta({"sub/a.csv": 0o100644, "run.sh": 0o100755})
    assert holds("dir", digest, None, meta, tree, hasher)
    assert not holds("dir", digest, None, None, tree, hasher)  # run.sh would lose its execute bits
    assert not holds("dir", digest, None, meta, f, hasher)
    (tree / "alias").unlink()
    (tree / "alias").symlink_to("run.sh")  # same names, the link now points elsewhere
    assert not holds("dir", digest, None, meta, tree, hasher)
    os.mkfifo(tree / "pipe")
    assert not holds("dir", digest, None, meta, tree, hasher)


def test_manifest_entries_are_checked_one_by_one(store: ObjectStore) -> None:
    inner = store.put_bytes(b"x")
    good_link = H.link_entry("l", "x.csv")
    cases = {
        "lists a malformed link 'l'": [["l", good_link[1], 5, {"symlink": "other"}]],
        "lists a malformed link 'm'": [["m", inner, 1, {"symlink": "a\x00b"}]],
        "holds a malformed entry for 'n'": [["n", inner, -1]],
        "holds a malformed entry for 'o'": [["o", inner, True]],
        "holds a malformed entry for 'p'": [["p", 7, 1]],
        "lists 'a/b/c' inside the file or link 'a'": [["a", inner, 1], ["a/b/c", inner, 1]],
        "lists 'd/f/g' inside the file or link": [["d/f", inner, 1], ["d/f/g", inner, 1]],  # deeper down
        "lists a malformed link 'z'": [H.link_entry("z", "a\x00b")],  # consistent, but no link can hold a NUL
        "lists a malformed link 'q'": [["q", inner, 1, {"symlink": 5}]],
        "lists a malformed link 'r'": [["r", inner, 1, "not a mapping"]],
    }
    for words, entries in cases.items():
        digest = store.put_bytes(H.manifest_bytes(entries))
        with pytest.raises(consist.IntegrityError) as err:
            store.check("dir", digest, None)
        assert str(err.value).startswith(f"Directory manifest {digest} {words}"), words
    empty = store.put_bytes(H.manifest_bytes([["e", sha(b""), 0]]))
    store.put_bytes(b"")
    assert [rel for rel, _src, size in store.check("dir", empty, None)] == ["e"]
    ok = store.put_bytes(H.manifest_bytes([good_link, ["x.csv", inner, 1]]))
    assert [(rel, size) for rel, _src, size in store.check("dir", ok, None)] == [("l", 0), ("x.csv", 1)]


def test_a_directory_whose_member_object_has_the_wrong_size_fails_its_check(store: ObjectStore) -> None:
    inner = store.put_bytes(b"0123456789")
    digest = store.put_bytes(H.manifest_bytes([["m.bin", inner, 10]]))
    obj = store.path_of(inner)
    os.chmod(obj, 0o644)
    obj.write_bytes(b"01234")  # truncated: the check catches it before anything is written
    with pytest.raises(consist.IntegrityError, match="has 5 bytes, expected 10"):
        store.check("dir", digest, None)


def test_storing_content_again_repairs_a_truncated_object(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"0123456789")
    digest, _ = store.put_file(src, H.FileHasher(H.NullMemo()))
    obj = store.path_of(digest)
    os.chmod(obj, 0o644)
    obj.write_bytes(b"01234")
    assert store.has(digest) and not store.has(digest, 10)
    assert store.put_file(src, H.FileHasher(H.NullMemo())) == (digest, 10)
    assert obj.read_bytes() == b"0123456789" and mode(obj) == 0o444


def test_storing_shows_a_copy_bar_with_the_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd) -> None:
    import re

    monkeypatch.setenv("CONSIST_PROGRESS", "1")
    monkeypatch.setenv("CONSIST_PROGRESS_DELAY", "0")
    src = tmp_path / "sized.bin"
    src.write_bytes(b"s" * (3 << 20))
    ObjectStore(tmp_path / "objects").put_file(src, H.FileHasher(H.NullMemo()))
    err = capfd.readouterr().err
    assert re.search(r"copying sized\.bin[^\r\n]*3\.1/3\.1 MB", err), err[-500:]


def test_links_files_and_sizes_of_a_manifest(store: ObjectStore, tmp_path: Path) -> None:
    from consist.objects import file_entries, manifest_size

    link = tmp_path / "l"
    link.symlink_to("some/where.csv")
    digest, size = store.put_link(link)
    assert (digest, size) == (sha(b"consist-link-v1\x00some/where.csv"), 14)
    assert store.path_of(digest).read_bytes() == b"consist-link-v1\x00some/where.csv"
    manifest = [["a", sha(b"a"), 1], H.link_entry("l", "x"), ["b", sha(b"bb"), 2]]
    assert file_entries(manifest) == [["a", sha(b"a"), 1], ["b", sha(b"bb"), 2]]
    assert manifest_size(manifest) == 3 and manifest_size([]) == 0


def test_checking_a_missing_object_names_it(store: ObjectStore) -> None:
    absent = sha(b"gone")
    with pytest.raises(consist.IntegrityError) as err:
        store.check("file", absent, 4)
    assert err.value.missing_digest == absent
    assert str(err.value) == (
        f"Stored object {absent} is missing from {store.root}. Likely cause: the object store was pruned or "
        "files were deleted by hand. Fix: nothing to do: the step runs again and stores its outputs anew."
    )
    with pytest.raises(consist.IntegrityError, match="is not the name of a stored object"):
        store.check("file", "md5:abc", 4)


def test_large_files_are_copied_and_hashed_exactly(store: ObjectStore, tmp_path: Path) -> None:
    data = os.urandom((3 << 20) + 4097)  # above the in-memory limit: copied by the kernel, chunk by chunk
    src = tmp_path / "large.bin"
    src.write_bytes(data)
    digest, size = store.put_file(src, H.FileHasher(H.NullMemo()))
    assert (digest, size) == (sha(data), len(data)) and store.path_of(digest).read_bytes() == data
    dest = tmp_path / "restored.bin"
    store.write(store.check("file", digest, size), dest)
    assert dest.read_bytes() == data


def test_store_directories_are_private(store: ObjectStore, tmp_path: Path) -> None:
    digest = store.put_bytes(b"private")
    shard = store.path_of(digest).parent
    assert stat.S_IMODE(shard.stat().st_mode) == 0o700
    assert stat.S_IMODE(shard.parent.stat().st_mode) == 0o700
    open_shard = store.root / "sha256" / "ff"
    open_shard.mkdir(mode=0o755)
    os.chmod(open_shard, 0o755)  # made by an older version, or by hand
    from consist.objects import _private_dir

    _private_dir(open_shard)
    assert stat.S_IMODE(open_shard.stat().st_mode) == 0o700


def test_a_directory_at_an_objects_place_is_replaced(store: ObjectStore) -> None:
    digest = sha(b"object bytes")
    place_ = store.path_of(digest)
    (place_ / "junk").mkdir(parents=True)
    assert store.put_bytes(b"object bytes") == digest
    assert place_.is_file() and place_.read_bytes() == b"object bytes"


def test_modes_of_a_directory_are_recorded_as_the_usual_one_and_exceptions() -> None:
    from consist.objects import modes_meta

    assert modes_meta({}) == {}
    assert modes_meta({"a": 0o100644, "b": 0o100644}) == {}
    assert modes_meta({"a": 0o100600, "b": 0o100600, "c": 0o100644}) == {"mode": "0600", "modes": {"c": "0644"}}
    assert modes_meta({"a": 0o100644, "x": 0o100755}) == {"modes": {"x": "0755"}}  # a tie goes to 0644
    assert modes_meta({"a": 0o104755}) == {"mode": "0755"}  # set-id bits are never kept


def test_links_are_restored_as_links(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "b.csv").write_bytes(b"b")
    (src / "a-link").symlink_to("sub/b.csv")
    (src / "z.csv").write_bytes(b"z")
    digest = store.put_dir(src, H.FileHasher(H.NullMemo()))[0]
    dest = tmp_path / "dest"
    store.write(store.check("dir", digest, None), dest)
    assert (dest / "a-link").is_symlink() and os.readlink(dest / "a-link") == "sub/b.csv"
    assert (dest / "z.csv").read_bytes() == b"z" and (dest / "sub" / "b.csv").read_bytes() == b"b"
    link_digest = store.put_bytes(H.link_bytes("../elsewhere.txt"))
    single = tmp_path / "single-link"
    store.write(store.check("link", link_digest, 16), single)
    assert single.is_symlink() and os.readlink(single) == "../elsewhere.txt"


def test_a_staged_restore_is_invisible_until_published_and_leaves_nothing_when_discarded(
    store: ObjectStore, tmp_path: Path
) -> None:
    digest = store.put_bytes(b"staged")
    dest = tmp_path / "out.txt"
    dest.write_bytes(b"current")
    staged = store.stage(store.check("file", digest, 6), dest)
    assert dest.read_bytes() == b"current" and len(leftovers(tmp_path)) == 1
    staged.discard()
    assert dest.read_bytes() == b"current" and leftovers(tmp_path) == []
    staged = store.stage(store.check("file", digest, 6), dest)
    staged.publish()
    staged.discard()
    assert dest.read_bytes() == b"staged" and leftovers(tmp_path) == []
