"""One of the concurrent writers of bench_cluster.py: distinct trivial runs on one PostgreSQL store.

    python cluster_worker.py URL WORK WRITER RUNS GO_FILE

Imports consist, opens a tracker on URL (its run_dir under WORK), runs one
trivial step on a throw-away embedded store so that the first timed run loads
no module, and prints ``READY``. It then waits until GO_FILE exists (the parent
writes it once every writer is ready; it holds the common start time), runs
RUNS trivial steps with configs ``{"i": WRITER * 1_000_000 + k}``, which no
other writer uses, and prints one JSON line: its own start and end times
(``time.time()``) and the wall time of every run, in seconds.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster_steps import trivial

logging.disable(logging.WARNING)


def main() -> None:
    url, work, writer, runs, go = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
    os.environ["CONSIST_PROGRESS"] = "0"
    from consist import Tracker

    with tempfile.TemporaryDirectory(prefix="consist-bench-warm-") as warm:
        with Tracker(Path(warm) / "runs", code_version="bench") as w:
            w.run(trivial, name="warm_up", config={"i": writer})
    t = Tracker(work / f"writer_{writer}", db_url=url, store_dir=work / "objects", code_version="bench")
    print("READY", flush=True)
    while not go.exists():
        time.sleep(0.001)
    start = time.time()
    seconds = []
    hits = 0
    for k in range(runs):
        s = time.perf_counter()
        hits += t.run(trivial, name="trivial", config={"i": writer * 1_000_000 + k}).cache_hit
        seconds.append(time.perf_counter() - s)
    end = time.time()
    t.close()
    report = {"writer": writer, "pid": os.getpid(), "start": start, "end": end, "hits": hits, "seconds": seconds}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
