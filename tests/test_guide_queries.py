"""The guide's "Querying Results" loop works for executed runs and hits, on every engine."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import consist
from consist.integrations.containers import run_container
from engines import image, need

ENGINES = ["docker", "podman", "apptainer"]

WRITE_TABLES = [
    "sh",
    "-c",
    "echo run >> /counter/n; mkdir -p /outputs/$S/summary; "
    "printf 'trip_id,mode\\n1,car\\n2,walk\\n' > /outputs/$S/final_trips.csv; "
    "printf 'mode,share\\ncar,0.5\\nwalk,0.5\\n' > /outputs/$S/summary/mode_share.csv",
]


def scenario(tracker, engine: str, name: str, root: Path = Path(".")):
    (root / "outputs").mkdir(exist_ok=True)
    (root / "counter").mkdir(exist_ok=True)
    return run_container(
        tracker=tracker, run_id=f"activitysim_{name}", image=image(engine), command=WRITE_TABLES,
        volumes={str(root / "outputs"): "/outputs", str(root / "counter"): "/counter"}, inputs=[],
        outputs=[str(root / "outputs" / name)], environment={"S": name}, backend_type=engine,
    )  # fmt: skip


def guide_loop(tracker, runs: Path) -> list[tuple[str, str, list[str]]]:
    """The guide's loop, verbatim but collecting instead of printing."""
    seen = []
    for run_subdir in sorted(runs.glob("activitysim_*/")):
        output_artifacts = tracker.get_artifacts_for_run(run_subdir.name)
        for key, artifact in output_artifacts.outputs.items():
            if "summary" in key:
                df = pd.read_csv(artifact.path)
                seen.append((run_subdir.name, key, list(df["mode"])))
    return seen


@pytest.mark.parametrize("engine", ENGINES)
def test_the_guides_query_loop_finds_summaries_of_executed_runs_and_hits(engine: str, tracker) -> None:
    need(engine)
    first = scenario(tracker, engine, "baseline")
    hit = scenario(tracker, engine, "baseline")
    assert not first.cache_hit and hit.cache_hit and hit.run_id == "activitysim_baseline~2"
    assert guide_loop(tracker, tracker.run_dir) == [
        ("activitysim_baseline", "summary/mode_share.csv", ["car", "walk"]),
        ("activitysim_baseline~2", "summary/mode_share.csv", ["car", "walk"]),
    ]
    for run_id in (first.run_id, hit.run_id):
        folder = tracker.run_dir / run_id
        record = json.loads((folder / "run.json").read_text())
        assert record["run_id"] == run_id and record["status"] == "completed"
        assert record["outputs"] == {"baseline": "project://outputs/baseline"}
        assert "container.log" in {p.name for p in folder.iterdir()}
    assert json.loads((tracker.run_dir / hit.run_id / "run.json").read_text())["cache_source"] == first.run_id
    outs = tracker.get_artifacts_for_run(first.run_id).outputs
    assert set(outs) == {"baseline", "final_trips.csv", "summary/mode_share.csv"}
    directory = outs["baseline"]
    member = outs["summary/mode_share.csv"]
    assert member.meta == {"member_of": directory.id} and member.kind == "file"
    assert member.path == Path("outputs/baseline/summary/mode_share.csv").resolve()
    assert member.location == "project://outputs/baseline/summary/mode_share.csv"
    assert Path("counter/n").read_text().count("run") == 1


def test_members_of_a_hit_in_another_checkout_point_into_that_checkout(make_tracker, tmp_path: Path) -> None:
    need("docker")
    a, b = tmp_path / "A", tmp_path / "B"
    ta = make_tracker(run_dir=a / "runs", project_root=a)
    scenario(ta, "docker", "baseline", a)
    tb = make_tracker(run_dir=b / "runs", project_root=b)
    hit = scenario(tb, "docker", "baseline", b)
    assert hit.cache_hit
    member = tb.get_artifacts_for_run(hit.run_id).outputs["summary/mode_share.csv"]
    assert member.path == b / "outputs" / "baseline" / "summary" / "mode_share.csv" and member.path.is_file()
    assert guide_loop(tb, b / "runs")[-1] == (hit.run_id, "summary/mode_share.csv", ["car", "walk"])


def test_load_df_never_stacks_different_tables(tmp_path: Path) -> None:
    d = tmp_path / "out"
    (d / "summary").mkdir(parents=True)
    (d / "final_trips.csv").write_text("trip_id,mode\n1,car\n")
    (d / "summary" / "mode_share.csv").write_text("mode,share\ncar,1.0\n")
    with pytest.warns(consist.ConsistWarning, match=r"different columns[\s\S]*final_trips\.csv[\s\S]*mode_share"):
        tables = consist.load_df(d)
    assert list(tables) == ["final_trips.csv", "summary/mode_share.csv"]  # never one mixed table
    assert list(tables["summary/mode_share.csv"].columns) == ["mode", "share"]
    (d / "summary" / "mode_share.csv").unlink()
    (d / "more_trips.csv").write_text("trip_id,mode\n2,walk\n")
    df = consist.load_df(d)
    assert sorted(df["trip_id"]) == [1, 2]
