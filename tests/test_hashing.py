"""Input hashing: SHA-256 of content, directories, the memo, fast mode, progress."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import consist
from consist import Tracker
from consist import hashing as H


def test_file_hash_is_sha256_of_content_and_recorded(tracker: Tracker) -> None:
    data = os.urandom(3 << 20)
    Path("big.bin").write_bytes(data)
    r = tracker.run(lambda big: None, name="h", inputs={"big": "big.bin"})
    expected = "sha256:" + hashlib.sha256(data).hexdigest()
    assert r.run.identity["inputs"]["big"] == expected
    arts = tracker.get_artifacts_for_run(r.run_id)
    assert arts.inputs["big"].hash == expected


def test_directory_hash_covers_names_and_content(tmp_path: Path) -> None:
    hasher = H.FileHasher(H.NullMemo())
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "a.csv").write_text("1")
    (d / "sub" / "b.csv").write_text("2")
    h1, manifest = hasher.hash_dir(d)
    assert [m[0] for m in manifest] == ["a.csv", "sub/b.csv"]
    assert h1 == H.sha256_bytes(H.manifest_bytes(manifest))
    (d / "a.csv").rename(d / "c.csv")  # same bytes, other name
    assert H.FileHasher(H.NullMemo()).hash_dir(d)[0] != h1
    (d / "c.csv").rename(d / "a.csv")
    assert H.FileHasher(H.NullMemo()).hash_dir(d)[0] == h1


class CountingMemo(H.NullMemo):
    def __init__(self) -> None:
        self.store: dict = {}

    def memo_get(self, key, algo):
        return self.store.get((key, algo))

    def memo_put(self, key, algo, digest):
        self.store[(key, algo)] = digest


def _age(path: Path, seconds: int = 10) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - seconds * 10**9))


def test_memo_skips_rehash_and_sees_changes(tmp_path: Path) -> None:
    f = tmp_path / "in.bin"
    f.write_bytes(b"x" * 100_000)
    _age(f)
    memo = CountingMemo()
    first = H.FileHasher(memo)
    h = first.hash_path(f)
    assert first.bytes_hashed == 100_000
    second = H.FileHasher(memo)
    assert second.hash_path(f) == h and second.bytes_hashed == 0
    f.write_bytes(b"y" * 100_000)
    third = H.FileHasher(memo)
    assert third.hash_path(f) != h and third.bytes_hashed == 100_000


def test_freshly_written_files_are_not_memoised(tmp_path: Path) -> None:
    f = tmp_path / "racy.bin"
    f.write_bytes(b"z")
    memo = CountingMemo()
    H.FileHasher(memo).hash_path(f)
    assert memo.store == {}  # mtime too close to now: a same-tick rewrite could go unseen


def test_each_input_hashed_once_per_run(tmp_path: Path) -> None:
    f = tmp_path / "x.bin"
    f.write_bytes(b"a" * 1000)
    hasher = H.FileHasher(H.NullMemo())
    hasher.hash_path(f)
    hasher.hash_path(f)
    assert hasher.bytes_hashed == 1000


def test_memo_is_shared_across_processes(tmp_path: Path, make_tracker) -> None:
    f = tmp_path / "shared.bin"
    f.write_bytes(os.urandom(1 << 20))
    _age(f)
    t = make_tracker()
    t.run(lambda src: None, name="first", inputs={"src": f})
    script = textwrap.dedent(
        f"""
        from consist import Tracker
        from consist import hashing
        t = Tracker({str(tmp_path / "runs")!r}, db_path={str(tmp_path / "provenance.duckdb")!r})
        h = hashing.FileHasher(t._index)
        h.hash_path({str(f)!r})
        print(h.bytes_hashed)
        t.close()
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"


def test_missing_input_is_an_error_not_a_hash(tracker: Tracker, calls) -> None:
    def step(src: Path) -> None:
        calls()

    with pytest.raises(consist.InputNotFoundError, match=r"missing\.csv"):
        tracker.run(step, inputs={"src": "missing.csv"})
    assert calls.n == 0


def test_fast_strategy_hashes_metadata_only(make_tracker, calls) -> None:
    t = make_tracker(hashing_strategy="fast")
    f = Path("in.csv")
    f.write_text("aaaa")

    def step(src: Path) -> None:
        calls()

    t.run(step, inputs={"src": f})
    assert t.run(step, inputs={"src": f}).cache_hit
    st = f.stat()
    f.write_text("bbbb")  # same size...
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # ...and same mtime: fast mode cannot tell
    assert t.run(step, inputs={"src": f}).cache_hit
    f.write_text("ccccc")
    assert not t.run(step, inputs={"src": f}).cache_hit
    assert calls.n == 2


def test_progress_bar_appears_for_long_hashing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd) -> None:
    from consist import progress

    monkeypatch.setenv("CONSIST_PROGRESS", "1")
    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    f = tmp_path / "p.bin"
    f.write_bytes(b"q" * (4 << 20))
    with progress.ByteProgress("hashing p.bin", 4 << 20) as bar:
        bar.advance(1 << 20)
        assert bar.shown
    H.FileHasher(H.NullMemo()).hash_path(f)
    assert "hashing" in capfd.readouterr().err


def test_progress_bar_stays_hidden_for_quick_work(monkeypatch: pytest.MonkeyPatch) -> None:
    from consist import progress

    monkeypatch.setenv("CONSIST_PROGRESS", "1")
    with progress.ByteProgress("x", 10) as bar:
        bar.advance(10)
        assert not bar.shown


PROGRESS_SCRIPT = """
import os
import re
from pathlib import Path
from consist import Tracker

Path("data").mkdir()
Path("data/big.bin").write_bytes(os.urandom(8 << 20))
with Tracker("runs", db_path="provenance.duckdb", project_root=".") as t:
    t.run(lambda big: None, name="step", inputs={"big": "data/big.bin"})
"""


def test_hashing_a_real_input_shows_a_progress_bar(tmp_path: Path) -> None:
    """A separate process, so only the bar itself can put these words on its stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSIST_")}
    shown = subprocess.run(
        [sys.executable, "-c", PROGRESS_SCRIPT], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**env, "CONSIST_PROGRESS": "1", "CONSIST_PROGRESS_DELAY": "0"},
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"hashing big\.bin.*8\.4 MB", shown.stderr), shown.stderr[-2000:]
    (tmp_path / "again").mkdir()
    quiet = subprocess.run(
        [sys.executable, "-c", PROGRESS_SCRIPT], cwd=tmp_path / "again", capture_output=True, text=True, timeout=120,
        env={**env, "CONSIST_PROGRESS": "0", "CONSIST_PROGRESS_DELAY": "0"},
    )  # fmt: skip
    assert quiet.returncode == 0 and "hashing" not in quiet.stderr
