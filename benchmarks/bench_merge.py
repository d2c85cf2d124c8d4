"""Merging many pending runs into the DuckDB file: time and peak memory.

    .venv/bin/python benchmarks/bench_merge.py [--runs N] [--quick] [--out FILE]

Writes N runs (each with one output artifact, an input link and an output link,
50 runs per transaction) into a fresh run index, then merges them into a new
DuckDB file in a separate process, which reports its wall time and its peak
resident memory (``ru_maxrss``). A process that only imports what the merge
imports (consist and DuckDB) and opens the same files is measured beside
it, so the memory the merge itself adds is visible. Rounds alternate which of the
two runs first. Writes benchmarks/results/merge-<date>-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import new_result, rotation, summary, write_result  # noqa: E402

PARAMS = {"runs": 100_000, "rounds": 3, "per_transaction": 50}
QUICK = {"runs": 5_000, "rounds": 2, "per_transaction": 50}

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
start = time.perf_counter()
from consist.store.duck import DuckStore
from consist.store.sqlite import SQLiteIndex, index_path_for
import duckdb  # what a merge of many rows loads (it does not load pyarrow)
db = Path(sys.argv[1])
index = SQLiteIndex(index_path_for(db))
store = DuckStore(db, index)
merged = store.sync() if sys.argv[2] == "merge" else 0
with store._open() as con:
    runs = con.execute("SELECT count(*) FROM run").fetchone()[0]
elapsed = time.perf_counter() - start
print(json.dumps({"seconds": elapsed, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "merged_rows": merged, "runs_in_duckdb": runs}))
"""


def fill(db: Path, n: int, per_tx: int) -> float:
    from consist.store.columns import ARTIFACT_COLUMNS, RUN_COLUMNS
    from consist.store.sqlite import SQLiteIndex, index_path_for

    index = SQLiteIndex(index_path_for(db))
    run_sql = f"INSERT INTO run ({','.join([*RUN_COLUMNS, 'seq'])}) VALUES ({','.join('?' * (len(RUN_COLUMNS) + 1))})"
    art_sql = (
        f"INSERT INTO artifact ({','.join([*ARTIFACT_COLUMNS, 'seq'])}) "
        f"VALUES ({','.join('?' * (len(ARTIFACT_COLUMNS) + 1))})"
    )
    link_sql = "INSERT INTO run_artifact (run_id, artifact_id, direction, key, seq) VALUES (?,?,?,?,?)"
    t0 = time.perf_counter()
    for lo in range(0, n, per_tx):
        with index.write() as seq:
            runs, arts, links = [], [], []
            for i in range(lo, min(lo + per_tx, n)):
                rid = f"step_{i:07d}"
                row = {c: None for c in RUN_COLUMNS}
                row.update(id=rid, name=rid, model=f"m{i % 10}", status="completed", signature=f"sig{i}",
                           cache_hit=0, tags='["base"]', config=json.dumps({"i": i}),
                           identity=json.dumps({"code": "v", "config": f"cfg{i}"}), started_at=1e9 + i,
                           ended_at=1e9 + i + 1, meta=json.dumps({"cache_miss_explanation": {"reason": "new"}}),
                           run_dir="/runs", pid=1, host="h")  # fmt: skip
                art = {c: None for c in ARTIFACT_COLUMNS}
                art.update(id=f"a{i:07d}", key="out", uri=f"/runs/{rid}/out.csv", hash=f"sha256:{i:064x}", size=100,
                           kind="file", driver="csv", run_id=rid, created_at=1e9 + i,
                           location=f"run_dir://{rid}/out.csv")  # fmt: skip
                runs.append([row[c] for c in RUN_COLUMNS] + [seq])
                arts.append([art[c] for c in ARTIFACT_COLUMNS] + [seq])
                links += [[rid, f"a{i:07d}", "output", "out", seq], [rid, f"a{max(i - 1, 0):07d}", "input", "in", seq]]
            index._run_many(run_sql, runs)
            index._run_many(art_sql, arts)
            index._run_many(link_sql, links)
    index.close()
    return time.perf_counter() - t0


def child(db: Path, what: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(db), what], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, help="pending runs to merge")
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not for publication")
    ap.add_argument("--out", help="results file (default: benchmarks/results/merge-<date>-<time>.json)")
    args = ap.parse_args()
    params = {**(QUICK if args.quick else PARAMS), "quick": args.quick}
    if args.runs:
        params["runs"] = args.runs
    with tempfile.TemporaryDirectory(prefix="bench-merge-") as tmp:
        work = Path(tmp)
        result = new_result("merge", work, params)
        result["targets"] = {"peak_rss_mb": 150, "max_ms": 5000}
        template = work / "template" / "prov.duckdb"
        template.parent.mkdir()
        result["fill_seconds"] = round(fill(template, params["runs"], params["per_transaction"]), 2)
        got: dict[str, list[dict[str, Any]]] = {"merge": [], "open only": []}
        first = []
        for r in range(params["rounds"]):
            order = rotation(["merge", "open only"], r)
            first.append(order[0])
            for what in order:
                db = work / f"round{r}-{what.replace(' ', '-')}" / "prov.duckdb"
                shutil.copytree(template.parent, db.parent)
                got[what].append(child(db, "merge" if what == "merge" else "open"))
        result["first"] = first
        for what, samples in got.items():
            result[what] = {
                "seconds": summary([s["seconds"] for s in samples]),
                "peak_rss_mb": sorted(s["peak_rss_mb"] for s in samples),
                "runs_in_duckdb": [s["runs_in_duckdb"] for s in samples],
                "merged_rows": [s["merged_rows"] for s in samples],
            }
        m, o = result["merge"], result["open only"]
        result["peak_rss_mb_max"] = max(m["peak_rss_mb"])
        result["added_rss_mb"] = max(m["peak_rss_mb"]) - max(o["peak_rss_mb"])
    path = write_result(result, args.out)
    print(f"{params['runs']:,} runs: merge {m['seconds']['median_ms'] / 1000:.2f} s (open only "
          f"{o['seconds']['median_ms'] / 1000:.2f} s), peak RSS {result['peak_rss_mb_max']:.0f} MB "
          f"(open only {max(o['peak_rss_mb']):.0f} MB); every run merged: "
          f"{all(x == params['runs'] for x in m['runs_in_duckdb'])}")  # fmt: skip
    print(f"results: {path}")


if __name__ == "__main__":
    main()
