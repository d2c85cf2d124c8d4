"""Core overhead: this consist against the original consist 0.3.5, in one run.

    python benchmarks/bench_core.py [--quick] [--no-upstream]

Measures (medians): a trivial tracker.run miss and hit, opening a Tracker on a
database of 1,000 runs, ``import consist``, a re-run with an unchanged 1 GiB
input, first-hash throughput against plain hashlib.sha256, and the lookup with
100,000 runs in the database. The original runs in its own virtual
environment (``pip install consist==0.3.5``), driven as a subprocess with the
same workload (benchmarks/upstream_core.py). Prints a JSON document and a
Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, make_big_file, timed, upstream_python


def trivial(i: int = 0) -> None:
    return None


def consume(big: Path, tag: int = 0) -> None:
    return None


def import_time(python: str, module: str, reps: int = 7) -> float:
    """Median wall time of `python -c "import module"` minus an empty interpreter, in ms."""

    def wall(code: str) -> float:
        ts = []
        for _ in range(reps):
            s = time.perf_counter()
            subprocess.run([python, "-c", code], check=True, cwd=tempfile.gettempdir())
            ts.append(time.perf_counter() - s)
        return statistics.median(ts)

    return 1000 * (wall(f"import {module}") - wall("pass"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def ours(work: Path, n: int, big: Path, lookup_runs: int) -> dict:
    from consist import Tracker
    from consist.hashing import FileHasher, NullMemo

    res: dict = {}
    os.chdir(work)
    t = Tracker(work / "runs", db_path=work / "prov.duckdb", project_root=work)
    t.run(trivial, name="warm", config={"i": -5})  # first call loads modules: measured separately below
    res["miss"] = timed(lambda i: t.run(trivial, name="trivial", config={"i": i}), n)
    t.run(trivial, name="trivial", config={"i": -1})
    res["hit"] = timed(lambda i: t.run(trivial, name="trivial", config={"i": -1}), n)
    assert t.run(trivial, name="trivial", config={"i": -1}).cache_hit
    # Database of 1,000 runs, then open a fresh Tracker on it.
    for i in range(1000 - n - 3):
        t.run(trivial, name="filler", config={"i": i})
    t.close()
    res["open_1000"] = timed(lambda i: Tracker(work / "runs", db_path=work / "prov.duckdb", project_root=work), 20)

    def open_and_hit(i: int) -> None:
        t2 = Tracker(work / "runs", db_path=work / "prov.duckdb", project_root=work)
        assert t2.run(trivial, name="trivial", config={"i": -1}).cache_hit
        t2.close()

    res["open_1000_plus_hit_and_close"] = timed(open_and_hit, 20)

    # 1 GiB input: first hash against hashlib, then unchanged re-runs.
    size = big.stat().st_size
    raw = []
    for _ in range(3):
        s = time.perf_counter()
        sha256_file(big)
        raw.append(time.perf_counter() - s)
    mine = []
    for _ in range(3):
        s = time.perf_counter()
        FileHasher(NullMemo()).hash_path(big)
        mine.append(time.perf_counter() - s)
    res["hash_gbps_hashlib"] = size / min(raw) / 1e9
    res["hash_gbps_consist"] = size / min(mine) / 1e9
    res["hash_ratio"] = min(raw) / min(mine)
    t = Tracker(work / "runs", db_path=work / "prov.duckdb", project_root=work)
    s = time.perf_counter()
    t.run(consume, inputs={"big": big}, config={"tag": 0})
    res["big_first_run_s"] = time.perf_counter() - s
    res["big_rerun"] = timed(lambda i: t.run(consume, inputs={"big": big}, config={"tag": 0}), 15)
    res["hit_again"] = timed(lambda i: t.run(trivial, name="trivial", config={"i": -1}), n)
    res["big_added_ms"] = res["big_rerun"]["median_ms"] - res["hit_again"]["median_ms"]
    t.close()

    # 100,000 runs in one database: lookup cost.
    if lookup_runs:
        t = Tracker(work / "runs_big", db_path=work / "big.duckdb", project_root=work)
        s = time.perf_counter()
        for i in range(lookup_runs):
            t.run(trivial, name="many", config={"i": i})
        res["fill_s"] = time.perf_counter() - s
        s = time.perf_counter()
        t.sync()
        res["merge_into_duckdb_s"] = time.perf_counter() - s
        res["runs_in_db"] = lookup_runs
        res["hit_at_scale"] = timed(lambda i: t.run(trivial, name="many", config={"i": i * 37 % lookup_runs}), n)
        res["miss_at_scale"] = timed(lambda i: t.run(trivial, name="many", config={"i": -1 - i}), n)
        sig = t._index.query("SELECT signature FROM run LIMIT 1")[0]["signature"]
        res["lookup_only"] = timed(lambda i: t._index.producers(sig), n)
        t.close()
    return res


def upstream(py: Path, work: Path, n: int, big: Path) -> dict:
    out = subprocess.run(
        [str(py), str(ROOT / "benchmarks" / "upstream_core.py"), str(work), str(n), str(big)],
        cwd=work,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = [x for x in out.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[7:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small N, 256 MiB file, 10,000 runs")
    ap.add_argument("--no-upstream", action="store_true")
    args = ap.parse_args()
    n = 50 if args.quick else 200
    size = (256 if args.quick else 1024) << 20
    lookup_runs = 10_000 if args.quick else 100_000
    base = Path(tempfile.mkdtemp(prefix="consist_bench_"))
    big = base / "big.bin"
    make_big_file(big, size)
    result: dict = {"machine": os.uname().nodename, "cpus": os.cpu_count(), "file_bytes": size}
    try:
        result["import_ms_ours"] = import_time(sys.executable, "consist")
        (base / "ours").mkdir()
        result["ours"] = ours(base / "ours", n, big, lookup_runs)
        if not args.no_upstream:
            py = upstream_python()
            result["import_ms_upstream"] = import_time(str(py), "consist")
            (base / "upstream").mkdir()
            result["upstream"] = upstream(py, base / "upstream", max(20, n // 5), big)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(result, indent=1))
    print(table(result))


def table(r: dict) -> str:
    o, u = r["ours"], r.get("upstream", {})

    def cell(d: dict, key: str, fmt: str = "{:.2f} ms") -> str:
        v = d.get(key)
        if isinstance(v, dict):
            v = v["median_ms"]
        return fmt.format(v) if v is not None else "n/a"

    def ratio(key: str) -> str:
        a, b = o.get(key), u.get(key)
        if not isinstance(a, dict) or not isinstance(b, dict):
            return ""
        return f"{b['median_ms'] / a['median_ms']:.0f}x"

    rows = [
        ("trivial `tracker.run` miss", cell(o, "miss"), cell(u, "miss"), ratio("miss"), "≤ 5 ms, ≥ 50x"),
        ("trivial `tracker.run` hit", cell(o, "hit"), cell(u, "hit"), ratio("hit"), "≤ 2 ms, ≥ 50x"),
        ("open Tracker, DB of 1,000 runs", cell(o, "open_1000"), cell(u, "open_1000"), ratio("open_1000"),
         "≤ 50 ms"),
        ("open + first hit + close", cell(o, "open_1000_plus_hit_and_close"),
         cell(u, "open_1000_plus_hit_and_close"), ratio("open_1000_plus_hit_and_close"), ""),
        ("`import consist`", f"{r['import_ms_ours']:.0f} ms",
         f"{r['import_ms_upstream']:.0f} ms" if "import_ms_upstream" in r else "n/a",
         f"{r['import_ms_upstream'] / r['import_ms_ours']:.0f}x" if "import_ms_upstream" in r else "", ""),
        ("re-run with unchanged 1 GiB input (hit)", cell(o, "big_rerun"), cell(u, "big_rerun"), ratio("big_rerun"),
         ""),
        ("… time the 1 GiB input adds to a hit", f"{o['big_added_ms']:.2f} ms",
         f"{u['big_added_ms']:.0f} ms" if "big_added_ms" in u else "n/a", "", "≤ 20 ms"),
        ("first hash of 1 GiB vs hashlib.sha256", f"{o['hash_ratio'] * 100:.0f}% ({o['hash_gbps_consist']:.2f} GB/s)",
         f"{u['hash_ratio'] * 100:.0f}%" if "hash_ratio" in u else "n/a", "", "≥ 90%"),
    ]  # fmt: skip
    if "hit_at_scale" in o:
        rows += [
            (f"hit with {o['runs_in_db']:,} runs in the DB", cell(o, "hit_at_scale"), "not measured", "", ""),
            (f"miss with {o['runs_in_db']:,} runs in the DB", cell(o, "miss_at_scale"), "not measured", "", ""),
            (f"signature lookup alone, {o['runs_in_db']:,} runs", cell(o, "lookup_only", "{:.3f} ms"),
             "not measured", "", "≤ 5 ms"),
        ]  # fmt: skip
    lines = ["| measurement (median) | consist (this) | consist 0.3.5 | speed-up | target |", "|---|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
