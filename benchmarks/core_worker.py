"""The core workload, run by bench_core.py in one process per library.

    python core_worker.py ours|upstream

``ours`` drives this consist (run with the project's interpreter), ``upstream``
the original consist 0.3.5 (run with the interpreter of its own virtual
environment). Both sides do the same operations through the same code; only
the calls into the library (the Adapter classes) differ. Each operation is
timed here, in the worker, and its elapsed seconds are sent back.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import serve, stopwatch, summary

logging.disable(logging.WARNING)


def trivial(i: int = 0) -> None:
    return None


def consume(big: Path, tag: int = 0) -> None:
    return None


def sha256_file(path: Path) -> str:
    """Plain hashlib.sha256 over the file in 1 MiB reads: the baseline for first-hash throughput."""
    h = hashlib.sha256()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


class Ours:
    """This consist."""

    def tracker(self, work: Path) -> Any:
        from consist import Tracker

        return Tracker(work / "runs", db_path=work / "prov.duckdb", project_root=work)

    def trivial(self, t: Any, name: str, i: int) -> bool:
        return t.run(trivial, name=name, config={"i": i}).cache_hit

    def big(self, t: Any, big: Path) -> bool:
        return t.run(consume, inputs={"big": big}, config={"tag": 0}).cache_hit

    def query(self, t: Any) -> int:
        return len(t.find_runs(limit=10))

    def count(self, t: Any) -> int:
        return len(t.find_runs(limit=None))

    def close(self, t: Any) -> None:
        t.close()

    def file_hash(self, t: Any, path: Path) -> str:
        from consist.hashing import FileHasher, NullMemo

        return FileHasher(NullMemo()).hash_path(path)


class Upstream:
    """The original consist 0.3.5 (it has no Tracker.close: disposing its engine is the nearest)."""

    def tracker(self, work: Path) -> Any:
        from consist import Tracker

        return Tracker(run_dir=work / "runs", db_path=work / "prov.duckdb")

    def trivial(self, t: Any, name: str, i: int) -> bool:
        return t.run(fn=trivial, name=name, config={"i": i}, runtime_kwargs={"i": i}).cache_hit

    def big(self, t: Any, big: Path) -> bool:
        from consist import ExecutionOptions

        eo = ExecutionOptions(input_binding="paths")
        return t.run(fn=consume, name="consume", inputs={"big": big}, config={"tag": 0}, execution_options=eo).cache_hit

    def query(self, t: Any) -> int:
        return len(t.find_runs(limit=10))

    def count(self, t: Any) -> int:
        return len(t.find_runs(limit=10**9))

    def close(self, t: Any) -> None:
        engine = getattr(t, "engine", None)
        if engine is not None:
            engine.dispose()

    def file_hash(self, t: Any, path: Path) -> str:
        return t.identity.compute_file_checksum(path)


class Workload:
    def __init__(self, api: Any) -> None:
        self.api = api
        self.t: Any = None
        self.work = Path.cwd()
        self.bigfile = Path()

    def setup(self, work: str, big: str) -> dict[str, Any]:
        import consist

        self.work, self.bigfile = Path(work), Path(big)
        os.chdir(self.work)
        self.t = self.api.tracker(self.work)
        self.api.trivial(self.t, "warm", -5)  # the first call loads modules
        self.api.trivial(self.t, "trivial", -1)  # what every hit below reuses
        return {"version": consist.__version__, "python": sys.version.split()[0]}

    def miss(self, i: int) -> dict[str, Any]:
        s = time.perf_counter()
        hit = self.api.trivial(self.t, "trivial", i)
        s = time.perf_counter() - s
        assert not hit
        return {"s": s}

    def hit(self) -> dict[str, Any]:
        s = time.perf_counter()
        hit = self.api.trivial(self.t, "trivial", -1)
        s = time.perf_counter() - s
        assert hit
        return {"s": s}

    def runs(self) -> dict[str, Any]:
        return {"runs": self.api.count(self.t)}

    def fill(self, target: int) -> dict[str, Any]:
        """Add runs until the database holds `target` (hits are recorded as runs by both libraries)."""
        have = self.api.count(self.t)
        s = time.perf_counter()
        for j in range(max(0, target - have)):
            self.api.trivial(self.t, "filler", j)
        return {"s": time.perf_counter() - s, "runs": self.api.count(self.t)}

    def hash(self, order: list[str]) -> dict[str, Any]:
        out = {}
        for which in order:
            if which == "hashlib":
                out["hashlib_s"] = stopwatch(lambda: sha256_file(self.bigfile))
            else:
                out["consist_s"] = stopwatch(lambda: self.api.file_hash(self.t, self.bigfile))
        return out

    def close_main(self) -> dict[str, Any]:
        self.api.close(self.t)
        self.t = None
        return {}

    def open(self) -> dict[str, Any]:
        """Construct a Tracker on the existing database, nothing else (closed afterwards, untimed)."""
        box = []
        s = stopwatch(lambda: box.append(self.api.tracker(self.work)))
        self.api.close(box[0])
        return {"s": s}

    def open_query(self) -> dict[str, Any]:
        """What a user pays to look at the database: open, a first query (the latest 10 runs), close."""

        def go() -> None:
            t = self.api.tracker(self.work)
            assert self.api.query(t) == 10
            self.api.close(t)

        return {"s": stopwatch(go)}

    def open_hit(self) -> dict[str, Any]:
        def go() -> None:
            t = self.api.tracker(self.work)
            assert self.api.trivial(t, "trivial", -1)
            self.api.close(t)

        return {"s": stopwatch(go)}

    def big_open(self) -> dict[str, Any]:
        self.t = self.api.tracker(self.work)
        return {}

    def big_first(self) -> dict[str, Any]:
        box = []
        s = stopwatch(lambda: box.append(self.api.big(self.t, self.bigfile)))
        assert not box[0]
        return {"s": s}

    def big_rerun(self) -> dict[str, Any]:
        box = []
        s = stopwatch(lambda: box.append(self.api.big(self.t, self.bigfile)))
        assert box[0]
        return {"s": s}

    def scale(self, runs: int, n: int) -> dict[str, Any]:
        """This consist only: a database of `runs` runs; hit, miss and the signature lookup alone."""
        from consist import Tracker

        t = Tracker(self.work / "runs_big", db_path=self.work / "big.duckdb", project_root=self.work)
        s = time.perf_counter()
        for i in range(runs):
            t.run(trivial, name="many", config={"i": i})
        fill_s = time.perf_counter() - s
        s = time.perf_counter()
        t.sync()
        merge_s = time.perf_counter() - s
        in_db = len(t._index.query("SELECT id FROM run"))

        def hit(i: int) -> float:
            s = time.perf_counter()
            r = t.run(trivial, name="many", config={"i": i * 37 % runs})
            s = time.perf_counter() - s
            assert r.cache_hit
            return s

        def miss(i: int) -> float:
            s = time.perf_counter()
            r = t.run(trivial, name="many", config={"i": -1 - i})
            s = time.perf_counter() - s
            assert not r.cache_hit
            return s

        sig = t._index.query("SELECT signature FROM run LIMIT 1")[0]["signature"]

        def lookup(i: int) -> float:
            return stopwatch(lambda: t._index.producers(sig))

        out = {
            "runs_in_db": in_db,
            "fill_s": fill_s,
            "merge_into_duckdb_s": merge_s,
            "hit": summary([hit(i) for i in range(n)]),
            "miss": summary([miss(i) for i in range(n)]),
            "lookup_only": summary([lookup(i) for i in range(n)]),
        }
        t.close()
        return out


def main() -> None:
    api = {"ours": Ours, "upstream": Upstream}[sys.argv[1]]()
    w = Workload(api)
    ops = ("setup", "miss", "hit", "runs", "fill", "hash", "close_main", "open", "open_query", "open_hit",
           "big_open", "big_first", "big_rerun", "scale")  # fmt: skip
    serve({op: getattr(w, op) for op in ops})


if __name__ == "__main__":
    main()
