"""The guide's "Error Handling" section: a failing container, a missing output, a missing image.

python examples/error_handling.py
"""

import warnings
from pathlib import Path

from _workdir import enter

enter("error_handling")

from consist import ConsistError, Tracker  # noqa: E402
from consist.integrations.containers import run_container  # noqa: E402

tracker = Tracker(run_dir="./runs", db_path="./provenance.duckdb")
Path("data").mkdir()
Path("data/input.csv").write_text("x,y\n1,2\n")
common = dict(volumes={"./data": "/inputs", "./outputs": "/outputs"}, inputs=[Path("data/input.csv")])

# Container Execution Fails
try:
    result = run_container(
        tracker=tracker, run_id="failing", image="my-org/my-model:v1.0",
        command=["python", "process.py", "--input", "/inputs/missing.csv"],
        outputs=["./outputs/result.csv"], **common,
    )  # fmt: skip
except RuntimeError as e:
    print(f"Container failed: {e}")
    print(f"  exit code {e.exit_code}; the run is recorded as {tracker.get_run('failing').status}")

# Output Files Not Found
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    result = run_container(
        tracker=tracker, run_id="partial", image="my-org/my-model:v1.0",
        command=["python", "process.py", "--input", "/inputs/input.csv"],
        outputs=["./outputs/result.csv", "./outputs/logs.txt"], **common,
    )  # fmt: skip
print("Warning logged:", "; ".join(str(w.message) for w in caught))
print("Captured:", sorted(result.artifacts))

# Image Pull Errors
# An image that was never built, in a registry on this machine (running or not), so the
# failed pull never leaves it; "my-org/not-built:v1.0" would ask Docker Hub instead.
try:
    run_container(
        tracker=tracker, run_id="no_image", image="localhost:5000/my-org/not-built:v1.0", command=["true"],
        outputs=[], pull_latest=False, backend_type="docker", **common,
    )  # fmt: skip
except ConsistError as e:
    print(f"Image problem: {type(e).__name__}: {e}")
tracker.close()
