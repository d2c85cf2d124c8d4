"""Lookups of runs and artifacts (consist.lookups): answered by the run index, through its indexes."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import consist
from consist import Tracker
from consist.errors import (
    ArtifactNotFoundError,
    ConsistError,
    InvalidOptionError,
    OutputError,
    RunLookupError,
    RunNotFoundError,
)
from consist.store.sqlite import SCHEMA_VERSION, index_path_for
from engines import need
from scaleout import fresh_pg_database
from test_index_hardening_lookup import _V2_DDL

# The run index as schema version 4 created it (consist before the lookups' indexes): schema 2, then
# what versions 3 and 4 added.
_V4_DDL = (
    _V2_DDL.replace("PRAGMA user_version = 2;", "")
    + """
CREATE TABLE index_meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE lease (
    hash TEXT NOT NULL, kind TEXT, run_id TEXT, host TEXT NOT NULL, pid INTEGER NOT NULL, thread INTEGER,
    taken_at REAL NOT NULL);
CREATE INDEX lease_by_run ON lease (run_id);
CREATE INDEX run_producers_by_model ON run (model, ended_at) WHERE cache_hit = 0 AND status = 'completed';
CREATE TABLE heartbeat (run_id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, beat_at REAL NOT NULL);
CREATE TABLE claim (signature TEXT PRIMARY KEY, run_id TEXT NOT NULL, host TEXT NOT NULL,
    pid INTEGER NOT NULL, beat_at REAL NOT NULL);
