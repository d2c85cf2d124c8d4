"""The object store and file hashing against hostile or broken files.

Symbolic links are stored as links and never followed out of an output; modes
survive a restore and the store is private to its owner; a restore hashes what
it copies and publishes nothing that does not match; pipes, sockets, devices and
link loops are refused (inputs) or kept as links (outputs) with clear errors;
something that is not an object at an object's place is damage the next store
repairs. Real files, a real run index and DuckDB file; the memo is never mocked.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import consist
from consist import Tracker
from consist import hashing as H
from consist.objects import ObjectStore
from consist.store.sqlite import SQLiteIndex

SECRET = b"host-only secret 7f3a9c0e: never in the store\n"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def link_hash(target: str) -> str:
    return sha(b"consist-link-v1\0" + target.encode())


def umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def mode(path: str | Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def write(path: str | Path, data: bytes | str, perm: int | None = None) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    if perm is not None:
        os.chmod(p, perm)
    return p


def objects_bytes(tracker: Tracker) -> list[bytes]:
    base = tracker._objects.root / "sha256"
    return [p.read_bytes() for p in base.rglob("*") if p.is_file() and not p.is_symlink()]


def tree(root: Path) -> dict[str, str]:
    """Relative path -> content for files, '-> target' for links (never followed)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = p.read_text()
    return out


def flip_keeping_stat(path: Path, at: int) -> None:
    """Damage one byte and put size, mtime and mode back: the memo key is unchanged."""
    st = os.stat(path)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x01]))
    os.chmod(path, stat.S_IMODE(st.st_mode))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert H.stat_key(os.stat(path)) == H.stat_key(st)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".consist-" in p.name)


