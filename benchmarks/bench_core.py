"""Core overhead: this consist against the original consist 0.3.5, in one run.

    .venv/bin/python benchmarks/bench_core.py [--quick] [--no-upstream] [--out FILE]

Each library runs in a worker process of its own (benchmarks/core_worker.py;
the original in its own virtual environment with ``pip install
consist==0.3.5``), doing the same operations. Paired measurements alternate
which library goes first in each round. Measured: a trivial tracker.run miss
and hit; on a database of 1,000 runs, constructing a Tracker, opening one and
running a first query, and opening one for a first hit; ``import consist``; a
re-run with an unchanged 1 GiB input; first-hash throughput against plain
hashlib.sha256; and (this consist only) hit, miss and lookup with 100,000 runs
in the database.

Writes every sample to benchmarks/results/core-<date>-<time>.json and prints
the Markdown table that benchmarks/render.py makes from that file.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import (  # noqa: E402
    Worker,
    compare,
    interleaved,
    make_big_file,
    new_result,
    print_block,
    rotation,
    summary,
    upstream_python,
    write_result,
)

PARAMS = {"n": 200, "open_n": 20, "import_reps": 10, "hash_rounds": 6, "big_rounds": 12, "db_runs": 1000,
          "file_mib": 1024, "scale_runs": 100_000, "scale_n": 200}  # fmt: skip
QUICK = {"n": 20, "open_n": 4, "import_reps": 4, "hash_rounds": 2, "big_rounds": 4, "db_runs": 100,
         "file_mib": 256, "scale_runs": 5_000, "scale_n": 50}  # fmt: skip
TARGETS = {
    "miss": {"max_ms": 5, "min_speedup": 50},
    "hit": {"max_ms": 2, "min_speedup": 50},
    "open_query": {"max_ms": 50},
    "big_added": {"max_ms": 20},
    "hash": {"min_pct_of_hashlib": 90},
    "scale_lookup": {"max_ms": 5},
}


def say(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, file=sys.stderr, flush=True)


def wall(python: str, code: str) -> float:
    s = time.perf_counter()
    subprocess.run([python, "-c", code], check=True, cwd=tempfile.gettempdir())
    return time.perf_counter() - s


def import_times(pythons: dict[str, str], reps: int) -> dict[str, Any]:
    """`import consist` against an empty interpreter, for each library, all four interleaved."""
    arms = {}
    for side, py in pythons.items():
        arms[f"{side}:import"] = lambda i, py=py: wall(py, "import consist")
        arms[f"{side}:empty"] = lambda i, py=py: wall(py, "pass")
    r = interleaved(arms, reps)
    out: dict[str, Any] = {"rounds": reps, "first": r["first"]}
    for side in pythons:
        imp, empty = r["arms"][f"{side}:import"], r["arms"][f"{side}:empty"]
        out[side] = {"import": imp, "empty": empty, "added_ms": imp["median_ms"] - empty["median_ms"]}
    if "upstream" in out:
        out["ratio_of_medians"] = out["upstream"]["added_ms"] / out["consist"]["added_ms"]
    return out


def paired(workers: dict[str, Worker], op: str, n: int, args: Any = None) -> dict[str, Any]:
    """n rounds of `op` on every side, alternating which side goes first."""
    arms = {side: (lambda i, w=w: w.seconds(op, **(args(i) if args else {}))) for side, w in workers.items()}
    r = interleaved(arms, n)
    out = {"rounds": n, "first": r["first"], **r["arms"]}
    if "upstream" in out:
        out.update(compare(out["consist"], out["upstream"]))
    return out


def hash_rounds(workers: dict[str, Worker], rounds: int, size: int) -> dict[str, Any]:
    """First hash of the big file: each library's own hasher against plain hashlib, in the same process."""
    got: dict[str, dict[str, list[float]]] = {side: {"hashlib": [], "library": []} for side in workers}
    first = []
    for i in range(rounds):
        sides = rotation(list(workers), i)
        first.append(sides[0])
        inner = rotation(["hashlib", "library"], i)
        for side in sides:
            r = workers[side].call("hash", order=inner)
            got[side]["hashlib"].append(r["hashlib_s"])
            got[side]["library"].append(r["consist_s"])
    out: dict[str, Any] = {"rounds": rounds, "first": first, "inner_first": [rotation(["hashlib", "library"], i)[0]
                                                                            for i in range(rounds)]}  # fmt: skip
    for side, d in got.items():
        h, lib = summary(d["hashlib"]), summary(d["library"])
        out[side] = {
            "hashlib": h,
            "library": lib,
            "pct_of_hashlib": 100 * h["median_ms"] / lib["median_ms"],
            "library_gb_per_s": size / (lib["median_ms"] / 1000) / 1e9,
            "hashlib_gb_per_s": size / (h["median_ms"] / 1000) / 1e9,
        }
    return out


