"""How the cost of a call grows with the history: 1,000, 10,000 and 100,000 runs.

    .venv/bin/python benchmarks/bench_growth.py [--sizes 1000 10000 100000] [--rounds R] [--quick] [--out FILE]

For each size, a run index is filled with that many runs (the history of
bench_lookups.py: ten models, scenarios, tags, a third of them hits, two outputs
and two inputs per run, written straight through the index's statements) and
merged into its DuckDB file, untimed. Then, in R rounds, each size takes its
turn in rotating order; in its turn a workspace on that history

- opens a ``Tracker`` and answers a first query (``find_runs(limit=10)``): *open*;
- makes 5 hits of a trivial step writing one small file: *hit*;
- makes 5 misses of it (new configs): *miss*;
- answers 5 lookups ``find_runs(model=..., limit=20)`` (the same size of answer at every size): *lookup*;
- closes the tracker, which merges the round's new runs into the DuckDB file: *close*.

Growth is the median at the largest size over the median at the smallest
(target: at most 1.3 for open, hit, miss and lookup). The size of the run index
and of the DuckDB file per run is recorded for each size (the index's target: at
most 0.6 kB per run). Writes benchmarks/results/growth-<date>-<time>.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import finish, new_result, rotation, summary  # noqa: E402
from bench_lookups import MODELS, History, fill  # noqa: E402

PARAMS = {"sizes": [1_000, 10_000, 100_000], "rounds": 30, "per_round": 5, "chunk": 20_000, "lookup_limit": 20}
QUICK = {"sizes": [300, 3_000], "rounds": 4, "per_round": 3, "chunk": 20_000, "lookup_limit": 20}
TARGETS = {"growth": 1.3, "index_kb_per_run": 0.6}
KINDS = ("open", "hit", "miss", "lookup", "close")


def step(path: str, i: int) -> Path:
    p = Path(path) / f"{i}.txt"
    p.write_text(str(i))
    return p


def build(base: Path, n: int, chunk: int) -> dict[str, Any]:
    from consist import Tracker
    from consist.store.sqlite import SQLiteIndex, index_path_for

    db = base / "provenance.duckdb"
    index = SQLiteIndex(index_path_for(db))
    counts = fill(index, History(n, base / "runs"), chunk)
    index.close()
    started = time.perf_counter()
    with Tracker(base / "runs", db_path=db, project_root=base, code_version="v") as t:
        merged = t.sync()
    counts["merge_seconds"] = round(time.perf_counter() - started, 1)
    counts["merged_runs"] = merged
    index_bytes = sum(p.stat().st_size for p in db.parent.glob(f".{db.name}.consist/*") if p.is_file())
    counts["index_bytes"] = index_bytes
    counts["index_kb_per_run"] = index_bytes / n / 1000
    counts["duckdb_kb_per_run"] = db.stat().st_size / n / 1000
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", help="runs in each history")
    ap.add_argument("--rounds", type=int, help="rounds (each size once per round)")
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not for publication")
    ap.add_argument("--out", help="results file (default: benchmarks/results/growth-<date>-<time>.json)")
    args = ap.parse_args()
    p: dict[str, Any] = {**(QUICK if args.quick else PARAMS), "quick": args.quick}
    if args.sizes:
        p["sizes"] = sorted(args.sizes)
    if args.rounds:
        p["rounds"] = args.rounds
    os.environ["CONSIST_PROGRESS"] = "0"
    base = Path(tempfile.mkdtemp(prefix="consist_bench_growth_", dir="/var/tmp"))
    result = new_result("growth", base, p)
    result["targets"] = TARGETS
    try:
        from consist import Tracker

        sizes = p["sizes"]
        result["builds"] = {}
        for n in sizes:
            print(f"filling and merging {n:,} runs", file=sys.stderr, flush=True)
            result["builds"][str(n)] = build(base / str(n), n, p["chunk"])
            (base / str(n) / "out").mkdir()
        got: dict[str, dict[str, list[float]]] = {str(n): {k: [] for k in KINDS} for n in sizes}
        counter = 0
        # Each history's hit: one executed run of the step, made before timing.
        for n in sizes:
            where = base / str(n)
            db = where / "provenance.duckdb"
            with Tracker(where / "runs", db_path=db, project_root=where, code_version="v") as t:
                t.run(step, name="step", config={"path": str(where / "out"), "i": -1}, outputs=["o"])
        time.sleep(1.1)  # the output is older than the hash memo's racy window, as in any later session
        first = []
        for r in range(p["rounds"]):
            order = rotation([str(n) for n in sizes], r)
            first.append(order[0])
            for key in order:
                where, out, samples = base / key, str(base / key / "out"), got[key]
                s = time.perf_counter()
                t = Tracker(where / "runs", db_path=where / "provenance.duckdb", project_root=where, code_version="v")
                t.find_runs(limit=10)
                samples["open"].append(time.perf_counter() - s)
                for _ in range(p["per_round"]):
                    s = time.perf_counter()
                    hit = t.run(step, name="step", config={"path": out, "i": -1}, outputs=["o"])
                    samples["hit"].append(time.perf_counter() - s)
                    assert hit.cache_hit
                for _ in range(p["per_round"]):
                    counter += 1
                    s = time.perf_counter()
                    miss = t.run(step, name="step", config={"path": out, "i": counter}, outputs=["o"])
                    samples["miss"].append(time.perf_counter() - s)
                    assert not miss.cache_hit
                for j in range(p["per_round"]):
                    s = time.perf_counter()
                    found = t.find_runs(model=MODELS[(r + j) % len(MODELS)], limit=p["lookup_limit"])
                    samples["lookup"].append(time.perf_counter() - s)
                    assert len(found) == p["lookup_limit"]
                s = time.perf_counter()
                t.close()
                samples["close"].append(time.perf_counter() - s)
        result["first"] = first
        result["measurements"] = {key: {k: summary(v) for k, v in kinds.items()} for key, kinds in got.items()}
        small, large = str(sizes[0]), str(sizes[-1])
        result["growth"] = {k: statistics.median(got[large][k]) / statistics.median(got[small][k]) for k in KINDS}
    finally:
        shutil.rmtree(base, ignore_errors=True)
    finish(result, args.out)


if __name__ == "__main__":
    main()
