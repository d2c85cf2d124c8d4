"""A worker process for the cluster tests: runs steps against a shared run index.

Usage: python -m tests.cluster_worker MODE DB RUN_DIR STORE_DIR WORKER
  MODE many: 25 distinct runs; slow: one slow run that every worker starts identically;
  hang: the slow run, but the step never returns (for killing the claim's holder).
DB is a postgresql:// URL or a DuckDB file path.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from consist import Tracker


def produce(worker: int, n: int) -> Path:
    p = Path(f"w{worker}_n{n}.txt")
    p.write_text(f"worker={worker} n={n}\n")
    return p


HANG = False  # the "hang" mode's step never returns; not part of the config, so the signature is the same


def slow(config: dict, log: str) -> Path:
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(3600 if HANG else 2.0)
    p = Path("slow.txt")
    p.write_text("made once\n")
    return p


def main() -> None:
    mode, db, run_dir, store_dir, worker = sys.argv[1:6]
    where = {"db_url": db} if db.startswith("postgresql") else {"db_path": db}
    results = []
    with Tracker(run_dir, store_dir=store_dir, code_version="cluster", **where) as t:
        os.chdir(run_dir)
        if mode == "many":
            for n in range(25):
                r = t.run(produce, name="produce", config={"worker": int(worker), "n": n}, outputs=["data"])
                results.append({"id": r.run_id, "hit": r.cache_hit})
        else:
            log = str(Path(store_dir).parent / "executions.log")
            global HANG
            HANG = mode == "hang"
            r = t.run(slow, name="slow", config={"k": 1, "log": log}, outputs=["out"])
            assert Path(r.output_path("out")).read_text() == "made once\n"
            results.append({"id": r.run_id, "hit": r.cache_hit, "source": r.cache_source, "waited": r.waited_for})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
