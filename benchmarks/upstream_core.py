"""The same workload as bench_core.py, for the original consist 0.3.5.

Runs inside its own virtual environment: python upstream_core.py WORKDIR N BIGFILE
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path

logging.disable(logging.WARNING)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import timed  # noqa: E402  (no consist import: it runs under the original's venv)

import consist  # noqa: E402
from consist import ExecutionOptions, Tracker  # noqa: E402


def trivial(i: int = 0):
    return None


def consume(big: Path, tag: int = 0):
    return None


def main() -> None:
    work, n, big = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    os.chdir(work)
    res = {"version": consist.__version__}
    t = Tracker(run_dir=work / "runs", db_path=work / "prov.duckdb")
    t.run(fn=trivial, name="warm", config={"i": -5}, runtime_kwargs={"i": -5})
    res["miss"] = timed(lambda i: t.run(fn=trivial, name="trivial", config={"i": i}, runtime_kwargs={"i": i}), n)
    t.run(fn=trivial, name="trivial", config={"i": -1}, runtime_kwargs={"i": -1})
    res["hit"] = timed(lambda i: t.run(fn=trivial, name="trivial", config={"i": -1}, runtime_kwargs={"i": -1}), n)
    fill = int(os.environ.get("UPSTREAM_DB_RUNS", "1000")) - n - 3
    for i in range(max(0, fill)):
        t.run(fn=trivial, name="filler", config={"i": i}, runtime_kwargs={"i": i})
    res["db_runs"] = max(0, fill) + n + 3
    res["open_1000"] = timed(lambda i: Tracker(run_dir=work / "runs", db_path=work / "prov.duckdb"), 10)

    def open_and_hit(i):
        t2 = Tracker(run_dir=work / "runs", db_path=work / "prov.duckdb")
        assert t2.run(fn=trivial, name="trivial", config={"i": -1}, runtime_kwargs={"i": -1}).cache_hit

    res["open_1000_plus_hit_and_close"] = timed(open_and_hit, 10)
    s = time.perf_counter()
    h = hashlib.sha256()
    with open(big, "rb") as f:
        while b := f.read(1 << 20):
            h.update(b)
    raw = time.perf_counter() - s
    s = time.perf_counter()
    t.identity.compute_file_checksum(big)
    mine = time.perf_counter() - s
    res["hash_ratio"] = raw / mine
    eo = ExecutionOptions(input_binding="paths")
    t.run(fn=consume, name="consume_big", inputs={"big": big}, config={"tag": 0}, execution_options=eo)
    res["big_rerun"] = timed(
        lambda i: t.run(fn=consume, name="consume_big", inputs={"big": big}, config={"tag": 0}, execution_options=eo),
        3,
    )
    res["hit_again"] = timed(
        lambda i: t.run(fn=trivial, name="trivial", config={"i": -1}, runtime_kwargs={"i": -1}), 10
    )
    res["big_added_ms"] = res["big_rerun"]["median_ms"] - res["hit_again"]["median_ms"]
    print("RESULT " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
