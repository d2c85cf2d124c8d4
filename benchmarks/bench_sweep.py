"""A sweep of many small steps in one process: ``tracker.map_runs`` against the bare loop.

    .venv/bin/python benchmarks/bench_sweep.py [--steps N] [--rounds R] [--quick] [--out FILE]

Each step writes one small file (its row's number) and returns its path. In each
round, with rows never seen before:

- the bare loop calls the step once per row;
- ``tracker.map_runs(step, rows, outputs=["o"])`` runs the same rows, every one
  a miss (no executor: the misses run in the calling process, one by one);
- ``map_runs`` of the same rows again, every one a hit.

The three take turns going first. The overhead per step is the difference of
medians divided by the number of steps (targets: at most 0.5 ms on a miss and
0.3 ms on the all-hit rerun). Writes benchmarks/results/sweep-<date>-<time>.json.
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

PARAMS = {"steps": 1000, "rounds": 7}
QUICK = {"steps": 100, "rounds": 2}
TARGETS = {"miss_ms_per_step": 0.5, "hit_ms_per_step": 0.3}


def step(out: str, i: int) -> Path:
    p = Path(out) / f"{i}.txt"
    p.write_text(str(i))
    return p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, help="steps per sweep")
    ap.add_argument("--rounds", type=int, help="rounds")
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not for publication")
    ap.add_argument("--out", help="results file (default: benchmarks/results/sweep-<date>-<time>.json)")
    args = ap.parse_args()
    p: dict[str, Any] = {**(QUICK if args.quick else PARAMS), "quick": args.quick}
    for key in ("steps", "rounds"):
        if getattr(args, key):
            p[key] = getattr(args, key)
    os.environ["CONSIST_PROGRESS"] = "0"
    base = Path(tempfile.mkdtemp(prefix="consist_bench_sweep_", dir="/var/tmp"))
    result = new_result("sweep", base, p)
    result["targets"] = TARGETS
    try:
        from consist import Tracker

        tracker = Tracker(base / "runs", project_root=base, code_version="v")
        n = p["steps"]
        got: dict[str, list[float]] = {"bare loop": [], "map_runs, all misses": [], "map_runs, all hits": []}
        first = []
        for r in range(-1, p["rounds"]):  # round -1 warms up (imports, first statements), not counted
            out = base / "runs" / f"r{r}"
            bare_out = base / f"bare{r}"
            out.mkdir(parents=True)
            bare_out.mkdir()
            rows = [{"out": str(out), "i": r * n + k} for k in range(n)]

            def bare(rows: list[dict[str, Any]] = rows, bare_out: Path = bare_out) -> float:
                s = time.perf_counter()
                for row in rows:
                    step(str(bare_out), row["i"])
                return time.perf_counter() - s

            def sweep(rows: list[dict[str, Any]] = rows, hits: bool = False) -> float:
                s = time.perf_counter()
                done = tracker.map_runs(step, rows, name="step", outputs=["o"], progress=False)
                elapsed = time.perf_counter() - s
                assert not done.failed and all(res.cache_hit == hits for res in done.results)
                return elapsed

            # The all-hit sweep needs the misses first; the bare loop takes turns before, between and after.
            order = rotation(["bare loop", "sweep"], r)
            timings: dict[str, float] = {}
            for what in order:
                if what == "bare loop":
                    timings["bare loop"] = bare()
                else:
                    timings["map_runs, all misses"] = sweep()
                    timings["map_runs, all hits"] = sweep(hits=True)
            if r >= 0:
                first.append(order[0])
                for k, v in timings.items():
                    got[k].append(v)
            shutil.rmtree(bare_out)
        tracker.close()
        result["first"] = first
        result["measurements"] = {k: summary(v) for k, v in got.items()}
        bare_ms = statistics.median(got["bare loop"]) * 1000
        result["overhead_ms_per_step"] = {
            "miss": (statistics.median(got["map_runs, all misses"]) * 1000 - bare_ms) / n,
            "hit": (statistics.median(got["map_runs, all hits"]) * 1000 - bare_ms) / n,
        }
    finally:
        shutil.rmtree(base, ignore_errors=True)
    finish(result, args.out)


if __name__ == "__main__":
    main()
