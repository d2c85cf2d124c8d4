"""Guarantees of consist.hashing: byte formats of every stored hash, canonical configs, the memo.

A stored hash is a cache key: if its byte layout changed silently, every cache entry
would miss (or, worse, two different things would share a key). These tests pin the
documented formats by recomputing them from first principles with hashlib and json.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import hashlib
import os
import time
import uuid
import warnings
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from pydantic import BaseModel

import consist
from consist import hashing as H


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Memo(H.NullMemo):
    """A dictionary memo that records every call."""

    def __init__(self) -> None:
        self.store: dict[tuple[tuple[int, int, int, int], str], str] = {}
        self.puts: list[tuple[tuple[int, int, int, int], str, str]] = []

    def memo_get(self, key, algo):
        return self.store.get((key, algo))

    def memo_put(self, key, algo, digest):
        self.puts.append((key, algo, digest))
        self.store[(key, algo)] = digest


def aged(path: Path, seconds: int = 10) -> Path:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - seconds * 10**9))
    return path


# --------------------------------------------------------------------- formats


def test_config_hash_is_sha256_of_tag_nul_and_compact_sorted_json() -> None:
    value = H.canonical({"b": [1, 2.5], "a": "é", "c": {"z": None, "y": True}})
    text = '{"a":"é","b":[1,2.5],"c":{"y":true,"z":null}}'  # sorted keys, no spaces, UTF-8 kept
    assert H.dumps(value) == text
    assert H.CONFIG_FORMAT.startswith("consist-config-v")  # a versioned tag: a format change misses cleanly
    assert H.hash_canonical(value) == sha(H.CONFIG_FORMAT.encode() + b"\x00" + text.encode())
    assert H.hash_canonical(value, "other-tag") == sha(b"other-tag\x00" + text.encode())


def test_loads_reads_stored_json_and_keeps_none() -> None:
    assert H.loads('{"a":[1,"é"]}') == {"a": [1, "é"]}
    assert H.loads(None) is None
    assert H.loads("") is None


def test_directory_manifest_bytes_are_compact_versioned_utf8_json() -> None:
    entries = [["sub/é.csv", "sha256:00ff", 3]]
    expected = '{"format":"consist-dir-v1","files":[["sub/é.csv","sha256:00ff",3]]}'.encode()
    assert H.manifest_bytes(entries) == expected


def test_full_and_fast_file_digests_follow_their_formats(tmp_path: Path) -> None:
    f = tmp_path / "in.bin"
    f.write_bytes(b"payload")
    st = f.stat()
    assert H.FileHasher(H.NullMemo()).hash_path(f) == sha(b"payload")
    fast = f"consist-fast-v1\x00{st.st_size}\x00{st.st_mtime_ns}".encode()
    assert H.FileHasher(H.NullMemo(), "fast").hash_path(f) == sha(fast)
    assert H.FileHasher(H.NullMemo()).algo == "sha256/file-v1"
    assert H.FileHasher(H.NullMemo(), "fast").algo == "sha256/consist-fast-v1"
    assert H.stat_key(st) == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def test_a_memo_filled_in_fast_mode_never_answers_for_content_hashing(tmp_path: Path) -> None:
    f = tmp_path / "in.bin"
    f.write_bytes(b"content")
    aged(f)
    memo = Memo()
    fast = H.FileHasher(memo, "fast").hash_path(f)
    full = H.FileHasher(memo).hash_path(f)
    assert full == sha(b"content") != fast
    assert {algo for _key, algo, _d in memo.puts} == {"sha256/consist-fast-v1", "sha256/file-v1"}


# --------------------------------------------------------------------- files and directories


def test_missing_input_error_names_the_input(tmp_path: Path) -> None:
    with pytest.raises(consist.InputNotFoundError) as err:
        H.FileHasher(H.NullMemo()).hash_path(tmp_path / "missing.csv", "households")
    assert "The input 'households' path does not exist" in str(err.value)
    assert err.value.filename == str(tmp_path / "missing.csv")


def test_directory_hash_does_not_depend_on_the_working_directory(tmp_path: Path) -> None:
    d = tmp_path / "inputs"
    (d / "nested").mkdir(parents=True)
    (d / "nested" / "x.csv").write_text("x")
    (tmp_path / "unrelated.txt").write_text("the working directory holds other files")
    hasher = H.FileHasher(H.NullMemo())
    digest, manifest = H.FileHasher(H.NullMemo()).hash_dir(d)
    assert hasher.hash_path(d) == digest == sha(H.manifest_bytes(manifest))
    assert manifest == [["nested/x.csv", sha(b"x"), 1]]
    os.chdir(d / "nested")
    assert H.FileHasher(H.NullMemo()).hash_path(d) == digest


def test_directory_walk_sorts_by_relative_posix_name_and_follows_symlinks(tmp_path: Path) -> None:
    d = tmp_path / "d"
    (d / "a").mkdir(parents=True)
    (d / "a" / "b.txt").write_text("b")
    (d / "a-c.txt").write_text("c")
    (tmp_path / "outside.txt").write_text("linked")
    os.symlink(tmp_path / "outside.txt", d / "link.txt")
    names = [rel for rel, _full, _st in H.walk_files(d)]
    assert names == ["a-c.txt", "a/b.txt", "link.txt"]  # "-" sorts before "/" in a string, not per part
    manifest = H.FileHasher(H.NullMemo()).hash_dir(d)[1]
    assert manifest[2] == ["link.txt", sha(b"linked"), 6]


def test_bytes_hashed_adds_up_over_files(tmp_path: Path) -> None:
    hasher = H.FileHasher(H.NullMemo())
    for name, size in (("a", 10), ("b", 25)):
        (tmp_path / name).write_bytes(b"x" * size)
        hasher.hash_path(tmp_path / name)
    assert hasher.bytes_hashed == 35


def test_a_file_changed_while_hashed_gets_the_hash_of_its_new_content(tmp_path: Path) -> None:
    f = tmp_path / "moving.bin"
    f.write_bytes(b"old")
    past = time.time_ns() - 10 * H.RACY_WINDOW_NS  # old enough for the memo to be asked
    os.utime(f, ns=(past, past))

    class RewriteOnFirstLookup(Memo):
        def memo_get(self, key, algo):
            if not self.puts and not getattr(self, "rewritten", False):
                self.rewritten = True
                f.write_bytes(b"new content")  # between the stat and the read
            return super().memo_get(key, algo)

    memo = RewriteOnFirstLookup()
    hasher = H.FileHasher(memo)
    old_key = H.stat_key(f.stat())
    assert hasher.hash_path(f) == sha(b"new content")
    assert old_key not in hasher.run_cache
    assert hasher.run_cache[H.stat_key(f.stat())] == sha(b"new content")


def test_hashing_emits_no_warnings(tmp_path: Path) -> None:
    f = tmp_path / "quiet.bin"
    f.write_bytes(os.urandom(4096))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert H.FileHasher(H.NullMemo()).hash_path(f) == sha(f.read_bytes())


def test_progress_bar_names_the_file_and_its_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd) -> None:
    monkeypatch.setenv("CONSIST_PROGRESS", "1")
    monkeypatch.setenv("CONSIST_PROGRESS_DELAY", "0")
    f = tmp_path / "p.bin"
    f.write_bytes(b"q" * (3 << 20))
    H.FileHasher(H.NullMemo()).hash_path(f)
    err = capfd.readouterr().err
    assert "hashing p.bin" in err and "3.1/3.1 MB" in err


# --------------------------------------------------------------------- canonical configs


class Color(enum.Enum):
    RED = "red"
    ODD = (1, 2.0)


class Opaque(enum.Enum):
    THING = object()


def test_numbers_have_one_spelling() -> None:
    assert H.canonical(200.0) == 200 and type(H.canonical(200.0)) is int
    below = 2.0**63 - 1024  # the largest float below 2**63
    assert H.canonical(below) == 2**63 - 1024 and type(H.canonical(below)) is int
    assert type(H.canonical(-below)) is int
    assert type(H.canonical(2.0**63)) is float  # out of int64 range: stays a float
    assert type(H.canonical(2.0**64)) is float
    assert H.canonical(0.25) == 0.25
    assert H.canonical(True) is True and H.canonical(None) is None


def test_non_finite_floats_are_tagged() -> None:
    assert H.canonical(float("nan")) == {"$float": "nan"}
    assert H.canonical(float("inf")) == {"$float": "inf"}
    assert H.canonical(float("-inf")) == {"$float": "-inf"}


def test_enums_paths_dates_and_bytes() -> None:
    assert H.canonical(Color.RED) == "red"
    assert H.canonical(Color.ODD) == [1, 2]
    assert H.canonical({Color.RED: 1, None: 2, 3: 4, 2.0: 5, True: 6}) == {
        "red": 1, "None": 2, "3": 4, "2": 5, "True": 6,
    }  # fmt: skip
    assert H.canonical({"$tag": 1, "plain": 2}) == {"$$tag": 1, "plain": 2}
    assert H.canonical(PurePosixPath("data/x.csv")) == "data/x.csv"
    assert H.canonical(dt.date(2030, 1, 2)) == "2030-01-02"
    assert H.canonical(bytearray(b"\x00\xff")) == {"$bytes": "00ff"}
    assert H.canonical(b"ab") == {"$bytes": "6162"}


def test_sequences_and_sets() -> None:
    assert H.canonical((1, 2.0, [3.0, (4,)])) == [1, 2, [3, [4]]]
    assert H.canonical({8, 1}) == {"$set": [1, 8]}  # iterates as 8, 1
    assert H.canonical(frozenset({"b", "a"})) == {"$set": ["a", "b"]}
    assert H.canonical({1, "a"}) == {"$set": ["a", 1]}  # ordered by JSON text: '"a"' < '1'


@dataclasses.dataclass(frozen=True)
class BA:
    b: int
    a: int


def test_set_order_uses_sorted_keys_of_each_element() -> None:
    # By field order, {"b":1,"a":2} sorts first; by sorted keys, {"a":1,"b":2} does.
    assert H.canonical({BA(1, 2), BA(2, 1)}) == {"$set": [{"a": 1, "b": 2}, {"a": 2, "b": 1}]}


@dataclasses.dataclass
class Holder:
    obj: object


def test_errors_name_the_offending_key_path() -> None:
    cases = {
        "config.a[1].b": {"a": [1, {"b": object()}]},
        "config.s{}": {"s": {object()}},
        "config.e": {"e": Opaque.THING},
        "config.d.obj": {"d": Holder(object())},
        "config.arr[0]": {"arr": np.array([object()], dtype=object)},
        "config.$$k": {"$k": object()},
    }
    for path, value in cases.items():
        with pytest.raises(consist.ConfigError) as err:
            H.canonical(value)
        assert f"Config value at {path} has type" in str(err.value), path


def test_config_error_messages_read_in_full() -> None:
    with pytest.raises(consist.ConfigError) as err:
        H.canonical({"x": object()})
    assert str(err.value) == (
        "Config value at config.x has type object, which has no canonical form. "
        "Likely cause: config values must be plain data (numbers, strings, lists, dicts, paths, dataclasses, "
        "Pydantic models). Fix: pass a plain value, or put the object's parameters in the config instead of "
        "the object."
    )
    with pytest.raises(consist.ConfigError) as err:
        H.canonical({"outer": {(1, 2): "x"}})
    assert str(err.value) == (
        "Config key (1, 2) at config.outer is a tuple. Likely cause: only strings, numbers, booleans and "
        "enums make stable keys. Fix: convert the key to a string."
    )
    with pytest.raises(consist.ConfigError, match="is a object"):
        H.canonical({object(): 1})


def test_numpy_scalars_are_numbers_and_arrays_are_lists() -> None:
    assert H.canonical(np.int64(7)) == 7 and type(H.canonical(np.int64(7))) is int
    assert H.canonical(np.float32(0.5)) == 0.5
    assert H.canonical(np.bool_(True)) is True
    assert H.canonical({"w": np.array([[1.0, 2.5]])}) == {"w": [[1, 2.5]]}
    assert H.canonical(np.array([5])) == [5] != H.canonical(np.int64(5))
    assert H.canonical(np.array(5)) == 5  # a zero-dimensional array is a scalar


def test_objects_that_merely_look_like_numpy_are_refused() -> None:
    class LooksLikeNumpy:
        ndim = 0

        def item(self) -> int:
            return 1

        def tolist(self) -> list[int]:
            return [1]

    with pytest.raises(consist.ConfigError, match="LooksLikeNumpy"):
        H.canonical({"x": LooksLikeNumpy()})


class Ids(BaseModel):
    run: uuid.UUID
    label: str = "x"
    zones: set[str] = set()


def test_pydantic_models_are_their_fields() -> None:
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert H.canonical(Ids(run=u)) == {"run": str(u), "label": "x", "zones": {"$set": []}}
    many = {f"zone-{i}" for i in range(12)}
    assert H.canonical(Ids(run=u, zones=many))["zones"] == {"$set": sorted(many)}


def test_no_value_can_spell_a_tag() -> None:
    pairs = [
        ({"x": float("nan")}, {"x": {"$float": "nan"}}),
        ({"x": b"\x01"}, {"x": {"$bytes": "01"}}),
        ({"x": {1, 2}}, {"x": {"$set": [1, 2]}}),
        ({"x": {1, 2}}, {"x": [1, 2]}),
        ({"$set": [1]}, {"$$set": [1]}),
        ({"x": None}, {"x": "None"}),
        ({"x": True}, {"x": 1}),
    ]
    for a, b in pairs:
        assert H.hash_canonical(H.canonical(a)) != H.hash_canonical(H.canonical(b)), (a, b)
    assert H.canonical({"$x": 1, "$$x": 2, "y$": 3}) == {"$$x": 1, "$$$x": 2, "y$": 3}


def test_keys_that_become_the_same_string_are_refused() -> None:
    for bad in ({1: "a", "1": "b"}, {"1": "a", 1.0: "b"}, {"True": "u", True: "t"}, {None: 1, "None": 2}):
        with pytest.raises(consist.ConfigError) as err:
            H.canonical({"outer": bad})
        assert "Config keys at config.outer collide:" in str(err.value)
        assert "keep only one of them, or give them distinct names" in str(err.value)
    with pytest.raises(consist.ConfigError) as err:
        H.canonical({"m": {float("inf"): 1}})
    assert str(err.value) == "Config key inf at config.m is not a finite number. Fix: use a string key."
    assert H.canonical({Color.RED: 1, "x": {Color.RED: 2}}) == {"red": 1, "x": {"red": 2}}


def test_decimals_uuids_and_times() -> None:
    import decimal

    assert H.canonical(decimal.Decimal("0.5")) == 0.5
    assert H.canonical(decimal.Decimal("2.000")) == 2 and type(H.canonical(decimal.Decimal("2"))) is int
    assert H.canonical(decimal.Decimal("NaN")) == {"$float": "nan"}
    assert H.canonical(decimal.Decimal("-Infinity")) == {"$float": "-inf"}
    assert H.canonical(decimal.Decimal("0.1")) == {"$decimal": "0.1"}  # not exactly a float: keeps its digits
    assert H.canonical(decimal.Decimal("1.50")) == 1.5
    assert H.canonical(decimal.Decimal("1.000000000000000000001")) == {"$decimal": "1.000000000000000000001"}
    assert H.canonical(decimal.Decimal("100.10")) == {"$decimal": "100.1"}  # normalised spelling
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert H.canonical(u) == "12345678-1234-5678-1234-567812345678"
    assert H.canonical(dt.datetime(2030, 1, 2, 3, 4, 5)) == "2030-01-02T03:04:05"
    assert H.canonical(dt.time(3, 4)) == "03:04:00"


# --------------------------------------------------------------------- files that cannot be hashed


def test_file_types_in_words() -> None:
    import stat

    words = {
        stat.S_IFIFO: "a named pipe (FIFO)",
        stat.S_IFSOCK: "a socket",
        stat.S_IFCHR: "a character device",
        stat.S_IFBLK: "a block device",
        stat.S_IFLNK: "a symbolic link",
        stat.S_IFDIR: "a directory",
        0: "not a regular file",
    }
    for mode, text in words.items():
        assert H._what(mode | 0o644) == text


def test_not_regular_and_link_loop_messages_read_in_full(tmp_path: Path) -> None:
    import stat

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(consist.ConsistError) as err:
        H.FileHasher(H.NullMemo()).hash_path(fifo, "feed")
    assert str(err.value) == (
        f"The input 'feed' at {fifo} is a named pipe (FIFO), not a regular file. Likely cause: only regular "
        "files, directories and (in outputs) symbolic links are hashed and stored; reading a pipe, socket or "
        "device may never end and gives different bytes every time. Fix: pass a regular file or a directory; "
        "write the data to a file first."
    )
    assert str(H.not_regular(fifo, stat.S_IFBLK)).startswith(f"{fifo} is a block device, not a regular file.")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(consist.ConsistError) as err:
        H.FileHasher(H.NullMemo()).hash_path(loop, "cfg")
    assert str(err.value) == (
        f"The input 'cfg' at {loop} is a symbolic link loop (it points to {str(loop)!r}): following it never "
        "resolves. Likely cause: a link points to itself, to a link pointing back to it, or to a directory "
        "above it. Fix: remove the link or point it somewhere outside the tree."
    )
    plain_dir = tmp_path / "d"
    plain_dir.mkdir()
    assert str(H.link_loop(plain_dir, back_to="/top")).startswith(
        f"{plain_dir} is a symbolic link loop: following it leads back to /top, which contains it."
    )


def test_hash_dir_uses_a_walk_it_is_given(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "a").write_bytes(b"a")
    (d / "b").write_bytes(b"bb")
    walked = [w for w in H.walk_files(d) if w[0] == "b"]
    digest, manifest = H.FileHasher(H.NullMemo()).hash_dir(d, walked=walked)
    assert manifest == [["b", sha(b"bb"), 2]] and digest == sha(H.manifest_bytes(manifest))


def test_walking_without_following_links(tmp_path: Path) -> None:
    import stat

    d = tmp_path / "d"
    (d / "a").mkdir(parents=True)
    (d / "a" / "b.txt").write_text("b")
    (d / "a-c.txt").write_text("c")
    (d / "link").symlink_to(d / "a")
    followed = {rel: st for rel, _full, st in H.walk_files(d)}
    assert sorted(followed) == ["a-c.txt", "a/b.txt", "link/b.txt"]  # the default follows links
    unfollowed = list(H.walk_files(d, follow_links=False))
    assert [rel for rel, _f, _s in unfollowed] == ["a-c.txt", "a/b.txt", "link"]
    assert stat.S_ISLNK(unfollowed[2][2].st_mode)


def test_deep_trees_hash_and_link_loops_are_named(tmp_path: Path) -> None:
    d = tmp_path / "deep"
    (d / "a" / "b" / "c").mkdir(parents=True)
    (d / "a" / "b" / "c" / "f.txt").write_text("f")
    manifest = H.FileHasher(H.NullMemo()).hash_dir(d)[1]
    assert manifest == [["a/b/c/f.txt", sha(b"f"), 1]]
    (d / "a" / "b" / "up").symlink_to(d / "a")
    with pytest.raises(consist.ConsistError) as err:
        H.FileHasher(H.NullMemo()).hash_path(d)
    assert str(err.value).startswith(
        f"{d / 'a' / 'b' / 'up'} is a symbolic link loop (it points to {str(d / 'a')!r}): following it leads "
        f"back to {d / 'a'}, which contains it."
    )


def test_a_dangling_link_in_an_input_is_named(tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    (d / "gone").symlink_to("moved-away.csv")
    with pytest.raises(consist.ConsistError) as err:
        H.FileHasher(H.NullMemo()).hash_path(d)
    assert str(err.value) == (
        f"{d / 'gone'} in {d} is a symbolic link to 'moved-away.csv', which does not exist. Likely cause: the "
        "link's target was moved or deleted, or the link was made relative to another folder. Fix: fix or "
        "remove the link."
    )


def test_manifests_with_links_have_their_own_format_and_names_must_be_utf8() -> None:
    link = H.link_entry("l", "target.txt")
    assert link == ["l", sha(b"consist-link-v1\x00target.txt"), 10, {"symlink": "target.txt"}]
    assert (
        H.manifest_bytes([link])
        == ('{"format":"consist-dir-v2","files":[["l","' + link[1] + '",10,{"symlink":"target.txt"}]]}').encode()
    )
    bad_name = os.fsdecode(b"caf\xe9.csv")
    with pytest.raises(consist.ConsistError) as err:
        H.manifest_bytes([[bad_name, sha(b"x"), 1]])
    assert str(err.value) == (
        f"The name or link target {bad_name!r} (bytes {os.fsencode(bad_name)!r}) in a directory is not UTF-8. "
        "Likely cause: directory manifests are UTF-8 text; a program wrote the name in another encoding. "
        "Fix: rename the file, or make the link again, with a UTF-8 name."
    )
    with pytest.raises(consist.ConsistError, match="link target"):
        H.manifest_bytes([["ok", sha(b"x"), 1], ["l", sha(b"y"), 3, {"symlink": bad_name}]])


# --------------------------------------------------------------------- opening and reading files


def test_open_regular_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    f = tmp_path / "f.txt"
    f.write_bytes(b"data")
    link = tmp_path / "link.txt"
    link.symlink_to(f)
    fd = H.open_regular(link)  # following the link is the default
    try:
        assert os.read(fd, 10) == b"data"
    finally:
        os.close(fd)
    with pytest.raises(consist.ConsistError) as err:
        H.open_regular(link, follow=False)
    assert str(err.value).startswith(f"{link} is a symbolic link, not a regular file. Likely cause:")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(consist.ConsistError) as err:
        H.open_regular(loop)
    assert str(err.value).startswith(f"{loop} is a symbolic link loop")
    with pytest.raises(consist.ConsistError) as err:
        H.open_regular(tmp_path)
    assert str(err.value).startswith(f"{tmp_path} is a directory, not a regular file.")
    with pytest.raises(FileNotFoundError):
        H.open_regular(tmp_path / "absent")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(consist.ConsistError, match="is a named pipe"):
        H.open_regular(fifo)  # without blocking: nobody writes to it


def test_hash_stream_follows_links_unless_told_and_closes_what_it_opens(tmp_path: Path) -> None:
    f = tmp_path / "f.txt"
    f.write_bytes(b"content")
    link = tmp_path / "link.txt"
    link.symlink_to(f)
    before = len(os.listdir("/proc/self/fd"))
    assert H.hash_stream(link, 7) == sha(b"content")
    assert len(os.listdir("/proc/self/fd")) == before
    with pytest.raises(consist.ConsistError, match="is a symbolic link, not a regular file"):
        H.hash_stream(link, 7, follow=False)
    fd = os.open(f, os.O_RDONLY)
    try:
        assert H.hash_stream(tmp_path / "ignored-name", 7, fd=fd) == sha(b"content")  # reads the descriptor
        assert os.fstat(fd)  # still open: the caller's to close
    finally:
        os.close(fd)


def test_hash_file_reads_the_descriptor_it_is_given(tmp_path: Path) -> None:
    path = tmp_path / "swapped.bin"
    path.write_bytes(b"first")
    fd = os.open(path, os.O_RDONLY)
    try:
        (tmp_path / "other.bin").write_bytes(b"second!")
        os.replace(tmp_path / "other.bin", path)  # the name now names other bytes
        assert H.FileHasher(H.NullMemo()).hash_file(path, fd=fd) == sha(b"first")
    finally:
        os.close(fd)
    link = tmp_path / "link.bin"
    link.symlink_to(path)
    assert H.FileHasher(H.NullMemo()).hash_file(link) == sha(b"second!")  # follows by default
    with pytest.raises(consist.ConsistError, match="is a symbolic link"):
        H.FileHasher(H.NullMemo()).hash_file(link, follow=False)


def test_a_hasher_reads_each_file_once(tmp_path: Path) -> None:
    f = tmp_path / "once.bin"
    f.write_bytes(b"x" * 1000)
    hasher = H.FileHasher(H.NullMemo())
    assert hasher.hash_path(f) == hasher.hash_path(f) == hasher.hash_file(f)
    assert hasher.bytes_hashed == 1000


def test_inputs_holding_loops_or_pipes_are_named(tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    (d / "self").symlink_to(d / "self")
    with pytest.raises(consist.ConsistError) as err:
        list(H.walk_files(d))
    assert str(err.value).startswith(f"{d / 'self'} is a symbolic link loop")
    (d / "self").unlink()
    os.mkfifo(d / "feed")
    with pytest.raises(consist.ConsistError) as err:
        list(H.walk_files(d))
    assert str(err.value).startswith(f"{d / 'feed'} is a named pipe (FIFO), not a regular file.")


def test_a_file_changed_within_the_racy_window_is_never_looked_up_in_the_memo(tmp_path: Path) -> None:
    f = tmp_path / "fresh.bin"
    f.write_bytes(b"fresh")
    asked: list[tuple[int, int, int, int]] = []

    class Watching(Memo):
        def memo_get(self, key, algo):
            asked.append(key)
            return super().memo_get(key, algo)

    memo = Watching()
    assert H.FileHasher(memo).hash_path(f) == sha(b"fresh")
    assert asked == [] and memo.puts == []  # it cannot be there, and is not remembered either
    past = time.time_ns() - 10 * H.RACY_WINDOW_NS
    os.utime(f, ns=(past, past))
    assert H.FileHasher(memo).hash_path(f) == sha(b"fresh")
    assert asked == [H.stat_key(f.stat())] and len(memo.puts) == 1


def test_a_file_hashed_through_a_link_is_remembered_by_its_target_so_a_new_target_content_is_seen(
    tmp_path: Path,
) -> None:
    target = tmp_path / "data.csv"
    target.write_bytes(b"version 1")
    aged(target, 20)
    link = tmp_path / "input.csv"
    link.symlink_to(target)
    memo = Memo()
    hasher = H.FileHasher(memo)
    assert hasher.hash_file(link) == sha(b"version 1")
    assert [key for key, _, _ in memo.puts] == [H.stat_key(target.stat())]  # the target's stat, not the link's
    target.write_bytes(b"version 2")  # same size; the link itself is untouched
    aged(target, 10)
    assert hasher.hash_file(link) == sha(b"version 2")
    assert hasher.hash_file(link, follow=True) == sha(b"version 2")
