"""The guide's "Basic Example: Single Container Run", as written, run twice.

    python examples/containers_basic.py

The second call is a cache hit: no container starts and result.csv is copied back.
"""

from _workdir import enter

enter("containers_basic")

# ---- from the guide -------------------------------------------------------------------
from pathlib import Path  # noqa: E402

from consist import Tracker  # noqa: E402
from consist.integrations.containers import run_container  # noqa: E402

tracker = Tracker(run_dir="./runs", db_path="./provenance.duckdb")

# Create input data
input_path = Path("./data/input.csv")
input_path.parent.mkdir(exist_ok=True)
input_path.write_text("x,y\n1,2\n3,4\n")

for attempt in (1, 2):
    print(f"--- call {attempt}")
    # Execute container
    result = run_container(
        tracker=tracker,
        run_id="my_model_run",
        image="my-org/my-model:v1.0",
        command=["python", "process.py", "--input", "/inputs/input.csv"],
        volumes={
            "./data": "/inputs",  # Host path → Container path
            "./outputs": "/outputs",
        },
        inputs=[input_path],  # Files to hash (for cache key)
        outputs=["./outputs/result.csv"],  # Files to capture as artifacts
        backend_type="docker",
    )

    # Access results
    if result.cache_hit:
        print(f"Cache hit from {result.cache_source}")
    else:
        print("Container executed")

    for key, artifact in result.artifacts.items():
        print(f"Output: {key} → {artifact.path}")

print(Path("./outputs/result.csv").read_text(), end="")
tracker.close()