@pytest.fixture
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder outside every root of the tracker (its project root is the test's own tmp_path)."""
    return tmp_path_factory.mktemp("outside")


@pytest.fixture
def index(tmp_path: Path) -> Iterator[SQLiteIndex]:
    ix = SQLiteIndex(tmp_path / "ix" / "index.sqlite")
    yield ix
    ix.close()


@pytest.fixture
def no_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# ============================================================================ 1. symbolic links


def test_links_in_an_output_directory_are_stored_as_links(tracker: Tracker, outside: Path, calls) -> None:
    key = write(outside / "id_rsa", SECRET)

    def step() -> Path:
        calls()
        d = Path("outdir")
        write(d / "data.csv", "a\n1\n")
        os.symlink("/etc/passwd", d / "passwd")  # a system file
        os.symlink(key, d / "key")  # a host file outside the output root
        os.symlink("data.csv", d / "alias.csv")  # a relative link inside the output
        return d

    r = tracker.run(step, name="links", outputs=["out"])
    art = r.outputs["out"]
    manifest = tracker._objects.read_manifest(art.hash)
    assert manifest == [
        ["alias.csv", link_hash("data.csv"), 8, {"symlink": "data.csv"}],
        ["data.csv", sha(b"a\n1\n"), 4],
        ["key", link_hash(str(key)), len(str(key)), {"symlink": str(key)}],
        ["passwd", link_hash("/etc/passwd"), 11, {"symlink": "/etc/passwd"}],
    ]
    assert tracker._objects.path_of(art.hash).read_bytes().startswith(b'{"format":"consist-dir-v2",')
    stored = objects_bytes(tracker)
    assert not any(SECRET in b for b in stored), "a host file reached the store through a link"
    assert Path("/etc/passwd").read_bytes() not in stored
    assert (art.size, art.meta) == (4, {"files": 4})
    members = tracker.get_artifacts_for_run(r.run_id).outputs
    assert sorted(members) == ["data.csv", "out"]  # links are entries of the directory, not member files

    shutil.rmtree("outdir")
    hit = tracker.run(step, name="links", outputs=["out"])
    assert hit.cache_hit and calls.n == 1
    assert tree(Path("outdir")) == {
        "alias.csv": "-> data.csv",
        "data.csv": "a\n1\n",
        "key": f"-> {key}",
        "passwd": "-> /etc/passwd",
    }
    assert key.read_bytes() == SECRET


def test_a_directory_with_links_hashes_alike_for_the_store_and_the_restore_check(
    tmp_path: Path, index: SQLiteIndex
) -> None:
    d = tmp_path / "d"
    write(d / "f.txt", "f")
    os.symlink("/nonexistent/target", d / "dangling")
    store = ObjectStore(tmp_path / "objects", memo=index)
    digest, total, manifest = store.put_dir(d, H.FileHasher(index))
    assert (digest, manifest) == H.FileHasher(H.NullMemo()).hash_dir(d, follow_links=False)
    assert total == 1 and manifest[0] == [
        "dangling",
        link_hash("/nonexistent/target"),
        19,
        {"symlink": "/nonexistent/target"},
    ]
    assert all(store.has(e[1]) for e in manifest)  # every entry names a stored object, links included
    # A directory of regular files only keeps its format v1 bytes, so its recorded hash stays valid.
    os.unlink(d / "dangling")
    plain = H.FileHasher(H.NullMemo()).hash_dir(d, follow_links=False)
    assert plain == H.FileHasher(H.NullMemo()).hash_dir(d)
    assert (
        H.manifest_bytes(plain[1]) == b'{"format":"consist-dir-v1","files":[["f.txt","' + sha(b"f").encode() + b'",1]]}'
    )


@pytest.mark.parametrize("declared", [False, True], ids=["returned", "declared"])
def test_an_output_that_is_a_link_is_recorded_as_the_link(
    tracker: Tracker, outside: Path, calls, declared: bool
) -> None:
    target = write(outside / "private.txt", SECRET)
    link = Path("out/latest.txt")

    def step() -> Path:
        calls()
        link.parent.mkdir(exist_ok=True)
        os.symlink(target, link)
        return link

    outputs = {"latest": str(link)} if declared else ["latest"]
    r = tracker.run(step, name="l", outputs=outputs)
    art = r.outputs["latest"]
    here = Path.cwd() / "out" / "latest.txt"
    assert (art.kind, art.uri, art.location) == ("link", str(here), "project://out/latest.txt")
    assert (art.hash, art.size) == (link_hash(str(target)), len(str(target)))
    assert not any(SECRET in b for b in objects_bytes(tracker))

    link.unlink()
    hit = tracker.run(step, name="l", outputs=outputs)
    assert hit.cache_hit and calls.n == 1
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert hit.outputs["latest"].uri == str(here)
    link.unlink()
    write(link, "a regular file where the link was")
    assert tracker.run(step, name="l", outputs=outputs).cache_hit
    assert link.is_symlink() and os.readlink(link) == str(target) and target.read_bytes() == SECRET


def test_a_hit_never_keeps_or_writes_through_a_link_at_the_destination(tracker: Tracker, outside: Path, calls) -> None:
    def step() -> dict[str, Path]:
        calls()
        write("out/tables/a.csv", "a")
        return {"f": write("out/result.csv", "result"), "d": Path("out/tables")}

    tracker.run(step, name="w", outputs=["f", "d"])
    # Links to places outside every root, holding the very same content.
    decoy_file = write(outside / "result.csv", "result")
    decoy_dir = outside / "tables"
    write(decoy_dir / "a.csv", "a")
    Path("out/result.csv").unlink()
    os.symlink(decoy_file, "out/result.csv")
    shutil.rmtree("out/tables")
    os.symlink(decoy_dir, "out/tables")

    hit = tracker.run(step, name="w", outputs=["f", "d"])
    assert hit.cache_hit and calls.n == 1
    assert not Path("out/result.csv").is_symlink() and Path("out/result.csv").read_text() == "result"
    assert not Path("out/tables").is_symlink() and tree(Path("out/tables")) == {"a.csv": "a"}
    assert decoy_file.read_text() == "result" and sorted(p.name for p in decoy_dir.iterdir()) == ["a.csv"]
    for art in hit.outputs.values():
        assert not Path(art.uri).is_relative_to(outside), art.uri
    assert leftovers(Path("out")) == []


# ============================================================================ 2. modes


def test_restored_files_get_the_mode_they_were_produced_with(tracker: Tracker, calls) -> None:
    perms = {"private.txt": 0o600, "run.sh": 0o755, "plain.txt": 0o644, "readonly.txt": 0o444}

    def step() -> dict[str, Path]:
        calls()
        for name, perm in perms.items():
            write(Path("modes") / name, name, perm)
        return {"dir": Path("modes"), "key": write("secret.key", "k", 0o600), "tool": write("tool.sh", "t", 0o750)}

    r = tracker.run(step, name="m", outputs=["dir", "key", "tool"])
    assert r.outputs["key"].meta == {"mode": "0600"} and r.outputs["tool"].meta == {"mode": "0750"}
    assert r.outputs["dir"].meta == {
        "files": 4,
        "modes": {"private.txt": "0600", "readonly.txt": "0444", "run.sh": "0755"},
    }
    shutil.rmtree("modes")
    Path("secret.key").unlink()
    Path("tool.sh").unlink()

    hit = tracker.run(step, name="m", outputs=["dir", "key", "tool"])
    assert hit.cache_hit and calls.n == 1
    mask = ~umask()
    assert {n: mode(Path("modes") / n) for n in perms} == {n: p & mask for n, p in perms.items()}
    assert (mode("secret.key"), mode("tool.sh")) == (0o600 & mask, 0o750 & mask)
    # A file whose mode was widened since is put back, even though its bytes are right.
    os.chmod("secret.key", 0o644)
    os.chmod("modes/private.txt", 0o666)
    assert tracker.run(step, name="m", outputs=["dir", "key", "tool"]).cache_hit
    assert (mode("secret.key"), mode("modes/private.txt")) == (0o600 & mask, 0o600 & mask)


def test_most_files_sharing_a_private_mode_are_recorded_once(tracker: Tracker) -> None:
    def step() -> Path:
        for i in range(5):
            write(f"priv/{i}.csv", str(i), 0o600)
        write("priv/open.csv", "o", 0o644)
        return Path("priv")

    r = tracker.run(step, name="p", outputs=["d"])
    assert r.outputs["d"].meta == {"files": 6, "mode": "0600", "modes": {"open.csv": "0644"}}
    shutil.rmtree("priv")
    assert tracker.run(step, name="p", outputs=["d"]).cache_hit
    assert {p.name: mode(p) for p in Path("priv").iterdir()} == {
        **{f"{i}.csv": 0o600 for i in range(5)},
        "open.csv": 0o644 & ~umask(),
    }


def test_the_object_store_is_private_to_its_owner(make_tracker) -> None:
    # A world-traversable workspace (pytest's own tmp folders are not), so only the store's modes protect it.
    base = Path(tempfile.mkdtemp(prefix="consist-private-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        t = make_tracker(run_dir=base / "runs", project_root=base)
        r = t.run(lambda: write(base / "private.txt", SECRET, 0o600), name="p", outputs=["p"])
        obj = t._objects.path_of(r.outputs["p"].hash)
        store = t._objects.root
        for d in (store, store / "tmp", store / "sha256", obj.parent):
            assert mode(d) & 0o077 == 0, f"{d} is open to others: {oct(mode(d))}"
        assert mode(obj) == 0o444  # read-only; private through the directories above it
        if os.geteuid() != 0:
            return
        public = write(base / "public.txt", "anyone may read this", 0o644)
        as_nobody = {"user": 65534, "group": 65534, "capture_output": True, "timeout": 60}
        assert subprocess.run(["cat", str(public)], **as_nobody).returncode == 0  # the probe itself works
        denied = subprocess.run(["cat", str(obj)], **as_nobody)
        assert denied.returncode != 0 and SECRET not in denied.stdout
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_an_existing_open_store_is_narrowed_when_next_written(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    ObjectStore(root).put_bytes(b"x")
    assert mode(root) == 0o700


# ============================================================================ 3. damaged objects


def test_a_flipped_byte_with_size_and_mtime_put_back_is_not_served(tracker: Tracker, calls) -> None:
    payload = os.urandom(3 << 20)  # several read-back chunks
    small = {f"part{i}.csv": f"row {i}\n" for i in range(10)}

    def step() -> dict[str, Path]:
        calls()
        for name, text in small.items():
            write(Path("tables") / name, text)
        return {"big": write("big.bin", payload), "tables": Path("tables")}

    r = tracker.run(step, name="dmg", outputs=["big", "tables"])
    big_obj = tracker._objects.path_of(r.outputs["big"].hash)
    part_obj = tracker._objects.path_of(sha(b"row 7\n"))
    flip_keeping_stat(big_obj, 2 << 20)
    flip_keeping_stat(part_obj, 1)
    Path("big.bin").unlink()
    shutil.rmtree("tables")

    with pytest.warns(consist.ConsistWarning, match="cannot be restored.*hashes to"):
        again = tracker.run(step, name="dmg", outputs=["big", "tables"])
    assert not again.cache_hit and calls.n == 2
    assert Path("big.bin").read_bytes() == payload and tree(Path("tables")) == small
    # The re-execution stored the content again: the damage is repaired.
    assert big_obj.read_bytes() == payload and part_obj.read_bytes() == b"row 7\n"
    Path("big.bin").unlink()
    shutil.rmtree("tables")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tracker.run(step, name="dmg", outputs=["big", "tables"]).cache_hit
    assert Path("big.bin").read_bytes() == payload and tree(Path("tables")) == small and calls.n == 2


def test_no_output_is_published_until_every_copy_is_verified(tracker: Tracker, calls) -> None:
    seen = []

    def step() -> dict[str, Path]:
        calls()
        seen.append(sorted(p.name for p in Path("outs").iterdir()) if Path("outs").exists() else [])
        return {"a": write("outs/a.txt", "aaaa"), "b": write("outs/b.txt", "bbbb")}

    r = tracker.run(step, name="two", outputs=["a", "b"])
    flip_keeping_stat(tracker._objects.path_of(r.outputs["b"].hash), 0)
    for name in ("a.txt", "b.txt"):
        Path("outs", name).unlink()
    with pytest.warns(consist.ConsistWarning, match="hashes to"):
        assert not tracker.run(step, name="two", outputs=["a", "b"]).cache_hit
    assert seen == [[], []]  # a.txt was copied and verified, but not published before b's damage was found


@pytest.mark.parametrize("size", [5, 3 << 20], ids=["small", "large"])
def test_a_damaged_object_never_reaches_its_destination(tmp_path: Path, index: SQLiteIndex, size: int) -> None:
    store = ObjectStore(tmp_path / "objects", memo=index)
    data = os.urandom(size)
    digest = store.put_bytes(data)
    obj = store.path_of(digest)
    store.verify(digest)  # memoised: its stat now vouches for it
    flip_keeping_stat(obj, size // 2)
    dest = write(tmp_path / "out" / "result.bin", b"mine")
    with pytest.raises(consist.IntegrityError, match="hashes to"):
        store.write(store.check("file", digest, size), dest)
    assert dest.read_bytes() == b"mine" and leftovers(dest.parent) == []
    assert not store.has(digest)  # dropped, so the next store of this content puts it back
    assert store.put_bytes(data) == digest and store.verify(digest).read_bytes() == data


def test_a_damaged_file_of_a_directory_leaves_the_old_directory_in_place(tmp_path: Path, index: SQLiteIndex) -> None:
    store = ObjectStore(tmp_path / "objects", memo=index)
    src = tmp_path / "src"
    for i in range(5):
        write(src / "sub" / f"{i}.txt", f"file {i}")
    digest, _total, _manifest = store.put_dir(src, H.FileHasher(index))
    flip_keeping_stat(store.path_of(sha(b"file 3")), 0)
    dest = tmp_path / "out" / "d"
    write(dest / "mine.txt", "mine")
    with pytest.raises(consist.IntegrityError, match="hashes to"):
        store.write(store.check("dir", digest, None), dest)
    assert tree(dest) == {"mine.txt": "mine"} and leftovers(dest.parent) == []


def test_a_file_that_grows_while_it_is_stored_is_stored_as_copied(tmp_path: Path) -> None:
    """The memo rewrites the file once it is hashed; the store keeps what it copied, under its own hash."""
    src = write(tmp_path / "growing.bin", b"first version")
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns - 10 * 10**9))

    class GrowAfterHashing(H.NullMemo):
        def memo_put(self, key, algo, digest):
            with open(src, "ab") as f:
                f.write(b" and a much longer tail written meanwhile")

    store = ObjectStore(tmp_path / "objects")
    digest, size = store.put_file(src, H.FileHasher(GrowAfterHashing()))
    grown = src.read_bytes()
    assert (digest, size) == (sha(grown), len(grown))
    assert store.path_of(digest).read_bytes() == grown


# ============================================================================ 4. clear errors, nothing wedged


def _special(kind: str, where: Path) -> Path:
    if kind == "fifo":
        os.mkfifo(where / "pipe")
        return where / "pipe"
    if kind == "socket":
        path = where / "sock"
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(path))
        _OPEN_SOCKETS.append(s)
        return path
    return Path("/dev/zero")


_OPEN_SOCKETS: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    while _OPEN_SOCKETS:
        _OPEN_SOCKETS.pop().close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["fifo", "socket", "device"])
def test_a_pipe_socket_or_device_input_is_refused_before_any_work(
    tracker: Tracker, tmp_path: Path, calls, kind: str
) -> None:
    path = _special(kind, tmp_path)
    words = {"fifo": "a named pipe (FIFO)", "socket": "a socket", "device": "a character device"}[kind]
    with pytest.raises(
        consist.ConsistError, match=re.escape(f"The input 'src' at {path} is {words}, not a regular file")
    ):
        tracker.run(lambda src: calls(), name="special", inputs={"src": path})
    assert calls.n == 0 and tracker.find_runs() == []


@pytest.mark.timeout(30)
def test_a_pipe_inside_an_input_directory_is_refused_before_any_work(tracker: Tracker, calls) -> None:
    write("data/ok.csv", "ok")
    os.mkfifo("data/feed")
    with pytest.raises(consist.ConsistError, match="data/feed is a named pipe"):
        tracker.run(lambda data: calls(), name="special", inputs={"data": "data"})
    assert calls.n == 0


@pytest.mark.timeout(30)
def test_the_store_refuses_a_pipe_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(consist.ConsistError, match="is a named pipe"):
        ObjectStore(tmp_path / "objects").put_file(tmp_path / "pipe", H.FileHasher(H.NullMemo()))
    with pytest.raises(consist.ConsistError, match="is a named pipe"):
        H.FileHasher(H.NullMemo()).hash_file(tmp_path / "pipe")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop", ["pair", "parent", "itself"])
def test_a_symlink_loop_in_an_input_is_named_before_any_work(tracker: Tracker, calls, loop: str) -> None:
    write("in/sub/x.csv", "x")
    if loop == "pair":
        os.symlink("b", "in/sub/a")
        os.symlink("a", "in/sub/b")
        where, expect = "in", r"in/sub/[ab] is a symbolic link loop \(it points to '[ab]'\)"
    elif loop == "parent":
        os.symlink("..", "in/sub/up")
        where, expect = "in", r"in/sub/up is a symbolic link loop \(it points to '\.\.'\): following it leads back to"
    else:
        os.symlink("self", "self")
        where, expect = "self", r"The input 'data' at self is a symbolic link loop"
    with pytest.raises(consist.ConsistError, match=expect):
        tracker.run(lambda data: calls(), name="loop", inputs={"data": where})
    assert calls.n == 0 and tracker.find_runs() == []


def test_symlink_loops_in_an_output_directory_are_stored_as_links(tracker: Tracker, calls) -> None:
    def step() -> Path:
        calls()
        write("loops/sub/x.csv", "x")
        os.symlink("b", "loops/a")
        os.symlink("a", "loops/b")
        os.symlink("..", "loops/sub/up")
        os.symlink("self", "loops/self")
        return Path("loops")

    r = tracker.run(step, name="loops", outputs=["d"])
    assert r.outputs["d"].meta == {"files": 5}
    shutil.rmtree("loops")
    assert tracker.run(step, name="loops", outputs=["d"]).cache_hit and calls.n == 1
    assert tree(Path("loops")) == {"a": "-> b", "b": "-> a", "self": "-> self", "sub/up": "-> ..", "sub/x.csv": "x"}


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_a_directory_where_an_object_should_be_is_damage_the_next_store_repairs(
    tracker: Tracker, calls, kind: str
) -> None:
    def step() -> Path:
        calls()
        write("res/r.csv", "result")
        return Path("res/r.csv") if kind == "file" else Path("res")

    r = tracker.run(step, name="obj", outputs=["o"])
    obj = tracker._objects.path_of(r.outputs["o"].hash)
    good = obj.read_bytes()
    os.chmod(obj, 0o644)
    obj.unlink()
    write(obj / "junk", "a directory sits at the object's place")
    shutil.rmtree("res")

    with pytest.warns(consist.ConsistWarning, match="is a directory, not a regular file"):
        again = tracker.run(step, name="obj", outputs=["o"])
    assert not again.cache_hit and calls.n == 2 and Path("res/r.csv").read_text() == "result"
    assert obj.is_file() and obj.read_bytes() == good and mode(obj) == 0o444
    shutil.rmtree("res")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tracker.run(step, name="obj", outputs=["o"]).cache_hit
    assert Path("res/r.csv").read_text() == "result" and calls.n == 2


def test_removing_an_object_removes_a_directory_at_its_place(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "objects")
    digest = sha(b"never stored")
    write(store.path_of(digest) / "junk", "x")
    assert not store.has(digest) and [d for d, _p in store.all_objects()] == [digest]
    store.remove(digest)
    assert not store.path_of(digest).exists()


@pytest.mark.parametrize("where", ["input", "output"])
def test_a_name_that_is_not_utf8_is_a_clear_error(tracker: Tracker, calls, where: str) -> None:
    def make() -> Path:
        os.makedirs(b"odd", exist_ok=True)
        with open(b"odd/caf\xe9.csv", "wb") as f:  # Latin-1, not UTF-8
            f.write(b"x")
        return Path("odd")

    expect = re.escape(r"The name or link target 'caf\udce9.csv' (bytes b'caf\xe9.csv') in a directory is not UTF-8")
    if where == "input":
        make()
        with pytest.raises(consist.ConsistError, match=expect):
            tracker.run(lambda odd: calls(), name="u", inputs={"odd": "odd"})
        assert calls.n == 0
    else:
        with pytest.raises(consist.ConsistError, match=expect):
            tracker.run(make, name="u", outputs=["odd"])
