"""The guide's "Nested Containers (Inside Scenarios)" example, with stand-in images.

    python examples/nested_scenario.py        # first run: both containers execute
    python examples/nested_scenario.py        # second run: no container starts
    python examples/nested_scenario.py --change-config   # only the model step re-runs

One change from the guide's snippet: the preprocessing container gets a volume
for ``./preprocessed``. The snippet declares that folder as its output but mounts
only ``./raw_data``, so a container could not write it.
"""

import sys
from pathlib import Path

from _workdir import enter

work = enter("nested_scenario", fresh=False)
Path("raw_data").mkdir(exist_ok=True)
Path("raw_data/households.csv").write_text("HOUSEHOLD_ID,INCOME\n1,52000\n2,87000\n3,31000\n")
Path("raw_data/persons.csv").write_text("PERSON_ID,HOUSEHOLD_ID,AGE\n1,1,34\n2,1,36\n3,2,61\n4,3,22\n")
Path("configs").mkdir(exist_ok=True)
scale = "2.0" if "--change-config" in sys.argv else "1.0"
Path("configs/settings.yaml").write_text(f"households_sample_size: 50\nrng_base_seed: 7\nincome_scale: {scale}\n")
Path("configs/mode_choice_coefficients.csv").write_text("mode,coefficient\nwalk,1\ntransit,2\ncar,3\n")

# ---- from the guide -------------------------------------------------------------------
import consist  # noqa: E402
from consist import Tracker, use_tracker  # noqa: E402
from consist.integrations.containers import run_container  # noqa: E402

tracker = Tracker(run_dir="./runs", db_path="./provenance.duckdb")

with use_tracker(tracker):
    with consist.scenario("multi_model_workflow") as sc:
        # Step 1: Data preprocessing (Python)
        preprocess_result = run_container(
            tracker=tracker,
            run_id="preprocess",
            image="my-org/preprocess:v1",
            command=["python", "preprocess.py"],
            volumes={"./raw_data": "/data", "./preprocessed": "/preprocessed"},
            inputs=[Path("./raw_data")],
            outputs=["./preprocessed"],
        )
        sc.coupler.set("preprocessed_data", preprocess_result.output)

        # Step 2: Model execution (ActivitySim)
        model_result = run_container(
            tracker=tracker,
            run_id="activitysim",
            image="my-org/activitysim:v1",
            command=["python", "-m", "activitysim.core.workflow"],
            volumes={
                "./configs": "/configs",
                "./model_outputs": "/outputs",
            },
            inputs=[Path("./configs")],
            outputs=["./model_outputs"],
        )
        sc.coupler.set("model_outputs", model_result.output)

        # Step 3: Analysis (Python)
        with sc.trace(name="analysis"):
            # Load previous results
            preprocessed = consist.load_df(sc.coupler.require("preprocessed_data"))
            model_output = consist.load_df(sc.coupler.require("model_outputs"))
            # ... analysis code ...
            print(f"analysis: {len(preprocessed)} preprocessed rows, {len(model_output)} model output rows")

for name, r in (("preprocess", preprocess_result), ("activitysim", model_result)):
    print(f"{name}: {'cache hit (no container started)' if r.cache_hit else 'container executed'}")
tracker.close()
