"""The guide's "Singularity / Apptainer Support" example with a local .sif file.

    python examples/singularity.py

``/scratch`` of the guide is a folder under examples/work here, registered as a
tracker mount so that strict mount checks allow it.
"""

from pathlib import Path

from _workdir import EXAMPLES, enter

work = enter("singularity")
scratch = work / "scratch"
(scratch / "inputs").mkdir(parents=True)
(scratch / "inputs" / "data.csv").write_text("zone,households\n1,120\n2,80\n")

from consist import Tracker  # noqa: E402
from consist.integrations.containers import run_container  # noqa: E402

tracker = Tracker(run_dir="./runs", db_path="./provenance.duckdb", mounts={"scratch": scratch})
sif = EXAMPLES / "work" / "images" / "my_model.sif"

for attempt in (1, 2):
    result = run_container(
        tracker=tracker,
        run_id="hpc_job",
        image=str(sif),  # Local .sif file path
        command=["python", "model.py", "--param", "value"],  # in the image's working directory
        volumes={
            f"{scratch}/inputs": "/inputs",
            f"{scratch}/outputs": "/outputs",
        },
        inputs=[Path(f"{scratch}/inputs/data.csv")],
        outputs=[f"{scratch}/outputs"],
        backend_type="singularity",  # Use Singularity instead of Docker
    )
    state = f"cache hit from {result.cache_source}" if result.cache_hit else "container executed"
    print(f"call {attempt}: {state}; image digest {result.image_digest[:19]}…")
print((scratch / "outputs" / "model_output.csv").read_text(), end="")
tracker.close()
