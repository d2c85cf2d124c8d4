"""The ``consist`` command, run as a subprocess against real stores built here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

import consist
from consist import Tracker
from engines import image, need
from scaleout import fresh_pg_database
from study_steps import prepare, simulate


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "consist", *args], capture_output=True, text=True, timeout=120, cwd=cwd,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def js(*args: str, cwd: Path | None = None) -> Any:
    proc = cli(*args, "--json", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two scenarios: the policy one changes the trip rate, so its simulate step re-runs."""
    base = tmp_path_factory.mktemp("study")
    with Tracker(base / "runs", project_root=base, code_version="v1") as t:
        for name, rate in (("baseline", 1.5), ("policy", 2.0)):
            with consist.scenario(name, t) as sc:
                sc.run(prepare, config={"zones": 3, "out": str(base / "runs" / "hh.csv")}, outputs=["households"])
                sc.run(simulate, inputs={"households": "households"},
                       config={"rate": rate, "out": str(base / "runs" / f"trips_{name}.csv")},
                       outputs=["trips"], tags=[name])  # fmt: skip
    return base


def _run_of(study: Path, model: str, tag: str) -> dict[str, Any]:
    (row,) = js("runs", "--model", model, "--tag", tag, cwd=study)
    return row


def test_runs_lists_newest_first_with_filters_and_json_fields(study: Path) -> None:
    rows = js("runs", cwd=study)  # found as ./runs/provenance.duckdb
    assert [r["model"] for r in rows] == ["simulate", "prepare", "scenario", "simulate", "prepare", "scenario"]
    assert set(rows[0]) == {"id", "model", "status", "cache_hit", "cache_source", "year", "iteration", "tags",
                            "started_at", "ended_at", "duration_s", "parent_run_id", "signature"}  # fmt: skip
    prepares = js("runs", "--model", "prepare", cwd=study)
    assert [r["cache_hit"] for r in prepares] == [True, False]  # the policy scenario reused the baseline's
    assert prepares[0]["cache_source"] == prepares[1]["id"]
    assert [r["parent_run_id"] for r in js("runs", "--scenario", "policy", cwd=study)] == ["policy", "policy"]
    assert len(js("runs", "--limit", "2", cwd=study)) == 2
    assert js("runs", "--since", "2099-01-01", cwd=study) == []
    text = cli("runs", cwd=study)
    assert text.returncode == 0 and "hit of" in text.stdout and "executed" in text.stdout
    assert prepares[1]["id"] in text.stdout


def test_show_and_artifacts_give_identity_config_and_paths(study: Path) -> None:
    run = _run_of(study, "simulate", "policy")
    shown = js("show", run["id"], cwd=study)
    assert shown["config"]["rate"] == 2.0 and shown["run"]["id"] == run["id"]
    assert set(shown["identity"]) >= {"code", "config", "inputs"} and shown["identity"]["code"] == "v1"
    assert [a["key"] for a in shown["inputs"]] == ["households"] and shown["outputs"][0]["key"] == "trips"
    assert Path(shown["outputs"][0]["path"]).read_text().startswith("zone,trips")
    arts = js("artifacts", run["id"], cwd=study)
    assert {(a["direction"], a["key"]) for a in arts} == {("input", "households"), ("output", "trips")}
    text = cli("show", run["id"], cwd=study).stdout
    assert "rate = 2" in text and "trips" in text


def test_a_missing_run_exits_1_and_a_bad_option_2(study: Path, tmp_path: Path) -> None:
    missing = cli("show", "no_such_run", cwd=study)
    assert missing.returncode == 1 and "No run 'no_such_run'" in missing.stderr
    assert cli("runs", "--no-such-option", cwd=study).returncode == 2
    nothing = cli("runs", cwd=tmp_path)
    assert nothing.returncode == 2 and "No provenance database found" in nothing.stderr
    assert cli("lineage", "x", "--format", "svg", cwd=study).returncode == 2


def test_scenarios_and_a_scenario_tree(study: Path) -> None:
    listed = {s["id"]: s for s in js("scenarios", cwd=study)}
    assert listed["baseline"]["steps"] == 2 and listed["baseline"]["executed"] == 2
    assert listed["policy"]["executed"] == 1  # prepare was a hit
    tree = js("scenario", "policy", cwd=study)
    assert [s["model"] for s in tree["steps"]] == ["prepare", "simulate"]
    assert [s["cache_hit"] for s in tree["steps"]] == [True, False]
    text = cli("scenario", "policy", cwd=study).stdout
    assert "policy" in text and "hit of" in text and "executed" in text


