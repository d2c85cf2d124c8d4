"""The guide's "ActivitySim Integration": a baseline and a modified-coefficients scenario.

    python examples/activitysim_scenarios.py

The image is a stand-in for ActivitySim with the same command line (see
examples/images/activitysim). Run the script twice: the second time both
scenarios are cache hits.
"""

import shutil
from pathlib import Path

from _workdir import enter

work = enter("activitysim", fresh=False)
shutil.rmtree("outputs", ignore_errors=True)  # a re-run restores outputs from the store

# ActivitySim-style config directories: a baseline and a copy with one change.
configs = Path("./configs")
configs.mkdir(exist_ok=True)
(configs / "settings.yaml").write_text("households_sample_size: 200\nrng_base_seed: 42\nincome_scale: 1.0\n")
(configs / "mode_choice_coefficients.csv").write_text("mode,coefficient\nwalk,1.0\nbike,0.5\ntransit,1.5\ncar,3.0\n")
(configs / "accessibility_coefficients.csv").write_text("zone,coefficient\n1,0.3\n2,0.7\n")
modified = Path("./configs_modified")
shutil.copytree(configs, modified, dirs_exist_ok=True)
(modified / "settings.yaml").write_text("households_sample_size: 200\nrng_base_seed: 42\nincome_scale: 2.5\n")

# ---- from the guide -------------------------------------------------------------------
from consist import Tracker  # noqa: E402
from consist.integrations.containers import run_container  # noqa: E402

tracker = Tracker(run_dir="./runs", db_path="./provenance.duckdb")


def run_activitysim_scenario(scenario_name: str, configs_dir: Path):
    """Execute ActivitySim with Consist provenance."""

    # Ensure output directory exists
    output_dir = Path(f"./outputs/{scenario_name}")
    output_dir.mkdir(parents=True, exist_ok=True)

    result = run_container(
        tracker=tracker,
        run_id=f"activitysim_{scenario_name}",
        image="my-org/activitysim:v1.0",
        command=[
            "python",
            "-m",
            "activitysim.core.workflow",
            "-c",
            "/configs",
            "-o",
            f"/outputs/{scenario_name}",
        ],
        volumes={
            str(configs_dir): "/configs",
            "./outputs": "/outputs",
        },
        inputs=[configs_dir],  # Hash all configs
        outputs=[f"./outputs/{scenario_name}"],  # Capture all outputs
        environment={
            "ACTIVITYSIM_CHUNK_SIZE": "100000",  # Optional: tune performance
        },
        backend_type="docker",
    )

    return result


# Run baseline scenario
result_baseline = run_activitysim_scenario(
    "baseline",
    configs_dir=Path("./configs"),
)

# Run scenario with modified coefficients
# (New output directory and modified config) → new cache entry
result_modified = run_activitysim_scenario(
    "high_income_sensitivity",
    configs_dir=Path("./configs_modified"),
)
for r in (result_baseline, result_modified):
    print(f"{r.run_id}: {'cache hit from ' + r.cache_source if r.cache_hit else 'container executed'}")

# ---- Querying results (guide) -------------------------------------------------------------
import pandas as pd  # noqa: E402

# Find all ActivitySim outputs
for run_subdir in Path("./runs").glob("activitysim_*/"):
    output_artifacts = tracker.get_artifacts_for_run(run_subdir.name)
    for key, artifact in output_artifacts.outputs.items():
        if "summary" in key:
            df = pd.read_csv(artifact.path)
            print(f"Scenario: {run_subdir.name}")
            print(df.head())

from sqlmodel import Session, select  # noqa: E402

from consist import Run  # noqa: E402

with Session(tracker.engine) as session:
    # Find all ActivitySim runs
    runs = session.exec(select(Run).where(Run.model == "activitysim")).all()

    for run in runs:
        artifacts = tracker.get_artifacts_for_run(run.id)
        print(f"Run: {run.id}, Outputs: {list(artifacts.outputs.keys())}")

# The scenario outputs are directories of tables:
import consist  # noqa: E402

for name in ("baseline", "high_income_sensitivity"):
    trips = consist.load_df(Path(f"./outputs/{name}/trips_summary.csv"))
    print(name, dict(zip(trips["mode"], trips["trips"])))
tracker.close()