def big_rounds(workers: dict[str, Worker], rounds: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Re-runs with the unchanged big input and trivial hits, interleaved on both sides."""
    arms = {}
    for side, w in workers.items():
        arms[f"{side}:big"] = lambda i, w=w: w.seconds("big_rerun")
        arms[f"{side}:hit"] = lambda i, w=w: w.seconds("hit")
    r = interleaved(arms, rounds)
    big: dict[str, Any] = {"rounds": rounds, "first": r["first"]}
    hit: dict[str, Any] = {"rounds": rounds, "first": r["first"]}
    for side in workers:
        big[side] = r["arms"][f"{side}:big"]
        hit[side] = r["arms"][f"{side}:hit"]
    if "upstream" in big:
        big.update(compare(big["consist"], big["upstream"]))
        hit.update(compare(hit["consist"], hit["upstream"]))
    return big, hit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not for publication")
    ap.add_argument("--no-upstream", action="store_true", help="skip the original consist")
    ap.add_argument("--out", help="results file (default: benchmarks/results/core-<date>-<time>.json)")
    args = ap.parse_args()
    p = dict(QUICK if args.quick else PARAMS)
    base = Path(tempfile.mkdtemp(prefix="consist_bench_"))
    size = p["file_mib"] << 20
    params = {**p, "file_gib": size / 2**30, "quick": args.quick, "upstream": not args.no_upstream}
    result = new_result("core", base, params)
    result["targets"] = TARGETS
    m: dict[str, Any] = {}
    result["measurements"] = m
    workers: dict[str, Worker] = {}
    try:
        big = base / "big.bin"
        make_big_file(big, size)
        pythons = {"consist": sys.executable}
        if not args.no_upstream:
            pythons["upstream"] = str(upstream_python())
        say("import consist")
        m["import"] = import_times(pythons, p["import_reps"])
        for side, py in pythons.items():
            (base / side).mkdir()
            workers[side] = Worker(py, HERE / "core_worker.py", "ours" if side == "consist" else "upstream")
        result["versions"] = {}
        for side, w in workers.items():
            info = w.call("setup", work=str(base / side), big=str(big))
            result["versions"][side] = {"consist": info["version"], "python": info["python"]}
        say(f"miss x{p['n']}")
        m["miss"] = paired(workers, "miss", p["n"], lambda i: {"i": i})
        say(f"hit x{p['n']}")
        m["hit"] = paired(workers, "hit", p["n"])
        say(f"fill to {p['db_runs']} runs")
        for w in workers.values():  # both fill at once: not timed for publication
            w.send("fill", target=p["db_runs"])
        m["db_runs"] = {side: w.receive()["runs"] for side, w in workers.items()}
        say("hash")
        m["hash"] = hash_rounds(workers, p["hash_rounds"], size)
        for w in workers.values():
            w.call("close_main")
        say(f"open x{p['open_n']}")
        m["open"] = paired(workers, "open", p["open_n"])
        m["open_query"] = paired(workers, "open_query", p["open_n"])
        m["open_hit"] = paired(workers, "open_hit", p["open_n"])
        say("big input")
        for w in workers.values():
            w.call("big_open")
        m["big_first"] = {side: {"s": w.seconds("big_first")} for side, w in workers.items()}
        m["big_rerun"], m["hit_again"] = big_rounds(workers, p["big_rounds"])
        m["big_added"] = {
            side: {"ms": m["big_rerun"][side]["median_ms"] - m["hit_again"][side]["median_ms"]} for side in workers
        }
        for w in workers.values():
            w.call("close_main")
        if "upstream" in workers:
            workers.pop("upstream").close()
        say(f"scale: {p['scale_runs']:,} runs (this consist only)")
        m["scale"] = workers["consist"].call("scale", runs=p["scale_runs"], n=p["scale_n"])
        m["scale"].pop("ok", None)
    finally:
        for w in workers.values():
            w.close()
        shutil.rmtree(base, ignore_errors=True)
    path = write_result(result, args.out)
    say(f"wrote {path}")
    print_block(result, path)


if __name__ == "__main__":
    main()
