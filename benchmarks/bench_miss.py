"""A trivial tracker.run miss with no cache hits recorded, and with 40,000 hits of the same model.

    .venv/bin/python benchmarks/bench_miss.py [--quick] [--out FILE]

Every miss explains itself: it looks up the newest executed runs of its model
(Index.recent_runs_of_model, 50 of them) to say what changed. This script
measures whether that cost grows with the hits a model has accumulated since its
last executed runs. Three trackers, each with its own database, record two
executed runs of a trivial step; two of them then record 40,000 hits of it, and
one of those two answers the lookup as the previous schema did (through the
(model, ended_at) index, walking past every hit), for reference.

First the lookup alone is timed, on all three, in rounds of rotating order.
Then the misses (a config that changes per call), one on each database per
round, in rotating order. Each miss records one more executed run, newer than
the hits; as long as fewer than 50 of those are newer than the hits, every
lookup still has to get past all of them with the previous index, so the misses
run in 45 rounds.

Writes every sample to benchmarks/results/miss-<date>-<time>.json and prints the
Markdown table that benchmarks/render.py makes from that file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import interleaved, new_result, print_block, write_result  # noqa: E402

PARAMS = {"hits": 40_000, "miss_rounds": 45, "lookup_rounds": 200}
QUICK = {"hits": 4_000, "miss_rounds": 20, "lookup_rounds": 30}
TARGETS = {"miss": {"max_ms": 5}, "flat": {"max_ratio": 1.25}}
ARMS = ("no_hits", "hits", "hits_previous_index")
# The lookup as the previous schema ran it: through the (model, ended_at) index, past every hit.
PREVIOUS_LOOKUP = (
    "SELECT * FROM run INDEXED BY run_by_model "
    "WHERE model = ? AND status = 'completed' AND cache_hit = 0 ORDER BY ended_at DESC LIMIT ?"
)


def say(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, file=sys.stderr, flush=True)


def trivial(i: int) -> None:
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not for publication")
    ap.add_argument("--out", help="results file (default: benchmarks/results/miss-<date>-<time>.json)")
    args = ap.parse_args()
    p = dict(QUICK if args.quick else PARAMS)
    assert p["miss_rounds"] + 2 < 50, "every miss must still find the hits between it and the older executed runs"
    base = Path(tempfile.mkdtemp(prefix="consist_bench_"))
    result = new_result("miss", base, {**p, "quick": args.quick})
    result["targets"] = TARGETS
    m: dict[str, Any] = {}
    result["measurements"] = m
    os.environ["CONSIST_PROGRESS"] = "0"
    from consist import Tracker

    trackers: dict[str, Any] = {}
    try:
        for arm in ARMS:
            work = base / arm
            work.mkdir()
            t = Tracker(work / "runs", db_path=work / "prov.duckdb", project_root=work, code_version="bench")
            t.run(trivial, name="trivial", config={"i": -2})  # the first call loads modules
            assert not t.run(trivial, name="trivial", config={"i": -1}).cache_hit  # the run every hit reuses
            trackers[arm] = t
        previous = trackers["hits_previous_index"]._index
        previous.recent_runs_of_model = lambda model, limit=50: previous.query(PREVIOUS_LOOKUP, (model, limit))
        m["fill_s"] = {}
        for arm in ARMS[1:]:
            say(f"record {p['hits']:,} hits ({arm})")
            s = time.perf_counter()
            for _ in range(p["hits"]):
                assert trackers[arm].run(trivial, name="trivial", config={"i": -1}).cache_hit
            m["fill_s"][arm] = time.perf_counter() - s

        def count(t: Any, hit: int) -> int:
            sql = "SELECT count(*) AS n FROM run WHERE model = 'trivial' AND cache_hit = ?"
            return int(t._index.query_one(sql, (hit,))["n"])

        m["recorded"] = {arm: {"hits": count(t, 1), "executed": count(t, 0)} for arm, t in trackers.items()}
        plan = (
            "EXPLAIN QUERY PLAN SELECT * FROM run INDEXED BY {} "
            "WHERE model = 'trivial' AND cache_hit = 0 AND status = 'completed' ORDER BY ended_at DESC LIMIT 50"
        )
        m["plans"] = {
            index: [r["detail"] for r in previous.query(plan.format(index))]
            for index in ("run_producers_by_model", "run_by_model")
        }

        def lookup(arm: str) -> Any:
            ix = trackers[arm]._index

            def one(i: int) -> float:
                s = time.perf_counter()
                rows = ix.recent_runs_of_model("trivial")
                s = time.perf_counter() - s
                assert len(rows) == 2
                return s

            return one

        say(f"lookup x{p['lookup_rounds']}")
        m["lookup"] = interleaved({arm: lookup(arm) for arm in ARMS}, p["lookup_rounds"])
        arms = m["lookup"]["arms"]
        m["lookup"]["ratio_of_medians"] = arms["hits"]["median_ms"] / arms["no_hits"]["median_ms"]

        def miss(arm: str) -> Any:
            def one(i: int) -> float:
                s = time.perf_counter()
                hit = trackers[arm].run(trivial, name="trivial", config={"i": i}).cache_hit
                s = time.perf_counter() - s
                assert not hit
                return s

            return one

        say(f"miss x{p['miss_rounds']}")
        m["miss"] = interleaved({arm: miss(arm) for arm in ARMS}, p["miss_rounds"])
        arms = m["miss"]["arms"]
        m["miss"]["ratio_of_medians"] = arms["hits"]["median_ms"] / arms["no_hits"]["median_ms"]
    finally:
        for t in trackers.values():
            t.close()
        shutil.rmtree(base, ignore_errors=True)
    path = write_result(result, args.out)
    say(f"wrote {path}")
    print_block(result, path)


if __name__ == "__main__":
    main()
