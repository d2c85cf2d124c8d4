"""Outputs restore exactly, from the content-addressed store, or the step re-runs."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

import consist
from consist import Tracker


def model(src: Path) -> Path:
    out = Path("out/result.csv")
    out.parent.mkdir(exist_ok=True)
    out.write_text("result from " + src.read_text())
    return out


def test_a_b_a_restores_a_bytes(tracker: Tracker, calls) -> None:
    def step(src: Path) -> Path:
        calls()
        return model(src)

    Path("a.csv").write_text("A")
    Path("b.csv").write_text("B")
    ra = tracker.run(step, inputs={"src": "a.csv"}, outputs=["result"])
    rb = tracker.run(step, inputs={"src": "b.csv"}, outputs=["result"])
    assert Path("out/result.csv").read_text() == "result from B"
    again = tracker.run(step, inputs={"src": "a.csv"}, outputs=["result"])
    assert again.cache_hit and again.cache_source == ra.run_id and calls.n == 2
    assert Path("out/result.csv").read_text() == "result from A"
    assert rb.outputs["result"].hash != ra.outputs["result"].hash


def test_restore_after_delete_and_after_overwrite(tracker: Tracker) -> None:
    Path("a.csv").write_text("A")
    tracker.run(model, inputs={"src": "a.csv"}, outputs=["result"])
    out = Path("out/result.csv")
    out.unlink()
    assert tracker.run(model, inputs={"src": "a.csv"}, outputs=["result"]).cache_hit
    assert out.read_text() == "result from A"
    out.write_text("scribbled over")
    assert tracker.run(model, inputs={"src": "a.csv"}, outputs=["result"]).cache_hit
    assert out.read_text() == "result from A"


def test_objects_are_read_only_and_named_by_content(tracker: Tracker) -> None:
    Path("a.csv").write_text("A")
    r = tracker.run(model, inputs={"src": "a.csv"}, outputs=["result"])
    obj = tracker._objects.path_of(r.outputs["result"].hash)
    assert obj.read_text() == "result from A"
    assert not obj.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert obj.is_relative_to(tracker.run_dir / ".consist" / "objects")


def test_directory_outputs_restore_exactly(tracker: Tracker, calls) -> None:
    def step(n: int) -> Path:
        calls()
        d = Path("outdir")
        if d.exists():
            for f in d.rglob("*"):
                if f.is_file():
                    f.unlink()
        (d / "sub").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (d / f"part{i}.csv").write_text(f"a\n{i}\n")
        (d / "sub" / "meta.json").write_text(f'{{"n": {n}}}')
        return d

    r3 = tracker.run(step, config={"n": 3}, outputs=["tables"])
    assert r3.outputs["tables"].kind == "dir"
    tracker.run(step, config={"n": 1}, outputs=["tables"])
    (Path("outdir") / "stray.txt").write_text("not from the run")
    hit = tracker.run(step, config={"n": 3}, outputs=["tables"])
    assert hit.cache_hit and calls.n == 2
    files = sorted(p.relative_to("outdir").as_posix() for p in Path("outdir").rglob("*") if p.is_file())
    assert files == ["part0.csv", "part1.csv", "part2.csv", "sub/meta.json"]
    assert (Path("outdir") / "sub" / "meta.json").read_text() == '{"n": 3}'


def _damage(path: Path, data: bytes) -> None:
    os.chmod(path, 0o644)
    path.write_bytes(data)


def test_damaged_object_warns_and_reexecutes(tracker: Tracker, calls) -> None:
    def step(src: Path) -> Path:
        calls()
        return model(src)

    Path("a.csv").write_text("A")
    r = tracker.run(step, inputs={"src": "a.csv"}, outputs=["result"])
    obj = tracker._objects.path_of(r.outputs["result"].hash)
    _damage(obj, b"result from Z")  # same size, wrong bytes
    Path("out/result.csv").unlink()
    with pytest.warns(consist.ConsistWarning, match="cannot be restored"):
        again = tracker.run(step, inputs={"src": "a.csv"}, outputs=["result"])
    assert not again.cache_hit and calls.n == 2
    assert Path("out/result.csv").read_text() == "result from A"
    assert tracker.explain(again.run_id)["reason"] == "outputs_unavailable"


def test_truncated_and_missing_objects_reexecute(tracker: Tracker, calls) -> None:
    def step(src: Path) -> Path:
        calls()
        return model(src)

    Path("a.csv").write_text("A")
    r = tracker.run(step, inputs={"src": "a.csv"}, outputs=["result"])
    obj = tracker._objects.path_of(r.outputs["result"].hash)
    _damage(obj, b"short")
    Path("out/result.csv").unlink()
    with pytest.warns(consist.ConsistWarning):
        assert not tracker.run(step, inputs={"src": "a.csv"}, outputs=["result"]).cache_hit
    obj.unlink()
    Path("out/result.csv").write_text("garbage")
    with pytest.warns(consist.ConsistWarning, match="missing"):
        assert not tracker.run(step, inputs={"src": "a.csv"}, outputs=["result"]).cache_hit
    assert Path("out/result.csv").read_text() == "result from A" and calls.n == 3


def test_damaged_object_is_not_needed_when_the_file_is_intact(tracker: Tracker, calls) -> None:
    def step(src: Path) -> Path:
        calls()
        return model(src)

    Path("a.csv").write_text("A")
    r = tracker.run(step, inputs={"src": "a.csv"}, outputs=["result"])
    _damage(tracker._objects.path_of(r.outputs["result"].hash), b"junk")
    assert tracker.run(step, inputs={"src": "a.csv"}, outputs=["result"]).cache_hit


def test_prune_store(tracker: Tracker, calls) -> None:
    def step(v: int) -> Path:
        calls()
        p = Path(f"o{v}.txt")
        p.write_text("x" * (v + 1))
        return p

    tracker.run(step, config={"v": 1}, outputs=["o"])
    orphan = tracker._objects.put_bytes(b"orphan bytes")  # as left by an interrupted run
    report = tracker.prune_store(dry_run=True)
    assert report["removed"] == 1 and tracker._objects.has(orphan)
    report = tracker.prune_store()
    assert report["removed"] == 1 and not tracker._objects.has(orphan)
    assert tracker.prune_store(older_than=timedelta(days=1))["removed"] == 0
    assert tracker.prune_store(older_than=timedelta(seconds=0))["removed"] == 1
    Path("o1.txt").unlink()
    assert not tracker.run(step, config={"v": 1}, outputs=["o"]).cache_hit  # pruned: runs again
    assert Path("o1.txt").read_text() == "xx" and calls.n == 2


def test_prune_verify_drops_damaged_objects(tracker: Tracker) -> None:
    r = tracker.run(lambda: Path("d.txt").write_text("data") and Path("d.txt"), name="d", outputs=["d"])
    obj = tracker._objects.path_of(r.outputs["d"].hash)
    _damage(obj, b"dada")
    assert tracker.prune_store(verify=True)["damaged"] == 1
    assert not obj.exists()


@pytest.fixture
def reflink_fs(tmp_path: Path):
    """A small XFS file system with reflink, on a loop device (needs root and xfsprogs)."""
    if os.geteuid() != 0 or not shutil.which("mkfs.xfs") or not shutil.which("filefrag"):
        pytest.skip("needs root, mkfs.xfs (xfsprogs) and filefrag to build a reflink file system")
    image, mnt = tmp_path / "xfs.img", tmp_path / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(320 * 1024 * 1024)  # the smallest XFS mkfs.xfs accepts is 300 MB
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True, capture_output=True)
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a loop device here: {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        if Path.cwd().is_relative_to(mnt):  # monkeypatch restores the cwd only after this teardown
            os.chdir(tmp_path)
        subprocess.run(["umount", str(mnt)], check=True, capture_output=True)


def _all_extents_shared(path: Path) -> bool:
    out = subprocess.run(["filefrag", "-v", str(path)], check=True, capture_output=True, text=True).stdout
    extents = [line for line in out.splitlines() if line.strip()[:1].isdigit() and ":" in line]
    return bool(extents) and all("shared" in line for line in extents)


def test_store_and_restore_clone_on_a_reflink_file_system(reflink_fs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(reflink_fs)
    payload = os.urandom(8 * 1024 * 1024)

    def write() -> Path:
        Path("big.bin").write_bytes(payload)
        return Path("big.bin")

    with Tracker(reflink_fs / "runs", project_root=reflink_fs) as t:
        first = t.run(write, name="clone", outputs=["big"])
        obj = t._objects.path_of(first.outputs["big"].hash)
        assert _all_extents_shared(obj), "storing an output should clone it, not copy it"
        Path("big.bin").unlink()
        again = t.run(write, name="clone", outputs=["big"])
        assert again.cache_hit
        assert Path("big.bin").read_bytes() == payload
        assert _all_extents_shared(Path("big.bin")), "restoring should clone the object"


def test_a_manifest_entry_cannot_write_outside_its_directory(tmp_path: Path) -> None:
    from consist.hashing import FileHasher, NullMemo, manifest_bytes
    from consist.objects import ObjectStore

    store = ObjectStore(tmp_path / "objects")
    hasher = FileHasher(NullMemo())
    (tmp_path / "payload").write_text("x")
    digest, size = store.put_file(tmp_path / "payload", hasher)
    absolute = tmp_path / f"escaped-{tmp_path.name}.txt"  # unique: a stale file cannot fake a failure
    for rel in ("../escaped.txt", str(absolute), "a/../../escaped.txt"):
        manifest = store.put_bytes(manifest_bytes([[rel, digest, size]]))
        with pytest.raises(consist.errors.IntegrityError, match="outside its directory"):
            store.write(store.check("dir", manifest, None), tmp_path / "out" / "dest")
    assert not (tmp_path / "out" / "escaped.txt").exists() and not absolute.exists()
    assert not (tmp_path / "out").exists(), "nothing may be written when the check fails"
