"""prune_store() never removes an object that a run in progress in another process holds.

Runs lease what they store (until their record gets its final status) and what
they restore (until the restore is over); prune_store() deletes under the run
index's write lock after reading the leases again, and a run that stored an
object which a prune removed before the lease stores it again. ``tracker.run``
records its outputs as soon as its function returns, without a lease: it looks
once more after that record, and stores again what a prune removed before it.
Each test runs the run in progress in a real second process, which stops at the
point where a prune would hurt and waits for the test to prune.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import pytest

from consist import Tracker
from consist.errors import ConsistWarning

FILE_CONTENT = b"written by a run in progress\n" * 1000
DIR_FILES = {"a.txt": b"member a\n" * 100, "sub/b.txt": b"member b\n" * 100}

_CHILD = textwrap.dedent(
    """
    import json, sys, time, warnings
    from pathlib import Path
    from consist import Tracker
    from consist.objects import ObjectStore

    base, db, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

    def signal(name):
        (base / name).touch()

    def wait(name):
        while not (base / name).exists():
            time.sleep(0.02)

    def pause_once(cls, names, at):
        done = []
        for name in names:
            if not hasattr(cls, name):
                continue
            orig = getattr(cls, name)

            def wrapped(self, *a, _orig=orig, **k):
                result = _orig(self, *a, **k)
                if not done:
                    done.append(1)
                    signal(at)
                    wait("go")
                return result

            def before(self, *a, _orig=orig, **k):
                if not done:
                    done.append(1)
                    signal(at)
                    wait("go")
                return _orig(self, *a, **k)

            setattr(cls, name, before if at == "restoring" else wrapped)

    t = Tracker(base / "runs", db_path=db, project_root=base, code_version="v1")
    if mode in ("writer", "killed"):
        t.begin_run(mode, "writer_model")
        f = base / f"{mode}.bin"
        f.write_bytes(json.loads(sys.argv[4]).encode())
        t.log_output(f)
        d = base / f"{mode}_dir"
        for rel, text in json.loads(sys.argv[5]).items():
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_bytes(text.encode())
        t.log_output(d)
        signal("stored")
        if mode == "killed":
            time.sleep(600)
        wait("go")
        t.end_run()
    elif mode == "stored_before":
        pause_once(ObjectStore, ["put_file"], "put")
        t.begin_run("late", "late_model")
        f = base / "late.bin"
        f.write_bytes(json.loads(sys.argv[4]).encode())
        t.log_output(f)
        t.end_run()
    elif mode in ("run_stored_before", "run_changed"):
        pause_once(ObjectStore, ["put_file"], "put")

        def late():
            f = base / "late.bin"
            f.write_bytes(json.loads(sys.argv[4]).encode())
            return f

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            r = t.run(late, name="late", outputs=["o"])
        print(json.dumps({"hash": r.outputs["o"].hash, "warnings": [str(w.message) for w in caught]}))
    elif mode == "run_two_outputs":
        real_put, calls = ObjectStore.put_file, []

        def put_then_pause(self, *a, **k):
            result = real_put(self, *a, **k)
            calls.append(1)
            if len(calls) == 2:  # both outputs are stored; the run is not recorded yet
                signal("put")
                wait("go")
            return result

        ObjectStore.put_file = put_then_pause

        def two():
            (base / "first.bin").write_bytes(b"the first output, new. " * 50)
            (base / "second.bin").write_bytes(json.loads(sys.argv[4]).encode())
            return {"a": base / "first.bin", "b": base / "second.bin"}

        r = t.run(two, name="two", outputs=["a", "b"])
        print(json.dumps({k: r.outputs[k].hash for k in ("a", "b")}))
    elif mode == "run_dir_stored_before":
        pause_once(ObjectStore, ["put_dir"], "put")

        def late_dir():
            d = base / "late_dir"
            for rel, text in json.loads(sys.argv[4]).items():
                (d / rel).parent.mkdir(parents=True, exist_ok=True)
                (d / rel).write_bytes(text.encode())
            return d

        r = t.run(late_dir, name="late_dir", outputs=["d"])
        print(json.dumps({"hash": r.outputs["d"].hash}))
    elif mode == "restorer":
        # Stop after the objects were checked, before they are copied (stage() or write()).
        pause_once(ObjectStore, ["stage", "write"], "restoring")

        def produce():
            raise AssertionError("a hit must not run the step")

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                r = t.run(produce, name="produce", outputs=["o"])
                hit = r.cache_hit
            except AssertionError:
                hit = False
        out = base / "restored.bin"
        print(json.dumps({"hit": hit, "content": out.read_text() if out.exists() else None,
                          "warnings": [str(w.message) for w in caught]}))
    t.close()
    """
)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Child:
    """The second process, and the files it signals with."""

    def __init__(self, base: Path, mode: str, *args: str) -> None:
        self.base = base
        db = base / "provenance.duckdb"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(base), str(db), mode, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def reached(self, name: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not (self.base / name).exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"the second process ended early:\n{self.proc.stderr.read()}")
            assert time.monotonic() < deadline, f"the second process did not reach {name!r}"
            time.sleep(0.02)

    def go(self) -> str:
        (self.base / "go").touch()
        out, err = self.proc.communicate(timeout=120)
        assert self.proc.returncode == 0, err
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.communicate(timeout=60)


def test_outputs_stored_by_a_run_in_progress_are_not_pruned(tmp_path: Path, make_tracker) -> None:
    child = Child(tmp_path, "writer", json.dumps(FILE_CONTENT.decode()), json.dumps(
        {k: v.decode() for k, v in DIR_FILES.items()}))  # fmt: skip
    try:
        child.reached("stored")
        t = make_tracker(code_version="v1")
        report = t.prune_store()  # no completed run needs these: only the lease keeps them
        held = [sha(FILE_CONTENT), *(sha(v) for v in DIR_FILES.values())]
        assert all(t._objects.has(h) for h in held), report
        assert report["removed"] == 0 and report["in_use"] >= 4  # the file, the manifest, two members
        child.go()
    finally:
        child.kill()
    assert t._index.query("SELECT * FROM lease WHERE run_id = 'writer'") == []  # ended with the run
    (tmp_path / "writer.bin").unlink()
    (tmp_path / "writer_dir" / "a.txt").unlink()
    run = t.begin_run("writer", "writer_model")
    assert run.cache_hit and run.cache_source == "writer"
    assert (tmp_path / "writer.bin").read_bytes() == FILE_CONTENT
    assert (tmp_path / "writer_dir" / "a.txt").read_bytes() == DIR_FILES["a.txt"]
    t.end_run()


def test_objects_being_restored_in_another_process_are_not_pruned(tmp_path: Path, make_tracker) -> None:
    t = make_tracker(code_version="v1")

    def produce() -> Path:
        p = Path("restored.bin")
        p.write_text("the bytes a hit restores\n" * 100)
        return p

    first = t.run(produce, name="produce", outputs=["o"])
    Path("restored.bin").unlink()
    child = Child(tmp_path, "restorer")
    try:
        child.reached("restoring")  # its objects are checked; the copy has not started
        report = t.prune_store(older_than=timedelta(0))  # the producing run is outside the window
        assert t._objects.has(first.outputs["o"].hash), report
        assert report["removed"] == 0 and report["in_use"] == 1
        got = json.loads(child.go())
    finally:
        child.kill()
    assert got == {"hit": True, "content": "the bytes a hit restores\n" * 100, "warnings": []}
    # The restore is over (its hit is recorded): the next prune may remove the object.
    assert t.prune_store(older_than=timedelta(0))["removed"] == 1


def test_an_object_pruned_before_the_run_leased_it_is_stored_again(tmp_path: Path, make_tracker) -> None:
    t = make_tracker(code_version="v1")
    content = b"the same bytes as an orphan object\n" * 100
    orphan = t._objects.put_bytes(content)  # as left by an interrupted run: no run needs it
    child = Child(tmp_path, "stored_before", json.dumps(content.decode()))
    try:
        child.reached("put")  # put_file found the object already stored, and has not leased it yet
        report = t.prune_store()
        assert report["removed"] == 1 and not t._objects.has(orphan)
        child.go()
    finally:
        child.kill()
    assert t._objects.has(orphan)  # stored again before the run was recorded
    t._objects.verify(orphan)
    (tmp_path / "late.bin").unlink()
    run = t.begin_run("late", "late_model")
    assert run.cache_hit and (tmp_path / "late.bin").read_bytes() == content
    t.end_run()


def _late(content: bytes, calls: list[str]):
    def late() -> Path:
        calls.append("late")
        f = Path("late.bin")
        f.write_bytes(content)
        return f

    return late


def test_an_object_pruned_before_a_run_was_recorded_is_stored_again(tmp_path: Path, make_tracker) -> None:
    """tracker.run does not lease its outputs: a prune between storing and recording is mended after the record."""
    t = make_tracker(code_version="v1")
    content = b"the same bytes as an orphan object, from tracker.run\n" * 100
    orphan = t._objects.put_bytes(content)  # as left by an interrupted run: no run needs it
    child = Child(tmp_path, "run_stored_before", json.dumps(content.decode()))
    try:
        child.reached("put")  # put_file found the object already stored; the run is not recorded yet
        report = t.prune_store()
        assert report["removed"] == 1 and not t._objects.has(orphan)
        got = json.loads(child.go())
    finally:
        child.kill()
    assert got == {"hash": orphan, "warnings": []}
    assert t._objects.has(orphan)  # stored again right after the run was recorded
    t._objects.verify(orphan)
    assert {r["hash"] for r in t._index.query("SELECT hash FROM object")} >= {orphan}
    (tmp_path / "late.bin").unlink()
    calls: list[str] = []
    run = t.run(_late(b"must not run", calls), name="late", outputs=["o"])
    assert run.cache_hit and calls == [] and (tmp_path / "late.bin").read_bytes() == content


def test_every_output_is_looked_at_again_not_only_the_first(tmp_path: Path, make_tracker) -> None:
    """The first output is in place, the second was pruned: the second is stored again too."""
    t = make_tracker(code_version="v1")
    content = b"the second output, as an orphan object\n" * 100

    def keep() -> Path:  # a completed run needs the first output's bytes: the prune keeps that object
        p = tmp_path / "kept.bin"
        p.write_bytes(b"the first output, new. " * 50)
        return p

    first = t.run(keep, name="keep", outputs=["k"]).outputs["k"].hash
    orphan = t._objects.put_bytes(content)
    child = Child(tmp_path, "run_two_outputs", json.dumps(content.decode()))
    try:
        child.reached("put")
        report = t.prune_store()
        assert t._objects.has(first) and not t._objects.has(orphan), report
        got = json.loads(child.go())
    finally:
        child.kill()
    assert got == {"a": first, "b": orphan} and t._objects.has(orphan)
    t._objects.verify(orphan)


def test_members_of_a_directory_pruned_before_a_run_was_recorded_are_stored_again(tmp_path: Path, make_tracker) -> None:
    t = make_tracker(code_version="v1")
    orphans = [t._objects.put_bytes(v) for v in DIR_FILES.values()]  # the members, left by an interrupted run
    child = Child(tmp_path, "run_dir_stored_before", json.dumps({k: v.decode() for k, v in DIR_FILES.items()}))
    try:
        child.reached("put")  # the directory and its manifest are stored; the run is not recorded yet
        report = t.prune_store()
        assert report["removed"] >= 2 and not any(t._objects.has(h) for h in orphans), report
        got = json.loads(child.go())
    finally:
        child.kill()
    assert all(t._objects.has(h) for h in orphans) and t._objects.has(got["hash"])
    for h in orphans:
        t._objects.verify(h)
    shutil.rmtree(tmp_path / "late_dir")

    def must_not_run() -> Path:
        raise AssertionError("a hit must not run the step")

    run = t.run(must_not_run, name="late_dir", outputs=["d"])
    assert run.cache_hit
    assert {str(p.relative_to(tmp_path / "late_dir")): p.read_bytes() for p in (tmp_path / "late_dir").rglob("*")
            if p.is_file()} == DIR_FILES  # fmt: skip


def test_an_output_changed_after_its_object_was_pruned_makes_the_next_call_execute(
    tmp_path: Path, make_tracker
) -> None:
    """The bytes recorded cannot be stored again: the run's record says so, and no call restores other bytes."""
    t = make_tracker(code_version="v1")
    content = b"recorded bytes\n" * 100
    orphan = t._objects.put_bytes(content)
    child = Child(tmp_path, "run_changed", json.dumps(content.decode()))
    try:
        child.reached("put")
        assert t.prune_store()["removed"] == 1
        (tmp_path / "late.bin").write_bytes(b"changed while the run was being recorded\n")
        got = json.loads(child.go())
    finally:
        child.kill()
    assert got["hash"] == orphan and not t._objects.has(orphan)
    assert len(got["warnings"]) == 1 and "next call executes again" in got["warnings"][0], got
    calls: list[str] = []
    with pytest.warns(ConsistWarning, match="cannot be restored"):
        run = t.run(_late(content, calls), name="late", outputs=["o"])
    assert not run.cache_hit and calls == ["late"] and (tmp_path / "late.bin").read_bytes() == content


def test_a_lease_ends_with_its_process(tmp_path: Path, make_tracker) -> None:
    child = Child(tmp_path, "killed", json.dumps(FILE_CONTENT.decode()), json.dumps(
        {k: v.decode() for k, v in DIR_FILES.items()}))  # fmt: skip
    try:
        child.reached("stored")
        t = make_tracker(code_version="v1")
        assert t.prune_store(dry_run=True)["in_use"] >= 4
    finally:
        child.kill()  # killed while its run is in progress
    report = t.prune_store()
    assert report["in_use"] == 0 and report["removed"] >= 4 and not t._objects.has(sha(FILE_CONTENT))
    assert t._index.query("SELECT * FROM lease") == []  # the dead process's leases were cleared


def test_leases_never_take_sequence_numbers(tracker: Tracker) -> None:
    tracker.run(lambda: Path("x.txt").write_text("x") and Path("x.txt"), name="x", outputs=["x"])
    before = tracker._index.max_seq()
    tracker._index.lease_restoring([(sha(b"x"), "file")])
    tracker.prune_store(dry_run=True)
    assert tracker._index.max_seq() == before  # nothing for DuckDB to merge
    assert os.getpid() in {r["pid"] for r in tracker._index.query("SELECT pid FROM lease")}
