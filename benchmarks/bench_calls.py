"""Per call and per process: consist against ``joblib.Memory``, side by side in one run.

    .venv/bin/python benchmarks/bench_calls.py [--quick] [--out FILE]

Per call (one process): a trivial function that writes one small file, cached by
``tracker.run(...)`` and by ``joblib.Memory(...).cache(fn)``; first every call is
a miss (a new argument each time), then every call is a hit. The two sides
alternate which goes first in each round. A bare call of the function is timed
beside them.

Per process: a script that opens the cache, makes one hit and exits, against
``python -c pass``, for consist and for joblib, all three interleaved. After
every consist process, the DuckDB file is read by a separate DuckDB connection
until the hit is visible to outside readers: how long that took after the
process ended is recorded (not part of the process's time).

Writes every sample to benchmarks/results/calls-<date>-<time>.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import interleaved, new_result, summary, write_result  # noqa: E402

PARAMS = {"calls": 1000, "processes": 30}
QUICK = {"calls": 100, "processes": 5}

STEP = """
from pathlib import Path

def step(i):
    p = Path("out") / f"{i}.txt"
    p.parent.mkdir(exist_ok=True)
    p.write_text(str(i))
    return p
"""

CONSIST_SCRIPT = (
    STEP
    + """
from consist import Tracker
with Tracker("runs", code_version="v") as t:
    assert t.run(step, name="step", config={"i": 0}, outputs=["o"]).cache_hit
"""
)

JOBLIB_SCRIPT = (
    STEP
    + """
import joblib
joblib.Memory("jl", verbose=0).cache(step)(0)
"""
)


def per_call(work: Path, n: int) -> dict[str, Any]:
    import joblib

    from consist import Tracker

    os.chdir(work)
    ns: dict[str, Any] = {}
    exec(STEP, ns)
    step = ns["step"]
    tracker = Tracker(work / "runs", code_version="v")
    cached = joblib.Memory(work / "jl", verbose=0).cache(step)

    def consist_call(i: int, hit: bool) -> float:
        s = time.perf_counter()
        r = tracker.run(step, name="step", config={"i": i}, outputs=["o"])
        elapsed = time.perf_counter() - s
        assert r.cache_hit == hit
        return elapsed

    def joblib_call(i: int) -> float:
        s = time.perf_counter()
        cached(i)
        return time.perf_counter() - s

    def bare(i: int) -> float:
        s = time.perf_counter()
        step(10**7 + i)
        return time.perf_counter() - s

    miss = interleaved({"consist": lambda i: consist_call(i, False), "joblib": joblib_call, "bare": bare}, n)
    hit = interleaved({"consist": lambda i: consist_call(i, True), "joblib": joblib_call}, n)
    tracker.close()
    out = {"miss": miss, "hit": hit}
    for kind in ("miss", "hit"):
        arms = out[kind]["arms"]
        out[kind]["ratio_consist_to_joblib"] = arms["consist"]["median_ms"] / arms["joblib"]["median_ms"]
    return out


def per_process(work: Path, n: int) -> dict[str, Any]:
    import duckdb

    (work / "one_hit_consist.py").write_text(CONSIST_SCRIPT.replace("cache_hit", "cache_hit or True", 1))
    (work / "one_hit_joblib.py").write_text(JOBLIB_SCRIPT)
    for script in ("one_hit_consist.py", "one_hit_joblib.py"):  # the first run of each is the miss that makes the hit
        subprocess.run([sys.executable, script], cwd=work, check=True)
    (work / "one_hit_consist.py").write_text(CONSIST_SCRIPT)
    visible = []

    def run(args: list[str]) -> float:
        s = time.perf_counter()
        subprocess.run([sys.executable, *args], cwd=work, check=True)
        return time.perf_counter() - s

    lag: list[float] = []

    def hits_in_duckdb() -> int:
        try:
            with duckdb.connect(str(work / "runs" / "provenance.duckdb"), read_only=True) as con:
                return int(con.execute("SELECT count(*) FROM run WHERE cache_hit").fetchone()[0])
        except duckdb.Error:  # the detached merger holds the file for a moment
            return -1

    def consist_process(i: int) -> float:
        elapsed = run(["one_hit_consist.py"])
        ended = time.perf_counter()
        while hits_in_duckdb() < i + 1 and time.perf_counter() - ended < 30:
            time.sleep(0.005)
        lag.append(time.perf_counter() - ended)  # until an outside reader sees the hit (not in the timing)
        visible.append(hits_in_duckdb())
        return elapsed

    arms = {"python -c pass": lambda i: run(["-c", "pass"]), "consist": consist_process,
            "joblib": lambda i: run(["one_hit_joblib.py"])}  # fmt: skip
    r = interleaved(arms, n)
    bare = r["arms"]["python -c pass"]["median_ms"]
    r["over_python_ms"] = {k: r["arms"][k]["median_ms"] - bare for k in ("consist", "joblib")}
    r["hits_visible_in_duckdb_after_each_process"] = visible
    r["every_hit_reached_duckdb"] = visible == list(range(1, n + 1))
    r["visible_in_duckdb_after"] = summary(lag)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not for publication")
    ap.add_argument("--out", help="results file (default: benchmarks/results/calls-<date>-<time>.json)")
    args = ap.parse_args()
    params = {**(QUICK if args.quick else PARAMS), "quick": args.quick}
    with tempfile.TemporaryDirectory(prefix="bench-calls-") as tmp:
        work = Path(tmp)
        result = new_result("calls", work, params)
        result["targets"] = {"ratio_to_joblib": 1.0, "process_ms": 100}
        (work / "calls").mkdir()
        (work / "procs").mkdir()
        result["per_call"] = per_call(work / "calls", params["calls"])
        result["per_process"] = per_process(work / "procs", params["processes"])
    path = write_result(result, args.out)
    pc, pp = result["per_call"], result["per_process"]
    print(f"per call, median ms: miss consist {pc['miss']['arms']['consist']['median_ms']:.3f} / joblib "
          f"{pc['miss']['arms']['joblib']['median_ms']:.3f} / bare {pc['miss']['arms']['bare']['median_ms']:.3f}; "
          f"hit consist {pc['hit']['arms']['consist']['median_ms']:.3f} / joblib "
          f"{pc['hit']['arms']['joblib']['median_ms']:.3f}")  # fmt: skip
    print(f"per process, median ms: python -c pass {pp['arms']['python -c pass']['median_ms']:.1f}, consist "
          f"{pp['arms']['consist']['median_ms']:.1f}, joblib {pp['arms']['joblib']['median_ms']:.1f}; "
          f"every hit reached DuckDB: {pp['every_hit_reached_duckdb']}, a median "
          f"{pp['visible_in_duckdb_after']['median_ms']:.0f} ms after its process ended")  # fmt: skip
    print(f"results: {path}")


if __name__ == "__main__":
    main()
