"""The command line and the web view on large databases.

    .venv/bin/python benchmarks/bench_cli.py [--quick] [--out FILE]

A database of 10,000 runs (recorded by tracker.run: executed runs and hits of a
trivial step) and one of 100,000 runs (rows written straight into the run index).
Measured, each as a fresh process, as a user would see it:

1. ``consist runs`` until its output is complete (the first line appears before),
   and ``consist runs --json --limit 20``, on the 10,000-run database;
2. the same on the 100,000-run database;
3. with ``consist ui`` serving the 100,000-run database: the runs page (first page,
   and page 500 filtered by model and sorted), fetched over HTTP, server already up.

Writes every sample to benchmarks/results/cli-<date>-<time>.json and prints the
Markdown table that benchmarks/render.py makes from that file.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import new_result, print_block, summary, write_result  # noqa: E402

PARAMS = {"small_runs": 10_000, "large_runs": 100_000, "repeats": 15, "json_limit": 20}
QUICK = {"small_runs": 1_000, "large_runs": 10_000, "repeats": 3, "json_limit": 20}
TARGETS = {"runs_10k": {"max_ms": 300}}


def trivial(i: int) -> None:
    return None


def record(db: Path, n: int) -> None:
    from consist import Tracker

    with Tracker(db.parent / "runs", db_path=db, project_root=db.parent, code_version="bench") as t:
        for i in range(n):
            t.run(trivial, name="step", config={"i": i % (n // 2)})


def bulk(db: Path, n: int) -> None:
    from consist.store.columns import RUN_COLUMNS
    from consist.store.sqlite import SQLiteIndex, index_path_for

    ix = SQLiteIndex(index_path_for(db))
    cols = [*RUN_COLUMNS, "seq"]
    now = time.time()
    rows = [
        [f"r{i:07d}", f"r{i}", f"m{i % 7}", "completed", None, None, None, None, "s", None, None, None,
         None, None, i % 2, None, 1, None, None, None, 1, "h", now - i, now - i + 1, 1]
        for i in range(n)
    ]  # fmt: skip
    sql = f"INSERT INTO run ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})"
    ix.atomic(lambda: ix._run_many(sql, rows))
    ix.close()


def timed_cli(db: Path, args: list[str], repeats: int) -> dict[str, Any]:
    exe = Path(sys.executable).with_name("consist")
    samples = []
    for _ in range(repeats):
        s = time.perf_counter()
        proc = subprocess.run([str(exe), *args, "--db", str(db)], capture_output=True, text=True)
        samples.append(time.perf_counter() - s)
        assert proc.returncode == 0, proc.stderr
    return summary(samples)


def timed_http(url: str, repeats: int) -> dict[str, Any]:
    samples = []
    for _ in range(repeats):
        s = time.perf_counter()
        body = urllib.request.urlopen(url, timeout=60).read()
        samples.append(time.perf_counter() - s)
        assert b"run-link" in body
    return summary(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not for publication")
    ap.add_argument("--out", help="results file (default: benchmarks/results/cli-<date>-<time>.json)")
    args = ap.parse_args()
    p = dict(QUICK if args.quick else PARAMS)
    base = Path(tempfile.mkdtemp(prefix="consist_bench_"))
    result = new_result("cli", base, {**p, "quick": args.quick})
    result["targets"] = TARGETS
    m: dict[str, Any] = {}
    result["measurements"] = m
    os.environ["CONSIST_PROGRESS"] = "0"
    try:
        small, large = base / "small" / "provenance.duckdb", base / "large" / "provenance.duckdb"
        small.parent.mkdir()
        large.parent.mkdir()
        record(small, p["small_runs"])
        bulk(large, p["large_runs"])
        r = p["repeats"]
        m["runs_10k"] = timed_cli(small, ["runs"], r)
        m["runs_json_10k"] = timed_cli(small, ["runs", "--json", "--limit", str(p["json_limit"])], r)
        m["runs_100k"] = timed_cli(large, ["runs"], r)
        m["runs_json_100k"] = timed_cli(large, ["runs", "--json", "--limit", str(p["json_limit"])], r)
        exe = Path(sys.executable).with_name("consist")
        proc = subprocess.Popen([str(exe), "ui", "--db", str(large), "--port", "0"], stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stderr is not None
            url = re.search(r"http://[\d.]+:\d+", proc.stderr.readline()).group(0)  # type: ignore[union-attr]
            time.sleep(1.0)
            m["ui_first_page_100k"] = timed_http(url + "/", r)
            deep = max(1, p["large_runs"] // 7 // 100 // 2)  # halfway through one model's runs
            m["ui_deep_page"] = deep
            m["ui_deep_page_100k"] = timed_http(url + f"/?model=m3&sort=id&dir=asc&page={deep}&size=100", r)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    path = write_result(result, args.out)
    print_block(result, path)


if __name__ == "__main__":
    main()