PRAGMA user_version = 4;
"""
)
_V5_INDEXES = {
    "run_by_started", "run_by_status_started", "run_by_parent_started", "run_by_model_started",
    "run_by_year_started", "run_by_stage", "run_by_phase", "run_by_config_hash",
    "run_by_input_hash", "run_by_code_version", "artifact_by_hash_created", "artifact_by_key_created",
    "artifact_produced_by_key", "artifact_by_uri", "artifact_by_run", "artifact_by_created",
    "link_by_artifact_direction", "run_tag_by_tag",
}  # fmt: skip
_V4_ONLY_INDEXES = {"run_by_status", "run_by_parent", "artifact_by_hash", "artifact_by_key", "link_by_artifact"}


def _w(path: str | Path, text: str) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def clean(raw: Path) -> Path:
    return _w("out/clean.csv", raw.read_text() + "3\n")


def report(cleaned: Path, title: str) -> Path:
    return _w(f"out/report_{title}.csv", f"title,rows\n{title},{len(cleaned.read_text().splitlines()) - 1}\n")


def pipeline(tracker: Tracker) -> dict[str, str]:
    """clean (prep stage) -> report (a 2030 one and a 2040 one), a hit of clean, and a failed step."""
    _w("raw.csv", "x\n1\n2\n")
    ids: dict[str, str] = {}
    ids["clean"] = tracker.run(
        clean, config={"opts": {"drop": True}}, inputs={"raw": "raw.csv"}, outputs=["cleaned"], year=2020,
        tags=["base", "prep"], stage="prep", phase="calibration", meta={"owner": "ana"},
    ).run_id  # fmt: skip
    cleaned = tracker.get_artifact("cleaned")
    for year, title in ((2030, "a"), (2040, "b")):
        ids[f"report{year}"] = tracker.run(
            report, config={"title": title}, inputs={"cleaned": cleaned}, outputs=["report"], year=year,
            iteration=2, tags=["base"], stage="report", phase="calibration",
        ).run_id  # fmt: skip
    ids["hit"] = tracker.run(
        clean, config={"opts": {"drop": True}}, inputs={"raw": "raw.csv"}, outputs=["cleaned"], year=2020,
        tags=["again"], stage="prep", phase="validation",
    ).run_id  # fmt: skip

    def broken() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        tracker.run(broken, name="broken", year=2020, tags=["base"])
    ids["broken"] = tracker.find_runs(model="broken")[0].id
    return ids


def ids_of(runs: Any) -> list[str]:
    return [r.id for r in runs]


# ---------------------------------------------------------------------- find_runs and friends


def test_find_runs_filters_by_every_field_newest_first(tracker: Tracker) -> None:
    ids = pipeline(tracker)
    assert ids_of(tracker.find_runs()) == [
        ids["broken"],
        ids["hit"],
        ids["report2040"],
        ids["report2030"],
        ids["clean"],
    ]
    assert ids_of(tracker.find_runs(model="report")) == [ids["report2040"], ids["report2030"]]
    assert ids_of(tracker.find_runs(status="failed")) == [ids["broken"]]
    assert ids_of(tracker.find_runs(tags=["base"])) == [ids["broken"], ids["report2040"], ids["report2030"],
                                                        ids["clean"]]  # fmt: skip
    assert ids_of(tracker.find_runs(tags=["base", "prep"])) == [ids["clean"]]  # every tag must be there
    assert ids_of(tracker.find_runs(tags="again")) == [ids["hit"]]  # one tag as text: that tag, not its letters
    assert tracker.find_runs(tags=["base", "again"]) == []
    assert ids_of(tracker.find_runs(year=2020)) == [ids["broken"], ids["hit"], ids["clean"]]
    assert ids_of(tracker.find_runs(year=2030, iteration=2)) == [ids["report2030"]]
    assert ids_of(tracker.find_runs(iteration=2)) == [ids["report2040"], ids["report2030"]]
    assert ids_of(tracker.find_runs(cache_hit=True)) == [ids["hit"]]
    assert ids["hit"] not in ids_of(tracker.find_runs(cache_hit=False))
    assert ids_of(tracker.find_runs(stage="prep")) == [ids["hit"], ids["clean"]]
    assert ids_of(tracker.find_runs(stage="prep", phase="validation")) == [ids["hit"]]
    assert ids_of(tracker.find_runs(phase="calibration", year=2040)) == [ids["report2040"]]
    assert ids_of(tracker.find_runs(stage="report", tags=["base"], model="report", status="completed")) == [
        ids["report2040"], ids["report2030"]]  # fmt: skip
    assert tracker.find_runs(stage="nope") == [] and tracker.find_runs(model="clean", year=1999) == []
    assert ids_of(tracker.find_runs(limit=2)) == [ids["broken"], ids["hit"]]
    assert len(tracker.find_runs(limit=None)) == 5 and tracker.find_runs(limit=0) == []
    run = tracker.find_runs(model="clean", cache_hit=False)[0]
    assert isinstance(run, consist.Run) and run.meta["owner"] == "ana" and run.meta["stage"] == "prep"
    with pytest.raises(InvalidOptionError):
        tracker.find_runs(limit=-1)


def test_find_runs_by_parent(tracker: Tracker) -> None:
    tracker.run(lambda: None, name="outside")
    with tracker.start_run("parent", "scenario"):
        first = tracker.run(lambda: None, name="child_a")
        second = tracker.run(lambda: None, name="child_b")
    assert ids_of(tracker.find_runs(parent_id="parent")) == [second.run_id, first.run_id]
    assert ids_of(tracker.find_runs(parent_id="parent", model="child_a")) == [first.run_id]


def test_find_runs_indexed_by_a_field_keeps_the_newest_run_of_each_value(tracker: Tracker) -> None:
    ids = pipeline(tracker)
    by_year = tracker.find_runs(index_by="year")
    assert isinstance(by_year, dict)
    assert {y: r.id for y, r in by_year.items()} == {2020: ids["broken"], 2030: ids["report2030"],
                                                     2040: ids["report2040"]}  # fmt: skip
    assert {y: r.id for y, r in tracker.find_runs(model="clean", index_by="year").items()} == {2020: ids["hit"]}
    by_stage = tracker.find_runs(index_by="stage")
    assert {k: r.id for k, r in by_stage.items()} == {None: ids["broken"], "prep": ids["hit"],
                                                      "report": ids["report2040"]}  # fmt: skip
    by_phase = tracker.find_runs(stage="prep", index_by="phase")
    assert {k: r.id for k, r in by_phase.items()} == {"validation": ids["hit"], "calibration": ids["clean"]}
    assert set(tracker.find_runs(index_by="model")) == {"clean", "report", "broken"}
    # Over the runs found: the newest ``limit``.
    assert list(tracker.find_runs(limit=1, index_by="year")) == [2020]
    for bad in ("nope", "tags", "config"):
        with pytest.raises(InvalidOptionError, match="index_by") as err:
            tracker.find_runs(index_by=bad)
        assert isinstance(err.value, ValueError) and "stage" in str(err.value)


def test_find_run_needs_exactly_one_match(tracker: Tracker) -> None:
    ids = pipeline(tracker)
    assert tracker.find_run(model="report", year=2030).id == ids["report2030"]
    assert tracker.find_run(stage="prep", phase="validation").id == ids["hit"]
    with pytest.raises(RunLookupError) as none:
        tracker.find_run(model="report", year=1999)
    assert isinstance(none.value, LookupError) and isinstance(none.value, ConsistError)
    assert "No run" in str(none.value) and "model='report', year=1999" in str(none.value)
    assert none.value.count == 0 and none.value.run_ids == []
    for i in range(6):
        tracker.run(lambda i: None, name="many", config={"i": i}, tags=["m"])
    newest = ids_of(tracker.find_runs(model="many"))
    with pytest.raises(RunLookupError) as several:
        tracker.find_run(model="many", tags=["m"])
    assert several.value.count == 6 and several.value.run_ids == newest[:5]
    message = str(several.value)
    assert "6 runs match model='many', tags=['m']" in message
    assert all(run_id in message for run_id in newest[:5]) and newest[5] not in message
    with pytest.raises(InvalidOptionError):
        tracker.find_run(model="many", limit=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        tracker.find_run(modle="many")  # type: ignore[call-arg]


def test_find_latest_run_and_its_id(tracker: Tracker) -> None:
    ids = pipeline(tracker)
    assert tracker.find_latest_run(model="report").id == ids["report2040"]
    assert tracker.find_latest_run(model="report", year=2030).id == ids["report2030"]
    assert tracker.get_latest_run_id(stage="prep") == ids["hit"]
    assert tracker.get_latest_run_id() == ids["broken"]
    assert tracker.find_latest_run(model="nothing") is None and tracker.get_latest_run_id(tags=["zzz"]) is None


def test_find_matching_runs_by_identity_components(tracker: Tracker) -> None:
    ids = pipeline(tracker)
    producer = tracker.get_run(ids["clean"])
    assert producer is not None
    assert ids_of(tracker.find_matching_runs(producer.signature)) == [ids["hit"], ids["clean"]]
    assert ids_of(tracker.find_matching_runs(config_hash=producer.config_hash)) == [ids["hit"], ids["clean"]]
    r30, r40 = tracker.get_run(ids["report2030"]), tracker.get_run(ids["report2040"])
    assert r30 is not None and r40 is not None and r30.input_hash == r40.input_hash
    assert ids_of(tracker.find_matching_runs(input_hash=r30.input_hash)) == [ids["report2040"], ids["report2030"]]
    assert ids_of(tracker.find_matching_runs(input_hash=r30.input_hash, config_hash=r30.config_hash)) == [
        ids["report2030"]]  # fmt: skip
    code = r30.code_version
    everything = tracker.find_matching_runs(code_version=code, status=None)
    assert set(ids_of(everything)) == set(ids.values())
    assert ids["broken"] not in ids_of(tracker.find_matching_runs(code_version=code))  # completed only by default
    assert ids_of(tracker.find_matching_runs(code_version=code, model="report", limit=1)) == [ids["report2040"]]
    assert tracker.find_matching_runs("sha256:" + "0" * 64) == []
    with pytest.raises(InvalidOptionError, match="signature, config_hash, input_hash or code_version"):
        tracker.find_matching_runs(model="clean")


def test_history_is_a_dataframe_of_the_newest_runs_with_a_tags_filter(tracker: Tracker) -> None:
    ids = pipeline(tracker)
    df = tracker.history()
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == ["id", "model", "status", "cache_hit", "cache_source", "year", "iteration", "tags",
                                "started_at", "ended_at", "duration", "parent_run_id", "signature"]  # fmt: skip
    assert list(df["id"]) == [ids["broken"], ids["hit"], ids["report2040"], ids["report2030"], ids["clean"]]
    hit = df[df["id"] == ids["hit"]].iloc[0]
    assert bool(hit["cache_hit"]) and hit["cache_source"] == ids["clean"] and json.loads(hit["tags"]) == ["again"]
    assert str(df["started_at"].dtype).startswith("datetime64") and str(df["duration"].dtype).startswith("timedelta")
    assert (df["duration"] >= pd.Timedelta(0)).all() and str(df["year"].dtype) == "Int32"
    assert list(tracker.history(2)["id"]) == [ids["broken"], ids["hit"]]
    assert list(tracker.history(tags=["base", "prep"])["id"]) == [ids["clean"]]
    assert list(tracker.history(limit=1, tags=["base"])["id"]) == [ids["broken"]]
    empty = tracker.history(tags=["none such"])
    assert empty.empty and list(empty.columns) == list(df.columns)


def test_get_run_config_is_the_recorded_canonical_config(tracker: Tracker) -> None:
    ids = pipeline(tracker)
    assert tracker.get_run_config(ids["clean"]) == {"opts": {"drop": True}}
    assert tracker.get_run_config(ids["report2040"]) == {"title": "b"}
    result = tracker.run(lambda: None, name="empty")
    assert tracker.get_run_config(result) == {}  # a RunResult names its run too
    with pytest.raises(RunNotFoundError) as err:
        tracker.get_run_config("no_such_run")
    assert isinstance(err.value, KeyError) and "no_such_run" in str(err.value)


# ---------------------------------------------------------------------- artifacts


def test_get_artifact_by_id_key_and_run(tracker: Tracker) -> None:
    ids = pipeline(tracker)
    cleaned = tracker.get_artifact("cleaned")
    assert isinstance(cleaned, consist.Artifact) and cleaned.run_id == ids["clean"]
    assert tracker.get_artifact(cleaned.id) == cleaned
    report = tracker.get_artifact("report")
    assert report is not None and report.run_id == ids["report2040"]  # the newest under the key
    assert tracker.get_artifact("report", run_id=ids["report2030"]).run_id == ids["report2030"]
    raw = tracker.get_artifact("raw")
    assert raw is not None and raw.run_id is None and raw.path == Path("raw.csv").resolve()
    # A raw input recorded later under a produced artifact's key: the produced one still comes first.
    _w("other.csv", "x\n9\n")
    later = tracker.run(lambda cleaned: None, name="reads_raw", inputs={"cleaned": "other.csv"})
    assert tracker.get_artifact("cleaned").id == cleaned.id
    raw_cleaned = tracker.get_artifact("cleaned", run_id=later.run_id)
    assert raw_cleaned is not None and raw_cleaned.run_id is None and raw_cleaned.path.name == "other.csv"
    # Linked to a run under its input key; an output outranks an input of the same key.
    assert tracker.get_artifact("cleaned", run_id=ids["report2030"]).id == cleaned.id
    assert tracker.get_artifact("cleaned", run_id=ids["clean"]).id == cleaned.id
    assert tracker.get_artifact(cleaned.id, run_id=ids["report2030"]).id == cleaned.id
    assert tracker.get_artifact("report", run_id=ids["clean"]) is None
    assert tracker.get_artifact("no_such_key") is None
    with pytest.raises(RunNotFoundError):
        tracker.get_artifact("cleaned", run_id="no_such_run")


def test_get_artifact_by_uri(tracker: Tracker) -> None:
    ids = pipeline(tracker)
    art = tracker.get_artifact_by_uri("out/clean.csv")  # relative: made absolute as recorded
    assert art is not None and art.key == "cleaned" and art.run_id == ids["clean"]
    assert tracker.get_artifact_by_uri(Path("out/clean.csv").resolve()) == art
    raw = tracker.get_artifact_by_uri(Path("raw.csv"))
    assert raw is not None and raw.key == "raw" and raw.run_id is None
    assert tracker.get_artifact_by_uri("nowhere.csv") is None
    # Each new run of a step writing the same file records a newer artifact there.
    tracker.run(clean, config={"opts": {"drop": False}}, inputs={"raw": "raw.csv"}, outputs=["cleaned"])
    newer = tracker.get_artifact_by_uri("out/clean.csv")
    assert newer is not None and newer.run_id == tracker.get_latest_run_id(model="clean", cache_hit=False)
    assert newer.run_id != ids["clean"]


def test_find_artifacts_by_creator_consumer_key_and_hash(tracker: Tracker) -> None:
    ids = pipeline(tracker)
    (cleaned,) = tracker.find_artifacts(creator=ids["clean"])
    assert cleaned.key == "cleaned"
    assert [a.key for a in tracker.find_artifacts(consumer=ids["clean"])] == ["raw"]
    assert [a.id for a in tracker.find_artifacts(consumer=ids["report2030"])] == [cleaned.id]
    reports = tracker.find_artifacts(key="report")
    assert [a.run_id for a in reports] == [ids["report2040"], ids["report2030"]]  # newest first
    assert [a.run_id for a in tracker.find_artifacts(key="report", limit=1)] == [ids["report2040"]]
    assert [a.id for a in tracker.find_artifacts(hash=cleaned.hash)] == [cleaned.id]
    assert tracker.find_artifacts(creator=ids["clean"], key="report") == []
    assert [a.id for a in tracker.find_artifacts(consumer=ids["report2040"], key="cleaned")] == [cleaned.id]
    assert tracker.find_artifacts(consumer=ids["report2040"], hash="sha256:" + "0" * 64) == []
    assert tracker.find_artifacts(creator=ids["broken"]) == []
    newest = tracker.find_artifacts(limit=2)
    assert [a.key for a in newest] == ["report", "report"]
    assert {a.key for a in tracker.find_artifacts(limit=None)} == {"raw", "cleaned", "report"}
    result = tracker.run(report, config={"title": "c"}, inputs={"cleaned": cleaned}, outputs=["report"])
    assert [a.run_id for a in tracker.find_artifacts(creator=result)] == [result.run_id]  # a RunResult works too


def test_load_run_output_reads_the_recorded_file(tracker: Tracker) -> None:
    ids = pipeline(tracker)
    df = tracker.load_run_output(ids["report2040"], "report")
    assert df.to_dict("records") == [{"title": "b", "rows": 3}]
    assert list(tracker.load_run_output(ids["report2040"], "report", usecols=["rows"]).columns) == ["rows"]
    assert tracker.load_run_output(ids["hit"], "cleaned")["x"].tolist() == [1, 2, 3]  # a hit's output
    with pytest.raises(ArtifactNotFoundError) as err:
        tracker.load_run_output(ids["report2040"], "reprot")
    assert isinstance(err.value, KeyError) and "'reprot'" in str(err.value) and "outputs: report" in str(err.value)
    with pytest.raises(ArtifactNotFoundError, match="outputs: none"):
        tracker.load_run_output(ids["broken"], "report")
    with pytest.raises(RunNotFoundError):
        tracker.load_run_output("no_such_run", "report")
    Path("out/report_b.csv").unlink()
    with pytest.raises(OutputError, match="no longer at"):
        tracker.load_run_output(ids["report2040"], "report")


def test_load_run_output_of_a_file_in_a_directory_output(tracker: Tracker) -> None:
    def parts() -> Path:
        _w("parts/a.csv", "v\n1\n")
        _w("parts/sub/b.csv", "v\n2\n")
        return Path("parts")

    result = tracker.run(parts, outputs=["parts"])
    assert sorted(tracker.load_run_output(result.run_id, "parts")["v"].tolist()) == [1, 2]
    assert tracker.load_run_output(result.run_id, "sub/b.csv")["v"].tolist() == [2]


def test_diff_runs_is_what_the_command_line_prints(tracker: Tracker, tmp_path: Path) -> None:
    ids = pipeline(tracker)
    diff = tracker.diff_runs(ids["report2030"], ids["report2040"])
    assert diff["run_a"] == ids["report2030"] and diff["run_b"] == ids["report2040"]
    assert diff["config"] == [{"key": "title", "before": "a", "after": "b", "change": "changed"}]
    assert [(c["key"], c["state"]) for c in diff["inputs"]] == [("cleaned", "same")]
    (out,) = diff["outputs"]
    assert out["state"] == "changed" and out["table"]["rows_a"] == out["table"]["rows_b"] == 1
    proc = subprocess.run(
        [sys.executable, "-m", "consist", "diff", ids["report2030"], ids["report2040"], "--json",
         "--db", str(tmp_path / "provenance.duckdb")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == json.loads(json.dumps(diff, default=str))
    other = tracker.diff_runs(tracker.get_run(ids["clean"]), ids["report2030"])  # a Run names its run too
    assert {c["key"]: c["state"] for c in other["outputs"]} == {"cleaned": "removed", "report": "added"}
    with pytest.raises(RunNotFoundError):
        tracker.diff_runs(ids["clean"], "no_such_run")


def test_runs_and_artifacts_built_from_rows_are_those_the_models_make(tracker: Tracker) -> None:
    from consist.models import Artifact, Run, artifact_from_row, run_from_row

    ids = pipeline(tracker)
    row = tracker._index.run(ids["clean"])
    run = run_from_row(row)
    made = Run(**{f: getattr(run, f) for f in Run.model_fields})
    assert run == made and run.model_dump() == made.model_dump() and repr(run) == repr(made)
    run.status = "failed"  # still an ordinary, instrumented model object
    assert run.status == "failed" and run != made
    art = artifact_from_row(tracker._index.newest_artifact("cleaned"))
    assert art == Artifact(**{f: getattr(art, f) for f in Artifact.model_fields}) and art.path.name == "clean.csv"
    # The first object of a fresh interpreter is made this way too, before any Run(...) configured the models.
    code = (
        "from consist.models import run_from_row\n"
        "r = run_from_row({'id': 'x', 'year': 2030, 'tags': '[\"a\"]', 'started_at': 0.0})\n"
        "assert (r.id, r.year, r.tags, r.started_at.year) == ('x', 2030, ['a'], 1970), r\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------- the index answers, through its indexes


def test_lookups_never_read_the_duckdb_file(tracker: Tracker, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = pipeline(tracker)

    def no_duckdb(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a lookup read the DuckDB file")

    with monkeypatch.context() as patch:
        patch.setattr(tracker._store, "read", no_duckdb)
        patch.setattr(tracker._store, "sync", no_duckdb)
        assert len(tracker.find_runs(tags=["base"], stage="report")) == 2
        assert tracker.find_run(model="report", year=2030).id == ids["report2030"]
        assert tracker.find_latest_run(stage="prep").id == ids["hit"]
        assert len(tracker.find_matching_runs(tracker.find_run(model="clean", cache_hit=False).signature)) == 2
        assert len(tracker.history()) == 5 and tracker.get_run_config(ids["clean"])
        assert tracker.get_artifact("cleaned") and tracker.get_artifact_by_uri("raw.csv")
        assert tracker.find_artifacts(key="report") and len(tracker.load_run_output(ids["clean"], "cleaned")) == 3
        assert tracker.diff_runs(ids["report2030"], ids["report2040"])["config"]


def _plans(tracker: Tracker, call: Callable[[], Any]) -> list[list[str]]:
    """The query plan of every SELECT that ``call`` runs on the SQLite run index."""
    ix = tracker._index
    seen: list[str] = []
    ix._db.set_trace_callback(seen.append)
    try:
        call()
    finally:
        ix._db.set_trace_callback(None)
    selects = [s for s in seen if s.lstrip().upper().startswith("SELECT")]
    assert selects, "the lookup ran no query"
    return [[r["detail"] for r in ix.query("EXPLAIN QUERY PLAN " + s)] for s in selects]


def _indexed(plan: list[str], sorts: bool = False) -> bool:
    """No step reads a table without an index, and (unless ``sorts``) no step sorts."""
    for step in plan:
        if step.startswith("SCAN") and " INDEX " not in step:
            return False
        if "TEMP B-TREE" in step and not sorts:
            return False
    return True


def test_each_lookup_is_answered_through_an_index(tracker: Tracker) -> None:
    ids = pipeline(tracker)
    art = tracker.get_artifact("cleaned")
    signature = tracker.get_run(ids["clean"]).signature
    lookups: dict[str, Callable[[], Any]] = {
        "newest": lambda: tracker.find_runs(),
        "model": lambda: tracker.find_runs(model="report"),
        "status": lambda: tracker.find_runs(status="failed"),
        "tags": lambda: tracker.find_runs(tags=["base", "prep"]),
        "parent": lambda: tracker.find_runs(parent_id="scenario_x"),
        "year": lambda: tracker.find_runs(year=2030, iteration=2),
        "model and year": lambda: tracker.find_run(model="report", year=2030),
        "model and tags": lambda: tracker.find_runs(model="report", tags=["base"]),
        "phase": lambda: tracker.find_runs(phase="validation"),
        "latest": lambda: tracker.find_latest_run(model="clean"),
        "config_hash": lambda: tracker.find_matching_runs(config_hash="sha256:x"),
        "input_hash": lambda: tracker.find_matching_runs(input_hash="sha256:x"),
        "code_version": lambda: tracker.find_matching_runs(code_version="v"),
        "history": lambda: tracker.history(tags=["base"]),
        "config": lambda: tracker.get_run_config(ids["clean"]),
        "artifact id": lambda: tracker.get_artifact(art.id),
        "artifact key": lambda: tracker.get_artifact("raw"),
        "uri": lambda: tracker.get_artifact_by_uri("out/clean.csv"),
        "creator": lambda: tracker.find_artifacts(creator=ids["clean"]),
        "key": lambda: tracker.find_artifacts(key="report"),
        "hash": lambda: tracker.find_artifacts(hash=art.hash),
        "all artifacts": lambda: tracker.find_artifacts(),
    }
    for name, call in lookups.items():
        for plan in _plans(tracker, call):
            assert _indexed(plan), (name, plan)
    # The likely most selective filter leads: a rare status before a tag, a tag before a model.
    for call, lead in ((lambda: tracker.find_runs(status="failed", tags=["base"]), "run_by_status_started"),
                       (lambda: tracker.find_runs(status="completed", tags=["base"]), "run_tag_by_tag"),
                       (lambda: tracker.find_runs(model="report", tags=["base"]), "run_tag_by_tag"),
                       (lambda: tracker.find_runs(model="report", year=2030), "run_by_year_started"),
                       (lambda: tracker.find_runs(stage="prep", parent_id="p"), "run_by_parent_started")):  # fmt: skip
        (plan,) = _plans(tracker, call)
        assert lead in plan[0], plan
    # A run's links are few, and so are the runs of one signature (a run and its hits): found through
    # their index, then put in order.
    for call in (lambda: tracker.get_artifact("report", run_id=ids["report2030"]),
                 lambda: tracker.load_run_output(ids["clean"], "cleaned"),
                 lambda: tracker.find_matching_runs(signature)):  # fmt: skip
        for plan in _plans(tracker, call):
            assert _indexed(plan, sorts=True), plan
    # A run's inputs are few: they are found by the links' primary key, then sorted.
    (consumer,) = _plans(tracker, lambda: tracker.find_artifacts(consumer=ids["report2030"]))
    assert any("sqlite_autoindex_run_artifact_1 (run_id=? AND direction=?)" in step for step in consumer), consumer


def test_stage_and_phase_are_found_through_their_expression_indexes(tracker: Tracker) -> None:
    pipeline(tracker)
    ddl = {r["name"]: r["sql"] for r in tracker._index.query("SELECT name, sql FROM sqlite_master WHERE type='index'")}
    assert "json_extract(meta, '$.stage')" in ddl["run_by_stage"]
    assert "json_extract(meta, '$.phase')" in ddl["run_by_phase"]
    for field, index in (("stage", "run_by_stage"), ("phase", "run_by_phase")):
        (plan,) = _plans(tracker, lambda field=field: tracker.find_runs(**{field: "prep"}))
        assert plan == [f"SEARCH run USING INDEX {index} (<expr>=?)"], plan
    # The query's expression is the index's: without the hint SQLite picks the index by itself.
    plan = tracker._index.query(
        "EXPLAIN QUERY PLAN SELECT * FROM run WHERE " + tracker._index.meta_field("stage") + " = 'prep' "
        "ORDER BY started_at DESC LIMIT 5"
    )
    assert [r["detail"] for r in plan] == ["SEARCH run USING INDEX run_by_stage (<expr>=?)"]


def test_run_tags_follow_the_run_rows(tracker: Tracker) -> None:
    """run_tag is kept by triggers: inserted with a run, replaced when its tags change, gone with the run."""
    result = tracker.run(lambda: None, name="t", tags=["a", "b"])
    ix = tracker._index

    def tags_of(run_id: str) -> list[str]:
        return sorted(r["tag"] for r in ix.query("SELECT tag FROM run_tag WHERE run_id = ?", (run_id,)))

    assert tags_of(result.run_id) == ["a", "b"]
    row = ix.run(result.run_id)
    ix.upsert_run({**row, "tags": json.dumps(["c"])})
    assert tags_of(result.run_id) == ["c"] and ids_of(tracker.find_runs(tags=["c"])) == [result.run_id]
    assert tracker.find_runs(tags=["a"]) == []
    ix.upsert_run({**row, "tags": "not json"})  # never written by consist, but no write may fail on it
    assert tags_of(result.run_id) == []
    ix.upsert_run({**row, "tags": json.dumps(["d", "d", 5])})
    assert tags_of(result.run_id) == ["d"]
    ix.atomic(lambda: ix._run("DELETE FROM run WHERE id = ?", (result.run_id,)))
    assert tags_of(result.run_id) == []


def test_a_fresh_index_has_the_lookup_schema(tracker: Tracker) -> None:
    ix = tracker._index
    assert ix.query_one("PRAGMA user_version")["user_version"] == SCHEMA_VERSION == 5
    names = {r["name"] for r in ix.query("SELECT name FROM sqlite_master")}
    assert _V5_INDEXES | {"run_tag", "run_tag_insert", "run_tag_update", "run_tag_delete"} <= names
    assert not names & _V4_ONLY_INDEXES


def _as_v4(db: Path) -> None:
    """Turn the run index of ``db`` into a schema version 4 file holding the same rows."""
    path = index_path_for(db)
    old = path.with_name("v4.sqlite")
    con = sqlite3.connect(old)
    con.executescript(_V4_DDL)
    con.execute("ATTACH ? AS cur", (str(path),))
    for table in ("run", "artifact", "run_artifact", "index_meta", "object"):
        con.execute(f"INSERT INTO {table} SELECT * FROM cur.{table}")
    con.execute("UPDATE counter SET seq = (SELECT seq FROM cur.counter)")
    con.commit()
    con.execute("DETACH cur")
    con.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    old.rename(path)


def test_a_v4_index_is_upgraded_keeping_its_rows(make_tracker: Callable[..., Tracker], tmp_path: Path) -> None:
    tracker = make_tracker(code_version="v1")
    ids = pipeline(tracker)
    counts = {t: tracker._index.query_one(f"SELECT count(*) AS n FROM {t}")["n"]
              for t in ("run", "artifact", "run_artifact")}  # fmt: skip
    generation = tracker._index.generation
    tracker.close()
    _as_v4(tmp_path / "provenance.duckdb")

    # Read-only, an older index is looked at as it is: the lookups read its JSON columns instead.
    looker = make_tracker(code_version="v1", read_only=True)
    assert looker._index.schema_version == 4 and not looker._index.has_lookup_indexes
    assert ids_of(looker.find_runs(tags=["base", "prep"])) == [ids["clean"]]
    assert ids_of(looker.find_runs(stage="prep", phase="validation")) == [ids["hit"]]
    assert looker.get_artifact("report").run_id == ids["report2040"]
    looker.close()
    con = sqlite3.connect(index_path_for(tmp_path / "provenance.duckdb"))
    assert con.execute("PRAGMA user_version").fetchone()[0] == 4  # read-only changed nothing
    con.close()

    upgraded = make_tracker(code_version="v1")
    ix = upgraded._index
    assert ix.query_one("PRAGMA user_version")["user_version"] == 5 and ix.generation == generation
    assert {t: ix.query_one(f"SELECT count(*) AS n FROM {t}")["n"] for t in counts} == counts
    names = {r["name"] for r in ix.query("SELECT name FROM sqlite_master")}
    assert _V5_INDEXES <= names and not names & _V4_ONLY_INDEXES
    assert ix.query_one("SELECT count(*) AS n FROM run_tag")["n"] == 6  # the old runs' tags: base x4, prep, again
    assert ids_of(upgraded.find_runs(tags=["base", "prep"])) == [ids["clean"]]
    assert ids_of(upgraded.find_runs(tags=["again"])) == [ids["hit"]]
    assert ids_of(upgraded.find_runs(stage="report")) == [ids["report2040"], ids["report2030"]]
    assert upgraded.get_artifact("report").run_id == ids["report2040"]
    (plan,) = _plans(upgraded, lambda: upgraded.find_runs(stage="report"))
    assert plan == ["SEARCH run USING INDEX run_by_stage (<expr>=?)"]
    hit = upgraded.run(clean, config={"opts": {"drop": True}}, inputs={"raw": "raw.csv"}, outputs=["cleaned"],
                       year=2020, tags=["later"])  # fmt: skip
    assert hit.cache_hit and ids_of(upgraded.find_runs(tags=["later"])) == [hit.run_id]


# ---------------------------------------------------------------------- PostgreSQL


@pytest.fixture
def pg() -> str:
    need("postgres")
    return fresh_pg_database(f"t_{uuid.uuid4().hex[:12]}")


def _psql(url: str, sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as con:
        cur = con.execute(sql)
        return cur.fetchall() if cur.description else []


def test_lookups_on_postgresql(pg: str, tmp_path: Path) -> None:
    with Tracker(tmp_path / "runs", db_url=pg, project_root=tmp_path, code_version="v1") as tracker:
        ids = pipeline(tracker)
        assert ids_of(tracker.find_runs(tags=["base"])) == [ids["broken"], ids["report2040"], ids["report2030"],
                                                            ids["clean"]]  # fmt: skip
        assert ids_of(tracker.find_runs(tags=["base", "prep"], stage="prep")) == [ids["clean"]]
        assert ids_of(tracker.find_runs(stage="prep", phase="validation")) == [ids["hit"]]
        assert ids_of(tracker.find_runs(cache_hit=True)) == [ids["hit"]]
        assert {k: r.id for k, r in tracker.find_runs(index_by="stage").items()} == {
            None: ids["broken"], "prep": ids["hit"], "report": ids["report2040"]}  # fmt: skip
        assert tracker.find_run(model="report", year=2030).id == ids["report2030"]
        with pytest.raises(RunLookupError) as err:
            tracker.find_run(tags=["base"], year=2020)
        assert err.value.count == 2 and err.value.run_ids == [ids["broken"], ids["clean"]]
        assert ids_of(tracker.find_matching_runs(tracker.get_run(ids["clean"]).signature)) == [ids["hit"], ids["clean"]]
        assert list(tracker.history(tags=["again"])["id"]) == [ids["hit"]]
        cleaned = tracker.get_artifact("cleaned")
        assert cleaned.run_id == ids["clean"] and tracker.get_artifact_by_uri("out/clean.csv") == cleaned
        assert [a.id for a in tracker.find_artifacts(consumer=ids["report2030"])] == [cleaned.id]
        assert [a.run_id for a in tracker.find_artifacts(key="report")] == [ids["report2040"], ids["report2030"]]
        assert tracker.load_run_output(ids["report2030"], "report")["rows"].tolist() == [3]
        assert tracker.diff_runs(ids["report2030"], ids["report2040"])["config"][0]["key"] == "title"
        # The planner reaches each filter through its index (sequential scans off: the tables are tiny).
        ix = tracker._index
        ix.execute("SET enable_seqscan = off")
        try:
            for sql, index in (
                (f"SELECT * FROM run WHERE {ix.meta_field('stage')} = 'prep' ORDER BY started_at DESC LIMIT 5",
                 "run_by_stage"),
                (f"SELECT * FROM run WHERE {ix.meta_field('phase')} = 'x' ORDER BY started_at DESC LIMIT 5",
                 "run_by_phase"),
                ("SELECT * FROM run_tag WHERE tag = 'base' ORDER BY started_at DESC LIMIT 5", "run_tag_by_tag"),
                ("SELECT * FROM artifact WHERE uri = '/x' ORDER BY created_at DESC LIMIT 1", "artifact_by_uri"),
            ):  # fmt: skip
                plan = "\n".join(next(iter(r.values())) for r in ix.query("EXPLAIN " + sql))
                assert index in plan, plan
            # The lookups' own statements: the leading filter's index gives their order (so no sort is needed
            # however old its runs are; on tables this small the planner would rather sort, so it may not).
            ix.execute("SET enable_sort = off")
            code = tracker.get_run(ids["clean"]).code_version
            for filters, tags, index in (
                ({"code_version": code, "status": "completed"}, [], "run_by_code_version"),
                ({"stage": "prep", "year": 2020}, [], "run_by_stage"),
                ({"model": "report"}, ["base"], "run_tag_by_tag"),
                ({"status": "failed"}, ["base"], "run_by_status_started"),
            ):
                sql, params, order = ix._runs_matching(filters, tags)
                rows = ix.query(f"EXPLAIN SELECT run.* {sql} ORDER BY {order} LIMIT 100", params)
                plan = "\n".join(next(iter(r.values())) for r in rows)
                assert index in plan and "Sort" not in plan, plan
        finally:
            ix.execute("RESET enable_seqscan")
            ix.execute("RESET enable_sort")
    assert _psql(pg, "SELECT max(version) FROM consist_index.schema_version") == [(2,)]


def test_a_postgresql_schema_1_is_upgraded_and_read_as_it_was_before(pg: str, tmp_path: Path) -> None:
    with Tracker(tmp_path / "runs", db_url=pg, project_root=tmp_path, code_version="v1") as tracker:
        ids = pipeline(tracker)
    # Back to what schema version 1 had: no run_tag, no trigger, no lookup indexes.
    _psql(pg, "DROP FUNCTION consist_index.run_tag_sync() CASCADE; "
              "DROP TABLE consist_index.run_tag; DROP INDEX consist_index.run_by_stage; "
              "DELETE FROM consist_index.schema_version WHERE version = 2")  # fmt: skip
    with Tracker(tmp_path / "runs", db_url=pg, project_root=tmp_path, read_only=True) as looker:
        assert looker._index.schema_version == 1 and not looker._index.has_lookup_indexes
        assert ids_of(looker.find_runs(tags=["base", "prep"])) == [ids["clean"]]
        assert ids_of(looker.find_runs(stage="prep")) == [ids["hit"], ids["clean"]]
    with Tracker(tmp_path / "runs", db_url=pg, project_root=tmp_path, code_version="v1") as tracker:
        assert _psql(pg, "SELECT count(*) FROM consist_index.run_tag") == [(6,)]
        assert ids_of(tracker.find_runs(tags=["base", "prep"])) == [ids["clean"]]
        assert ids_of(tracker.find_runs(stage="prep")) == [ids["hit"], ids["clean"]]
        later = tracker.run(lambda: None, name="later", tags=["new"], stage="prep")
        assert ids_of(tracker.find_runs(tags=["new"], stage="prep")) == [later.run_id]
