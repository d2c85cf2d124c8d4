"""Storage failures are named for what they are, and leave nothing half-written.

A damaged DuckDB file is reported as damaged (not as locked by another
program), with the way to rebuild it from the run index. A full disk is
reported as "No space left on device" with the fix, whichever of the run
index, the DuckDB file or the object store hits it; the failed write is rolled
back and everything works again once there is space. The full-disk tests run on
real small file systems: a tmpfs with size= and a loop-mounted ext4 (root only).
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

import consist
from consist import Tracker
from consist.store.duck import DuckStore
from consist.store.sqlite import SQLiteIndex, index_path_for

TOO_LATE = "cannot rollback - no transaction is active"


def nothing(n: int) -> None:
    return None


def duck(db: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


# --------------------------------------------------------------------- a damaged DuckDB file


def test_a_damaged_duckdb_file_is_reported_as_damaged_with_the_rebuild(tmp_path: Path) -> None:
    folder = tmp_path / "locks"  # a path that mentions locks must not make it look locked
    folder.mkdir()
    db = folder / "prov.duckdb"
    index = SQLiteIndex(index_path_for(db))
    try:
        index.upsert_run({"id": "r1", "status": "completed", "cache_hit": 0})
        DuckStore(db, index).sync()
        db.write_bytes(b"not a database" * 1000)
        index.upsert_run({"id": "r2", "status": "completed", "cache_hit": 0})
        store = DuckStore(db, index, lock_timeout=3.0)
        started = time.monotonic()
        with pytest.raises(consist.StoreError) as err:
            store.sync()
        assert time.monotonic() - started < 2  # no waiting for a lock that nobody holds
        assert not isinstance(err.value, consist.StoreLockedError)
        msg = str(err.value)
        assert f"The provenance database {db} is damaged" in msg and "not a valid DuckDB database file" in msg
        assert "keeps the file open" not in msg
        assert f"mv {db} {db}.damaged" in msg and "rebuilds it from the run index" in msg
        os.replace(db, f"{db}.damaged")  # what the message says to do
        assert store.sync() == 2
        assert sorted(r[0] for r in duck(db, "SELECT id FROM run")) == ["r1", "r2"]
    finally:
        index.close()


def test_a_damaged_block_is_reported_as_damaged_by_queries_and_close_only_warns(make_tracker) -> None:
    t = make_tracker(code_version="v1")
    for n in range(300):
        t.run(nothing, name="s", config={"n": n, "pad": "z" * 2000})
    t.sync()
    db = t.db_path
    data = bytearray(db.read_bytes())
    for off in range(len(data) // 2, len(data), 4096):
        data[off : off + 64] = b"\xff" * 64
    db.write_bytes(bytes(data))
    last = t.run(nothing, name="s", config={"n": -1})
    with pytest.raises(consist.StoreError, match=r"is damaged: .*(checksum|Corrupt)") as err:
        t.get_run(last.run_id)  # a query of the DuckDB file (lookups such as find_runs read the run index)
    assert not isinstance(err.value, consist.StoreLockedError)
    with pytest.warns(consist.ConsistWarning, match="The runs stay in the run index"):
        t.close()
    os.replace(db, f"{db}.damaged")
    again = make_tracker(code_version="v1")
    assert len(again.find_runs(limit=None)) == 301  # nothing lost
    assert again.get_run(last.run_id) is not None  # the DuckDB file was rebuilt from the run index


# --------------------------------------------------------------------- a full disk


@pytest.fixture(params=["tmpfs", "ext4"])
def small_fs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A small real file system: a 24 MiB tmpfs, or a 32 MiB ext4 image on a loop device."""
    kind = request.param
    if os.geteuid() != 0:
        pytest.skip(f"mounting a {kind} needs root")
    mnt = tmp_path / f"{kind}-mount"
    mnt.mkdir()
    if kind == "tmpfs":
        cmd = ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)]
    else:
        if not shutil.which("mkfs.ext4"):
            pytest.skip("needs mkfs.ext4 (e2fsprogs) to build an ext4 file system")
        image = tmp_path / "ext4.img"
        with open(image, "wb") as f:
            f.truncate(32 << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
        cmd = ["mount", "-o", "loop", str(image), str(mnt)]
    mounted = subprocess.run(cmd, capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a {kind} here: {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True, capture_output=True)


def fill(directory: Path, leave: int = 0) -> Path:
    """Fill the file system with one file, down to the last byte; then free ``leave`` bytes of it."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        chunk = b"\0" * (1 << 20)
        while chunk:
            try:
                os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                chunk = chunk[: len(chunk) // 2]
        if leave:
            os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave))
    finally:
        os.close(fd)
    return filler


def index_rows(db: Path) -> list[tuple]:
    con = sqlite3.connect(index_path_for(db))
    try:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        return con.execute("SELECT id, status, ended_at, pid FROM run").fetchall()
    finally:
        con.close()


def test_a_full_disk_under_the_run_index_says_so_and_records_nothing_half(small_fs: Path) -> None:
    db = small_fs / "prov.duckdb"
    t = Tracker(small_fs / "runs", db_path=db, project_root=small_fs, code_version="v1")
    try:
        done = [t.run(nothing, name="s", config={"n": 0}).run_id]
        t.sync()
        filler = fill(small_fs)
        with pytest.raises(consist.StoreError) as err:
            for n in range(1, 200):  # each records a run with a large config, until the index cannot grow
                done.append(t.run(nothing, name="s", config={"n": n, "pad": "x" * 50_000}).run_id)
        msg = str(err.value)
        assert f"No space left on device for the run index {index_path_for(db)}" in msg
        assert f"df -h {index_path_for(db).parent}" in msg and "nothing of it was recorded" in msg
        assert TOO_LATE not in msg and TOO_LATE not in repr(err.value.__cause__)
        rows = index_rows(db)  # the index is intact
        completed = {r[0] for r in rows if r[1] == "completed"}
        assert completed == set(done)  # every call that returned, and no other run, is complete
        opened = [r for r in rows if r[1] != "completed"]  # at most the failed call's run, opened before
        assert len(opened) <= 1 and all(r[1] == "running" and r[3] == os.getpid() for r in opened)

        filler.unlink()  # space again: the same tracker carries on
        done.append(t.run(nothing, name="s", config={"n": "after"}).run_id)
        t.sync()
        assert set(done) <= {r[0] for r in duck(db, "SELECT id FROM run WHERE status = 'completed'")}
    finally:
        t.close()


def test_a_full_disk_under_the_duckdb_file_rolls_the_merge_back(small_fs: Path) -> None:
    db = small_fs / "prov.duckdb"
    t = Tracker(small_fs / "runs", db_path=db, project_root=small_fs, code_version="v1")
    try:
        t.run(nothing, name="s", config={"n": -1})
        t.sync()
        for n in range(300):
            t.run(nothing, name="s", config={"n": n, "pad": "y" * 3000})
        before = duck(db, "SELECT count(*) FROM run"), duck(db, "SELECT * FROM consist_meta ORDER BY key")
        filler = fill(small_fs)
        with pytest.raises(consist.StoreError) as err:
            t.sync()
        msg = str(err.value)
        assert f"No space left on device for the provenance database {db}" in msg
        assert f"df -h {small_fs}" in msg and "the merge was rolled back" in msg
        assert TOO_LATE not in msg
        after = duck(db, "SELECT count(*) FROM run"), duck(db, "SELECT * FROM consist_meta ORDER BY key")
        assert after == before  # the DuckDB file is as it was, and it opens
        filler.unlink()
        assert t.sync() > 0
        assert duck(db, "SELECT count(*) FROM run") == [(301,)]
    finally:
        t.close()


def test_a_full_disk_under_the_object_store_says_so_and_leaves_no_partial_object(small_fs: Path) -> None:
    db = small_fs / "prov.duckdb"
    t = Tracker(small_fs / "runs", db_path=db, project_root=small_fs, code_version="v1")
    big = small_fs / "big.bin"
    big.write_bytes(os.urandom(6 << 20))

    def produce() -> Path:
        return big

    try:
        t.run(nothing, name="s", config={"n": 0})  # the index has its pages
        filler = fill(small_fs, leave=2 << 20)  # room for the index, not for a copy of the output
        with pytest.raises(consist.StoreError) as err:
            t.run(produce, name="produce", outputs=["big"])
        msg = str(err.value)
        assert f"No space left on device to store the output {big}" in msg
        assert "df -h" in msg and "no partial object is left in the store" in msg
        tmp = small_fs / "runs" / ".consist" / "objects" / "tmp"
        assert not tmp.exists() or list(tmp.iterdir()) == []  # the partial copy is gone
        assert [d for d, _ in t._objects.all_objects()] == []
        failed = t.find_runs(model="produce")
        assert [r.status for r in failed] == ["failed"]

        filler.unlink()
        ok = t.run(produce, name="produce", outputs=["big"])
        assert not ok.cache_hit and t._objects.verify(ok.outputs["big"].hash).stat().st_size == 6 << 20
    finally:
        t.close()
