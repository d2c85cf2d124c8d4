"""The guide's "Manual Cache Bypass": a changing environment variable, or an overwrite run.

python examples/cache_bypass.py
"""

import time
from pathlib import Path

from _workdir import enter

enter("cache_bypass")

from consist import Tracker  # noqa: E402
from consist.integrations.containers import run_container  # noqa: E402

tracker = Tracker(run_dir="./runs", db_path="./provenance.duckdb")
Path("data").mkdir()
Path("data/input.csv").write_text("x,y\n1,2\n")


def call(run_id: str, **extra):
    r = run_container(
        tracker=tracker, run_id=run_id, image="my-org/my-model:v1.0",
        command=["python", "process.py", "--input", "/inputs/input.csv"],
        volumes={"./data": "/inputs", "./outputs": "/outputs"}, inputs=[Path("data/input.csv")],
        outputs=["./outputs/result.csv"], **extra,
    )  # fmt: skip
    print(f"{r.run_id}: {'cache hit' if r.cache_hit else 'executed'}")
    return r


call("first")
call("second")  # identical: a hit

# 1. Change a trivial env var to force cache miss:
call("bypass_env", environment={"CACHE_BYPASS": str(time.time())})

# 2. Or use a cache_mode on the enclosing run:
tracker.begin_run("forced", "pipeline", cache_mode="overwrite")
result = call("inside_overwrite")
tracker.end_run()
tracker.close()
