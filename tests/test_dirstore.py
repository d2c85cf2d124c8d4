"""Storing and restoring directories of many small files (consist.dirstore): the same guarantees as one file at a time.

Real files, a real object store and a real SQLite run index as the memo. The
threaded path is taken by every directory of at least ``PARALLEL_MIN`` files;
the tests below cross that line on purpose.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path

import pytest

from consist import dirstore
from consist import hashing as H
from consist.errors import ConsistError, IntegrityError
from consist.objects import ObjectStore
from consist.store.sqlite import SQLiteIndex
from files import sha


@pytest.fixture
def index(tmp_path: Path):
    ix = SQLiteIndex(tmp_path / "ix" / "index.sqlite")
    yield ix
    ix.close()


@pytest.fixture
def store(tmp_path: Path, index: SQLiteIndex) -> ObjectStore:
    return ObjectStore(tmp_path / "objects", memo=index)


def make_tree(root: Path, n: int, *, size: int = 512) -> dict[str, bytes]:
    """n files in 10 subfolders, every file's bytes distinct; returns relative name -> bytes."""
    files = {}
    for i in range(n):
        rel = f"d{i % 10}/f{i:05d}.bin"
        data = (f"{i}:".encode() * (size // 4 + 1))[:size]
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        files[rel] = data
    return files


def objects_in(store: ObjectStore) -> set[str]:
    return {d for d, _ in store.all_objects()}


def written_files(folder: Path, n: int = 3) -> list[str]:
    """n one-byte files in ``folder``; their paths as text."""
    for i in range(n):
        (folder / f"{i}").write_bytes(b"x")
    return [os.fspath(folder / f"{i}") for i in range(n)]


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The descriptors os.fsync is called with from now on (each still fsynced)."""
    calls: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd)))
    return calls


@pytest.mark.parametrize("n", [3, dirstore.PARALLEL_MIN + 45])
def test_a_directory_is_stored_file_by_file_and_restored_byte_for_byte(
    tmp_path: Path, store: ObjectStore, index: SQLiteIndex, n: int
) -> None:
    src = tmp_path / "out"
    files = make_tree(src, n)
    (src / "d0" / "link").symlink_to("/etc/passwd")
    digest, total, manifest = store.put_dir(src, H.FileHasher(index))

    assert total == sum(len(b) for b in files.values())
    by_rel = {e[0]: e for e in manifest}
    for rel, data in files.items():
        assert by_rel[rel][1:3] == [sha(data), len(data)]
        obj = store.path_of(sha(data))
        assert obj.read_bytes() == data
        assert stat.S_IMODE(obj.stat().st_mode) == 0o444
    assert by_rel["d0/link"][3] == {"symlink": "/etc/passwd"}
    assert digest == sha(H.manifest_bytes(manifest))
    assert sorted(by_rel) == sorted([*files, "d0/link"])  # the manifest is sorted and complete
    assert [e[0] for e in manifest] == sorted(e[0] for e in manifest)
    assert list((store.root / "tmp").iterdir()) == []  # every temporary file was renamed into place

    dest = tmp_path / "restored"
    store.write(store.check("dir", digest, total), dest)
    for rel, data in files.items():
        assert (dest / rel).read_bytes() == data
    assert os.readlink(dest / "d0" / "link") == "/etc/passwd"


def test_content_met_twice_or_already_stored_is_written_once(
    tmp_path: Path, store: ObjectStore, index: SQLiteIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "out"
    for i in range(dirstore.PARALLEL_MIN + 10):
        (src / f"s{i % 3}").mkdir(parents=True, exist_ok=True)
        (src / f"s{i % 3}" / f"{i}.txt").write_bytes(b"same bytes")
    (src / "other.txt").write_bytes(b"other")
    store.put_bytes(b"other")  # stored before
    writes: list[str] = []
    real_open = os.open

    def counting_open(path, flags, *args, **kw):
        if flags & os.O_CREAT:
            writes.append(os.fspath(path))
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(dirstore.os, "open", counting_open)
    digest, _, manifest = store.put_dir(src, H.FileHasher(index))
    monkeypatch.undo()
    assert len(writes) == 2  # "same bytes" once, and the manifest; "other" was in the store
    assert objects_in(store) == {sha(b"same bytes"), sha(b"other"), digest}
    assert {e[1] for e in manifest} == {sha(b"same bytes"), sha(b"other")}


def test_large_files_in_a_directory_are_streamed_and_remembered(
    tmp_path: Path, store: ObjectStore, index: SQLiteIndex
) -> None:
    src = tmp_path / "out"
    src.mkdir()
    big = os.urandom(dirstore.SMALL_FILE + 1)
    mid = os.urandom(ObjectStore.memo_min)
    small = b"small"
    (src / "big.bin").write_bytes(big)
    (src / "mid.bin").write_bytes(mid)
    (src / "small.bin").write_bytes(small)
    store.put_dir(src, H.FileHasher(index))
    for data in (big, mid, small):
        assert store.path_of(sha(data)).read_bytes() == data
    algo = ObjectStore.memo_algo
    remembered = {
        r["hash"] for r in index.query("SELECT hash FROM hash_memo WHERE algo = ?", (algo,))
    }  # objects the memo trusts without reading them again
    assert sha(big) in remembered and sha(mid) in remembered
    assert sha(small) not in remembered  # re-hashing 5 bytes costs less than a database write


def test_a_failure_while_storing_publishes_nothing_and_leaves_no_temporary_file(
    tmp_path: Path, store: ObjectStore, index: SQLiteIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "out"
    make_tree(src, dirstore.PARALLEL_MIN + 20)
    real_write = os.write
    calls = {"n": 0}

    def full_disk(fd: int, data) -> int:
        calls["n"] += 1
        if calls["n"] == 150:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(dirstore.os, "write", full_disk)
    with pytest.raises(OSError) as info:
        store.put_dir(src, H.FileHasher(index))
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC
    assert objects_in(store) == set()  # nothing was renamed into place
    assert list((store.root / "tmp").iterdir()) == []


def test_a_durable_store_flushes_objects_to_disk_before_they_are_renamed_into_place(
    tmp_path: Path, index: SQLiteIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ObjectStore(tmp_path / "objects", memo=index, durable=True)
    src = tmp_path / "out"
    make_tree(src, 20)
    events: list[str] = []
    real_flush, real_replace = dirstore._flush, os.replace

    def flush(paths: list[str]) -> None:
        assert all(os.path.exists(p) for p in paths) and not objects_in(store)
        events.append(f"flush {len(paths)}")
        real_flush(paths)

    def replace(a, b) -> None:
        events.append("rename")
        real_replace(a, b)

    monkeypatch.setattr(dirstore, "_flush", flush)
    monkeypatch.setattr("consist.objects.os.replace", replace)
    store.put_dir(src, H.FileHasher(index))
    assert events[0] == "flush 21"  # 20 files and the manifest, in one flush, before any rename
    assert events[1:] == ["rename"] * 21


def test_a_store_that_is_not_durable_flushes_nothing(
    tmp_path: Path, store: ObjectStore, index: SQLiteIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "out"
    make_tree(src, 20)
    (tmp_path / "one.txt").write_bytes(b"one file")
    flushed: list[object] = []
    monkeypatch.setattr(dirstore, "_flush", lambda paths: flushed.append(paths))
    monkeypatch.setattr(os, "fsync", lambda fd: flushed.append(fd))
    digest, _, _ = store.put_dir(src, H.FileHasher(index))
    store.put_file(tmp_path / "one.txt", H.FileHasher(index))
    store.put_bytes(b"some bytes")
    assert flushed == []
    assert store.path_of(digest).is_file() and store.path_of(sha(b"one file")).read_bytes() == b"one file"


def test_a_durable_store_fsyncs_single_files_and_bytes(tmp_path: Path, index: SQLiteIndex, synced: list[int]) -> None:
    store = ObjectStore(tmp_path / "objects", memo=index, durable=True)
    (tmp_path / "one.txt").write_bytes(b"one file")
    store.put_file(tmp_path / "one.txt", H.FileHasher(index))
    store.put_bytes(b"some bytes")
    assert len(synced) == 2


def test_without_syncfs_every_file_is_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, synced: list[int]
) -> None:
    paths = written_files(tmp_path)
    monkeypatch.setattr(dirstore, "_SYNCFS", False)
    dirstore._flush(paths)
    assert len(synced) == 3
    monkeypatch.setattr(dirstore, "_SYNCFS", lambda fd: -1)  # syncfs failing falls back too
    dirstore._flush(paths)
    assert len(synced) == 6


def test_damaged_objects_among_many_are_all_found_and_nothing_is_published(
    tmp_path: Path, store: ObjectStore, index: SQLiteIndex
) -> None:
    src = tmp_path / "out"
    files = make_tree(src, dirstore.PARALLEL_MIN + 30)
    digest, total, _ = store.put_dir(src, H.FileHasher(index))
    damaged = [sha(files[rel]) for rel in sorted(files)[::97]]
    for d in damaged:  # same size, other bytes: only hashing finds it
        p = store.path_of(d)
        p.chmod(0o644)
        p.write_bytes(b"\0" * p.stat().st_size)
    checked = store.check("dir", digest, total)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(IntegrityError):
        store.write(checked, dest)
    assert [p.name for p in dest.iterdir()] == ["keep.txt"]  # the destination is as it was
    assert [p.name for p in tmp_path.iterdir() if ".consist-" in p.name] == []  # no build directory left
    for d in damaged:  # every damaged object was dropped, so the next store repairs it
        assert not store.path_of(d).exists()
    healthy = set(map(sha, files.values())) - set(damaged)
    assert all(store.path_of(d).exists() for d in healthy)


def test_in_threads_keeps_order_and_raises_the_first_error() -> None:
    items = list(range(dirstore.PARALLEL_MIN * 3 + 7))
    assert dirstore.in_threads(lambda chunk: [i * 2 for i in chunk], items) == [i * 2 for i in items]
    seen: list[int] = []

    def work(chunk):
        seen.extend(chunk)
        if 500 in chunk:
            raise ValueError("boom")
        return list(chunk)

    with pytest.raises(ValueError, match="boom"):
        dirstore.in_threads(work, items)
    assert sorted(seen) == items  # every chunk ran before the error came back
    assert dirstore.in_threads(lambda chunk: [len(chunk)], [1, 2]) == [2]  # few items: one call, no threads


def test_tracker_durable_flushes_outputs_and_commits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from consist import Tracker

    def step() -> Path:
        out = tmp_path / "runs" / "o.txt"
        out.write_text("x")
        return out

    with Tracker(tmp_path / "runs") as t:
        assert not t.durable and not t._objects.durable
        assert t._index.query_one("PRAGMA synchronous")["synchronous"] == 1  # NORMAL
    monkeypatch.setenv("CONSIST_DURABLE", "1")
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    with Tracker(tmp_path / "runs") as t:
        assert t.durable and t._objects.durable
        assert t.spec().kwargs()["durable"] is True  # workers of a sweep open it durable too
        assert t._index.query_one("PRAGMA synchronous")["synchronous"] == 2  # FULL
        t.run(step, name="s", outputs=["o"])
    assert synced  # the output's object was flushed before it was renamed into place
    with Tracker(tmp_path / "runs", durable=False) as t:
        assert not t.durable


def test_reading_a_file_in_pieces_gets_all_of_it_up_to_the_limit() -> None:
    import threading

    r, w = os.pipe()  # a pipe hands its bytes over in the pieces they were written in
    pieces = [b"a" * 700, b"b" * 500, b"c" * 300]

    def writer() -> None:
        for p in pieces:
            os.write(w, p)
            time.sleep(0.05)
        os.close(w)

    t = threading.Thread(target=writer)
    t.start()
    try:
        assert dirstore._read_upto(r, 10_000) == b"".join(pieces)  # short reads until the end
    finally:
        t.join()
        os.close(r)
    r, w = os.pipe()
    os.write(w, b"x" * 100)
    os.close(w)
    try:
        assert dirstore._read_upto(r, 40) == b"x" * 40  # never more than the limit
        assert dirstore._read_upto(r, 100) == b"x" * 60  # the rest, then the end
        assert dirstore._read_upto(r, 10) == b""
    finally:
        os.close(r)


def test_small_means_up_to_the_limit_and_links_are_never_followed(tmp_path: Path, store: ObjectStore) -> None:
    batch = dirstore.Batch(store)
    exact = tmp_path / "exact.bin"
    exact.write_bytes(b"e" * dirstore.SMALL_FILE)
    over = tmp_path / "over.bin"
    over.write_bytes(b"o" * (dirstore.SMALL_FILE + 1))
    try:
        assert batch.add_file(str(exact), dirstore.SMALL_FILE) == (sha(exact.read_bytes()), dirstore.SMALL_FILE)
        assert batch.add_file(str(over), dirstore.SMALL_FILE + 1) is None  # streamed by put_file instead
        assert batch.add_file(str(over), 10) is None  # seen small, found larger: streamed too
        (tmp_path / "link").symlink_to(exact)
        with pytest.raises(ConsistError, match="symbolic link"):
            batch.add_file(str(tmp_path / "link"), 10)
        batch.publish()
    finally:
        batch.discard()
    assert store.path_of(sha(exact.read_bytes())).read_bytes() == exact.read_bytes()


def test_a_store_without_a_database_memo_stores_large_directory_files_too(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "objects")  # no memo that takes many entries at once
    src = tmp_path / "out"
    src.mkdir()
    big = os.urandom(ObjectStore.memo_min)
    (src / "big.bin").write_bytes(big)
    store.put_dir(src, H.FileHasher(H.NullMemo()))
    assert store.path_of(sha(big)).read_bytes() == big


def test_members_of_a_directory_outside_every_root_are_located_by_absolute_path(tmp_path: Path) -> None:
    from consist import Tracker

    outside = tmp_path / "elsewhere" / "tables"

    def step() -> Path:
        outside.mkdir(parents=True, exist_ok=True)
        (outside / "a.csv").write_text("a")
        return outside

    with Tracker(tmp_path / "runs", project_root=tmp_path / "project", allow_external_paths=True) as t:
        made = t.run(step, name="ext", outputs=["tables"])
        members = t._index.members_of(made.run_id, made.outputs["tables"].id)
    assert [(m["link_key"], m["location"]) for m in members] == [("a.csv", str(outside.resolve() / "a.csv"))]


def test_short_reads_are_joined_up_to_the_limit_and_no_further(monkeypatch: pytest.MonkeyPatch) -> None:
    r, w = os.pipe()
    os.write(w, b"abcdefgh")
    os.close(w)
    real_read = os.read
    asked: list[int] = []

    def short(fd: int, n: int) -> bytes:  # a network file system hands over at most 3 bytes a call
        asked.append(n)
        return real_read(fd, min(n, 3))

    monkeypatch.setattr(dirstore.os, "read", short)
    try:
        assert dirstore._read_upto(r, 5) == b"abcde"  # "abc", then only the 2 bytes still allowed
        assert asked == [5, 2]
        assert dirstore._read_upto(r, 10) == b"fgh"  # a short read, then the end
        asked.clear()
        assert dirstore._read_upto(r, 4) == b""
        assert asked == [4]  # at the end: one read, not a second
    finally:
        os.close(r)


@pytest.mark.parametrize("n", [dirstore.PARALLEL_MIN - 1, dirstore.PARALLEL_MIN])
def test_from_parallel_min_items_on_the_work_runs_on_threads_threads(n: int) -> None:
    import threading

    names: set[str] = set()
    # Each worker's first chunk waits until THREADS workers have started: however loaded the
    # machine, the pool must then have started them all (and a pool of more threads breaks it).
    started = threading.Barrier(dirstore.THREADS, timeout=10)

    def work(chunk):
        name = threading.current_thread().name
        if name not in names and name != threading.main_thread().name:
            names.add(name)
            started.wait()
        names.add(name)
        return [i + 1 for i in chunk]

    assert dirstore.in_threads(work, list(range(n))) == list(range(1, n + 1))
    if n < dirstore.PARALLEL_MIN:
        assert names == {threading.current_thread().name}  # one call, in the caller's thread
    else:
        assert len(names) == dirstore.THREADS
        assert all(name.startswith("consist-files") for name in names)


def test_a_stored_object_of_the_wrong_size_is_written_again(tmp_path: Path, store: ObjectStore) -> None:
    data = b"the real content"
    store.put_bytes(data)
    obj = store.path_of(sha(data))
    obj.chmod(0o644)
    obj.write_bytes(data[:4])  # truncated by a crash or a full disk
    batch = dirstore.Batch(store)
    assert batch.add_bytes(data) == sha(data)
    batch.publish()
    assert obj.read_bytes() == data


def test_a_link_planted_at_a_temporary_name_is_never_written_through(
    tmp_path: Path, store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    planted = tmp_path / "objects" / "tmp" / "guessed"
    planted.parent.mkdir(parents=True)
    os.symlink(victim, f"{planted}.1")
    monkeypatch.setattr(store, "_tmp", lambda: planted)
    batch = dirstore.Batch(store)
    with pytest.raises(FileExistsError):
        batch.add_bytes(b"attacker controls nothing")
    batch.discard()
    assert victim.read_text() == "untouched"


def test_content_arriving_twice_at_once_leaves_no_orphaned_temporary_file(
    tmp_path: Path, store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = dirstore.Batch(store)
    data = b"written by two threads"
    real_has = store.has
    calls = {"n": 0}

    def has(digest: str, size: int | None = None) -> bool:
        calls["n"] += 1
        if calls["n"] == 1:  # a second thread meets the same bytes while the first asks the store
            assert batch.add_bytes(data) == sha(data)
        return real_has(digest, size)

    monkeypatch.setattr(store, "has", has)
    assert batch.add_bytes(data) == sha(data)
    batch.publish()
    assert store.path_of(sha(data)).read_bytes() == data
    assert list((store.root / "tmp").iterdir()) == []


def test_flushing_many_files_is_one_syncfs_and_a_single_file_one_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, synced: list[int]
) -> None:
    paths = written_files(tmp_path)
    monkeypatch.setattr(dirstore, "_SYNCFS", None)  # as in a fresh process: syncfs is looked up on first use
    dirstore._flush(paths)
    assert callable(dirstore._SYNCFS) and synced == []  # this Linux has syncfs: no fsync per file
    dirstore._flush(paths[:2])
    assert synced == []
    dirstore._flush(paths[:1])  # one file: its own fsync is cheaper than flushing the whole file system
    assert len(synced) == 1


def test_without_syncfs_in_the_c_library_every_file_is_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, synced: list[int]
) -> None:
    import ctypes

    paths = written_files(tmp_path)

    def no_libc(*args, **kwargs):
        raise OSError("no C library here")

    monkeypatch.setattr(dirstore, "_SYNCFS", None)
    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    dirstore._flush(paths)
    assert len(synced) == 3


def test_the_progress_bar_advances_by_every_small_file_stored(tmp_path: Path, store: ObjectStore) -> None:
    class Bar:
        done = 0

        def advance(self, n: int) -> None:
            self.done += n

    files = make_tree(tmp_path / "out", dirstore.PARALLEL_MIN + 4, size=100)
    listed = [(os.fspath(tmp_path / "out" / rel), len(data)) for rel, data in files.items()]
    bar = Bar()
    batch = dirstore.Batch(store)
    try:
        stored = batch.add_files(listed, bar)
        assert bar.done == sum(len(d) for d in files.values())
        assert stored == [(sha(d), len(d)) for d in files.values()]
        assert len(batch.add_files(listed[:3])) == 3  # no bar: nothing to advance
        batch.publish()
    finally:
        batch.discard()


def test_the_memo_learns_large_objects_in_one_call_or_one_by_one(
    tmp_path: Path, store: ObjectStore, index: SQLiteIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "out"
    src.mkdir()
    big = [os.urandom(ObjectStore.memo_min + i) for i in range(3)]
    for i, data in enumerate(big):
        (src / f"{i}.bin").write_bytes(data)

    def one_by_one(*args):
        raise AssertionError("a database memo learns a directory's objects in one transaction")

    monkeypatch.setattr(index, "memo_put", one_by_one)
    store.put_dir(src, H.FileHasher(H.NullMemo()))
    monkeypatch.undo()
    for data in big:
        st = os.stat(store.path_of(sha(data)))
        assert index.memo_get(H.stat_key(st), ObjectStore.memo_algo) == sha(data)

    class DictMemo:  # a memo without memo_put_many
        def __init__(self) -> None:
            self.entries: dict[tuple, str] = {}

        def memo_get(self, key, algo):
            return self.entries.get((key, algo))

        def memo_put(self, key, algo, digest) -> None:
            self.entries[(key, algo)] = digest

    memo = DictMemo()
    other = ObjectStore(tmp_path / "objects2", memo=memo)
    other.put_dir(src, H.FileHasher(H.NullMemo()))
    expected = {}
    for data in big:
        st = os.stat(other.path_of(sha(data)))
        expected[(H.stat_key(st), ObjectStore.memo_algo)] = sha(data)
    assert memo.entries == expected


def test_teaching_the_memo_takes_no_sequence_number(tmp_path: Path, store: ObjectStore, index: SQLiteIndex) -> None:
    src = tmp_path / "out"
    src.mkdir()
    for i in range(3):
        (src / f"{i}.bin").write_bytes(os.urandom(ObjectStore.memo_min + i))
    before = index.max_seq()
    store.put_dir(src, H.FileHasher(H.NullMemo()))
    assert index.memo_get(H.stat_key(os.stat(store.path_of(sha((src / "0.bin").read_bytes())))), store.memo_algo)
    assert index.max_seq() == before  # no run changed: the next query has nothing to merge into DuckDB