def test_explain_names_the_config_key_with_old_and_new_values(study: Path) -> None:
    run = _run_of(study, "simulate", "policy")
    out = js("explain", run["id"], cwd=study)
    assert out["executed"] is True and "config" in out["changed"]
    rate = [c for c in out["config_changes"] if c["key"] == "rate"]
    assert rate == [{"key": "rate", "before": 1.5, "after": 2.0, "change": "changed"}]
    assert out["nearest_run"] == _run_of(study, "simulate", "baseline")["id"]
    text = cli("explain", run["id"], cwd=study).stdout
    assert "config rate: 1.5 -> 2" in text
    hit = js("runs", "--model", "prepare", cwd=study)[0]
    assert js("explain", hit["id"], cwd=study)["reason"] == "cache_hit"
    sig = js("explain", "--signature", run["signature"], cwd=study)
    assert sig == {"signature": run["signature"], "hit": True, "producer": run["id"]}
    assert cli("explain", "--signature", "sha256:" + "0" * 64, cwd=study).returncode == 1


def test_diff_compares_config_inputs_outputs_and_tables(study: Path) -> None:
    a, b = _run_of(study, "simulate", "baseline"), _run_of(study, "simulate", "policy")
    out = js("diff", a["id"], b["id"], cwd=study)
    keys = {c["key"]: c for c in out["config"]}
    assert keys["rate"]["before"] == 1.5 and keys["rate"]["after"] == 2.0 and keys["out"]["change"] == "changed"
    assert out["inputs"] == [{**out["inputs"][0], "key": "households", "state": "same"}]
    (trips,) = out["outputs"]
    assert trips["state"] == "changed"
    table = trips["table"]
    assert table["rows_a"] == table["rows_b"] == 3 and table["columns_added"] == table["columns_removed"] == []
    cols = {c["column"]: c for c in table["columns"]}
    assert cols["zone"]["changed"] == 0 and cols["trips"]["changed"] == 2  # zone 0 has no trips either way
    assert cols["trips"]["mean_a"] == 150.0 and cols["trips"]["mean_b"] == 200.0


def test_lineage_as_tree_dot_mermaid_and_json(study: Path) -> None:
    run = _run_of(study, "simulate", "policy")
    data = json.loads(cli("lineage", run["id"], "--format", "json", cwd=study).stdout)
    labels = {n["label"] for n in data["nodes"]}
    assert {"trips", "households", run["id"]} <= labels
    edges = {(e["from"].split(":")[0], e["to"].split(":")[0]) for e in data["edges"]}
    assert edges == {("run", "artifact"), ("artifact", "run")}
    dot = cli("lineage", run["id"], "--format", "dot", cwd=study).stdout
    assert dot.startswith("digraph lineage {") and "->" in dot and "shape=box" in dot
    mermaid = cli("lineage", run["id"], "--format", "mermaid", cwd=study).stdout
    assert mermaid.startswith("flowchart LR") and "-->" in mermaid
    tree = cli("lineage", "trips", cwd=study).stdout
    assert "trips" in tree and "households" in tree
    assert cli("lineage", "no_such_key", cwd=study).returncode == 1


def test_verify_finds_a_damaged_object_and_gc_counts_what_it_would_free(tmp_path: Path) -> None:
    with Tracker(tmp_path / "runs", code_version="v1") as t:
        r = t.run(prepare, config={"zones": 2, "out": str(tmp_path / "runs" / "hh.csv")}, outputs=["households"])
    digest = r.output.hash
    assert digest is not None
    obj = tmp_path / "runs" / ".consist" / "objects" / "sha256" / digest[7:9] / digest[9:]
    assert js("verify", cwd=tmp_path) == {"checked": 1, "damaged": [], "dropped": 0}
    obj.chmod(0o644)
    obj.write_text("tampered\n")
    bad = cli("verify", "--json", cwd=tmp_path)
    assert bad.returncode == 1 and json.loads(bad.stdout)["damaged"][0]["hash"] == digest
    assert obj.exists()  # looking only
    dropped = cli("verify", "--drop", "--json", cwd=tmp_path)
    assert dropped.returncode == 1 and json.loads(dropped.stdout)["dropped"] == 1 and not obj.exists()
    report = js("gc", "--dry-run", cwd=tmp_path)
    assert report["removed"] == 0 and report["kept"] == 1


def test_the_log_of_a_container_run(tmp_path: Path) -> None:
    need("docker")
    from consist.integrations.containers import run_container

    out = tmp_path / "runs" / "out"
    out.mkdir(parents=True)
    with Tracker(tmp_path / "runs", code_version="v1") as t:
        r = run_container(t, "hello", image("docker"), ["sh", "-c", "echo first line; echo done > /out/x.txt"],
                          {str(out): "/out"}, None, {"x": str(out / "x.txt")})  # fmt: skip
    proc = cli("log", str(r.run_id), cwd=tmp_path)
    assert proc.returncode == 0 and "first line" in proc.stdout
    assert "first line" in "\n".join(js("show", str(r.run_id), cwd=tmp_path)["log_tail"])


