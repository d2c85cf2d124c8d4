"""A pipeline written in the idioms of the original Consist (PyPI ``consist`` 0.3.x), unchanged.

Only the imports at the top differ from code written for the original library;
every call below is the original's name and shape (see docs/migrating.md). Run it
with ``python examples/migrating_from_consist.py``: it works in
``examples/work/migrating``, runs the pipeline twice (the second time every step
is a cache hit), then looks the history up the way analysis code does.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import consist
from consist import Tracker

WORK = Path(__file__).resolve().parent / "work" / "migrating"


def prepare_households(raw: Path, sample: float) -> Path:
    rows = raw.read_text().splitlines()[1:]
    keep = rows[: max(1, int(len(rows) * sample))]
    out = consist.output_path("households", ext="csv")  # run_dir/<run_id>/households.csv
    out.write_text("household,persons\n" + "\n".join(keep) + "\n")
    return out


def pipeline(tracker: Tracker, year: int) -> Any:
    with consist.scenario(f"baseline_{year}", tracker) as sc:
        sc.add_input("inputs/land_use.csv", key="land_use")
        sc.declare_outputs("households", "trips")

        # A function step: skipped on a hit, its outputs restored.
        sc.run(
            prepare_households,
            name="prepare",
            inputs={"raw": "inputs/households.csv"},
            config={"sample": 0.5},
            outputs=["households"],
            year=year,
            stage="prepare",
            description="sample the synthetic population",
        )

        # A hand-written step: the body runs on a hit too, and checks the cache itself.
        with tracker.start_run(f"demand_{year}", "demand", config={"rate": 2.5}, year=year, stage="demand",
                               inputs=[sc.coupler["households"]], scenario_label="base"):  # fmt: skip
            run = tracker.current_consist
            if not tracker.is_cached:
                persons = sum(int(line.split(",")[1]) for line in Path(run.inputs["households"].uri)
                              .read_text().splitlines()[1:])  # fmt: skip
                trips = Path("outputs/trips.csv")
                trips.parent.mkdir(exist_ok=True)
                trips.write_text(f"persons,trips\n{persons},{persons * run.config['rate']}\n")
                tracker.log_meta(persons=persons)
            tracker.log_artifact("outputs/trips.csv", key="trips", direction="output", units="trips/day")
            sc.coupler.set("trips", tracker.current_consist.outputs["trips"])
        return tracker.last_run  # the demand step, just finished


def main() -> None:
    shutil.rmtree(WORK, ignore_errors=True)
    (WORK / "inputs").mkdir(parents=True)
    (WORK / "inputs" / "households.csv").write_text("household,persons\n1,2\n2,4\n3,1\n4,3\n")
    (WORK / "inputs" / "land_use.csv").write_text("zone,jobs\n1,100\n2,250\n")
    import os

    os.chdir(WORK)
    tracker = Tracker(run_dir="runs", db_path="provenance.duckdb", project_root=".")

    for attempt in ("first", "again"):
        demand = pipeline(tracker, 2030)
        print(f"{attempt:>5}: demand {'cached' if demand.is_cached else 'executed'}, "
              f"trips {demand.outputs['trips'].meta['units']}")  # fmt: skip

    # Looking the history up, as analysis code does.
    demand = tracker.find_latest_run(model="demand", year=2030)
    first = tracker.find_run(model="demand", year=2030, cache_hit=False)
    print("latest demand run:", demand.id, "produced by", demand.cache_source or demand.id)
    print("its config:", tracker.get_run_config(first.id))
    print("its metadata:", {k: v for k, v in tracker.get_run(first.id).meta.items() if k in ("persons", "stage")})
    print("runs by stage:", sorted(tracker.find_runs(year=2030, index_by="stage")))
    print("trips:", tracker.load_run_output(first.id, "trips").to_dict("records"))
    trips = tracker.get_artifact("trips")
    print("the newest trips came from", trips.run_id, "which read", [a.key for a in tracker.find_artifacts(
        consumer=first.id)])  # fmt: skip
    diff = tracker.diff_runs("baseline_2030", "baseline_2030~2")
    print("outputs that differ between the two scenario runs:",
          [o["key"] for o in diff["outputs"] if o["state"] != "same"] or "none")  # fmt: skip
    header = tracker.get_run("baseline_2030")
    print("steps of the scenario:", [s["status"] for s in header.meta["scenario"]["steps"]])
    print("its artifacts:", sorted(tracker.get_artifacts_for_run("baseline_2030").outputs))

    # Restarting from an archived run in a new workspace.
    restored = tracker.hydrate_run_outputs(first.id, target_root="restart")
    print("hydrated:", {k: str(p.relative_to(WORK)) for k, p in restored.items()})

    # Provenance switched off for production: same calls, nothing recorded.
    noop = consist.NoopTracker(run_dir="runs-noop")
    pipeline(noop, 2030)
    print("noop recorded:", noop.find_runs())
    tracker.close()


if __name__ == "__main__":
    main()