def test_the_command_reads_a_postgresql_store(tmp_path: Path) -> None:
    need("postgres")
    url = fresh_pg_database(f"t_{uuid.uuid4().hex[:12]}")
    with Tracker(tmp_path / "runs", db_url=url, code_version="v1") as t:
        first = t.run(prepare, config={"zones": 2, "out": str(tmp_path / "hh.csv")}, outputs=["households"])
        t.run(prepare, config={"zones": 3, "out": str(tmp_path / "hh.csv")}, outputs=["households"])
    rows = js("runs", "--db-url", url)
    assert [r["model"] for r in rows] == ["prepare", "prepare"] and rows[1]["id"] == first.run_id
    explained = json.loads(cli("explain", rows[0]["id"], "--json", env={"CONSIST_DB_URL": url}).stdout)
    assert [c["key"] for c in explained["config_changes"]] == ["zones"]
    assert cli("show", "nope", "--db-url", url).returncode == 1


def test_version_comes_from_the_package_metadata() -> None:
    from importlib.metadata import version

    proc = cli("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"consist {version('consist')}"
    assert consist.__version__ == version("consist")
    assert (Path(consist.__file__).parent / "py.typed").is_file()


def test_openlineage_export_gives_start_and_end_events_per_run(study: Path) -> None:
    proc = cli("export", "openlineage", cwd=study)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    runs = js("runs", cwd=study)
    assert len(events) == 2 * len(runs)
    by_run: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        assert set(e) >= {"eventType", "eventTime", "run", "job", "inputs", "outputs", "producer", "schemaURL"}
        assert str(uuid.UUID(e["run"]["runId"])) == e["run"]["runId"]
        by_run.setdefault(e["run"]["facets"]["consist"]["run_id"], []).append(e)
    policy_sim = _run_of(study, "simulate", "policy")
    start, end = by_run[policy_sim["id"]]
    assert (start["eventType"], end["eventType"]) == ("START", "COMPLETE")
    assert start["job"] == {"namespace": "consist", "name": "simulate"}
    assert [d["facets"]["consist"]["key"] for d in end["inputs"]] == ["households"]
    assert [d["facets"]["consist"]["key"] for d in end["outputs"]] == ["trips"]
    assert end["outputs"][0]["name"].endswith("trips_policy.csv")
    assert end["run"]["facets"]["parent"]["job"]["name"] == "scenario"
    assert start["eventTime"] <= end["eventTime"]
    again = [json.loads(x) for x in cli("export", "openlineage", "--run", policy_sim["id"], cwd=study).stdout.split()]
    assert [e["run"]["runId"] for e in again] == [start["run"]["runId"]] * 2  # the same id every export


def test_tracker_lineage_graph_and_its_drawings(study: Path) -> None:
    from consist.lineage import to_dot, to_mermaid

    with Tracker(study / "runs", project_root=study, code_version="v1") as t:
        g = t.lineage_graph("trips")
    runs = [n for n in g["nodes"] if n["type"] == "run"]
    assert {n["model"] for n in runs} == {"simulate", "prepare"}
    assert len(g["edges"]) == 3  # households -> simulate -> trips, prepare -> households
    assert to_dot(g["nodes"], g["edges"]).count("->") == 3
    assert to_mermaid(g["nodes"], g["edges"]).count("-->") == 3


def test_log_follow_prints_while_the_run_is_running_and_stops_when_it_ends(tmp_path: Path) -> None:
    import time

    t = Tracker(tmp_path / "runs", code_version="v1")
    run = t.begin_run("long_model_run", model="simulate")
    log = tmp_path / "runs" / run.id / "container.log"
    log.parent.mkdir(parents=True)
    log.write_text("[stdout] year 2030 started\n")
    follower = subprocess.Popen([sys.executable, "-m", "consist", "log", run.id, "--follow"], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(1.5)
    assert follower.poll() is None  # still following: the run is running
    with log.open("a") as f:
        f.write("[stdout] year 2030 done\n")
    time.sleep(1.0)
    t.end_run("completed")
    t.close()
    out, err = follower.communicate(timeout=30)
    assert follower.returncode == 0, err
    assert out.splitlines() == ["[stdout] year 2030 started", "[stdout] year 2030 done"]


def test_show_prints_a_runs_metadata(tmp_path: Path) -> None:
    with Tracker(tmp_path / "runs", project_root=tmp_path, code_version="v1") as t:
        r = t.run(lambda: None, name="described", description="calibration [draft]", stage="calib",
                  meta={"households": 1200})  # fmt: skip
    shown = js("show", r.run_id, cwd=tmp_path / "runs")
    assert shown["meta"] == {"description": "calibration [draft]", "stage": "calib", "households": 1200}
    assert "cache_miss_explanation" not in shown["meta"] and shown["miss_explanation"] is not None
    text = cli("show", r.run_id, cwd=tmp_path / "runs").stdout
    assert "metadata" in text and "description: calibration [draft]" in text and "households: 1200" in text
