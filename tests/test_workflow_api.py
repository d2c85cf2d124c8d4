"""The everyday workflow API: the active run, metadata, lineage that follows the data,
recovery across workspaces, scenario contracts and conventions. Real trackers, real
DuckDB and SQLite files, real object stores.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import duckdb
import pytest

import consist
from consist import Tracker
from test_guarantees_tracker import links, write

# --------------------------------------------------------------------- the active run


def test_the_active_run_shows_its_inputs_config_and_outputs_so_far(tracker: Tracker) -> None:
    write("raw.csv", "a\n1\n")
    seen: dict = {}

    def step(raw: Path, k: int) -> Path:
        rec = tracker.current_consist
        seen["before"] = (rec.run_id, sorted(rec.inputs), dict(rec.config), dict(rec.outputs), rec.is_cached)
        out = write("out.csv", raw.read_text() * k)
        tracker.log_output(out, key="extra")
        seen["after"] = sorted(consist.current_consist().outputs)
        return out

    r = tracker.run(step, name="s", config={"k": 2}, inputs={"raw": "raw.csv"}, outputs=["out"])
    run_id, inputs, config, outputs, cached = seen["before"]
    assert run_id == r.run_id and inputs == ["raw"] and config == {"k": 2} and outputs == {} and not cached
    assert seen["after"] == ["extra"]
    assert tracker.current_consist is None and tracker.active_run is None
    last = tracker.last_run
    assert last.run_id == r.run_id and sorted(last.outputs) == ["extra", "out"] and last.run.status == "completed"
    assert last.inputs["raw"].hash == r.run.identity["inputs"]["raw"]

    hit = tracker.run(step, name="s", config={"k": 2}, inputs={"raw": "raw.csv"}, outputs=["out"])
    assert hit.cache_hit
    last = tracker.last_run
    assert last.run_id == hit.run_id and last.is_cached and last.cached_run.id == r.run_id
    assert last.cached_output("out").hash == r.outputs["out"].hash
    assert last.cached_output("nope") is None


def test_a_step_body_written_once_works_on_a_miss_and_on_a_hit(tracker: Tracker) -> None:
    def body() -> tuple[bool, consist.Artifact]:
        with tracker.start_run("prep", "prep", config={"n": 3}):
            if not tracker.is_cached:
                write("prep.csv", "n\n3\n")
            art = tracker.log_output("prep.csv", key="prep")  # on a hit: the cached artifact
            return tracker.is_cached, art

    cached, first = body()
    assert not cached and tracker.cached_output("prep") is None
    Path("prep.csv").unlink()
    with tracker.start_run("prep", "prep", config={"n": 3}):
        assert tracker.is_cached
        assert tracker.current_consist.cached_run.id == "prep"
        restored = tracker.cached_output("prep")
        assert restored.hash == first.hash and Path(restored.uri).read_text() == "n\n3\n"
        Path("prep.csv").unlink()  # the body skipped writing it: logging by key still gives the cached one
        again = tracker.log_output("prep.csv", key="prep")
        assert again.hash == first.hash and again.run_id == "prep"
    assert tracker.last_run.is_cached and tracker.get_run("prep~2").cache_hit


def test_logging_an_output_missing_on_a_miss_is_an_output_error_not_an_input_error(tracker: Tracker) -> None:
    with pytest.raises(consist.OutputError, match="does not exist"), tracker.start_run("r", "m"):
        tracker.log_output("never-written.csv", key="x")
    with tracker.start_run("r2", "m2"):
        write("a.csv", "a")
        tracker.log_output("a.csv", key="a")
    Path("a.csv").unlink()
    with pytest.raises(consist.OutputError), tracker.start_run("r2", "m2"):  # a hit; an unknown key
        tracker.log_output("b.csv", key="b")


def test_invalid_direction_is_a_value_error(tracker: Tracker) -> None:
    with tracker.start_run("r", "m"), pytest.raises(ValueError, match="Unknown direction 'sideways'"):
        tracker.log_artifact(write("a.csv", "a"), direction="sideways")


# --------------------------------------------------------------------- metadata


def test_artifact_metadata_is_recorded_queryable_and_restored_with_the_artifact(tracker: Tracker) -> None:
    with tracker.start_run("m1", "m"):
        art = tracker.log_output(write("trips.csv", "t"), key="trips", rows=120, source={"survey": 2019})
        tracker.log_input(write("zones.csv", "z"), key="zones", crs="EPSG:4326")
    assert art.meta["rows"] == 120 and art.meta["source"] == {"survey": 2019}
    stored = tracker.get_artifacts_for_run("m1")
    assert stored.outputs["trips"].meta == {"rows": 120, "source": {"survey": 2019}}
    # An input's metadata is kept with the run that read it: the file may be another run's output.
    assert stored.inputs["zones"].meta is None
    assert tracker.get_run("m1").meta["input_meta"] == {"zones": {"crs": "EPSG:4326"}}
    tracker.sync()
    with duckdb.connect(str(tracker.db_path), read_only=True) as con:
        rows = con.execute(
            "SELECT key, json_extract_string(meta, '$.rows') FROM artifact "
            "WHERE json_extract(meta, '$.rows') IS NOT NULL"
        ).fetchall()
        crs = con.execute("SELECT json_extract_string(meta, '$.input_meta.zones.crs') FROM run").fetchall()
    assert rows == [("trips", "120")] and crs == [("EPSG:4326",)]


def test_a_consumer_never_rewrites_its_producers_record(tracker: Tracker) -> None:
    made = tracker.run(lambda: write("made.csv", "m"), name="make", outputs=["m"])
    with tracker.start_run("reader", "m"):
        tracker.log_input("made.csv", key="made", note="consumer's opinion")
    assert tracker.get_artifact(made.outputs["m"].id).meta == made.outputs["m"].meta
    assert tracker.get_run("reader").meta["input_meta"] == {"made": {"note": "consumer's opinion"}}


def test_input_metadata_refused_as_too_large_leaves_no_input_behind(tracker: Tracker) -> None:
    write("a.csv", "a")
    with tracker.start_run("r", "m"):
        tracker.log_meta(blob="x" * 60_000)
        with pytest.raises(consist.MetadataError, match="over the limit"):
            tracker.log_input("a.csv", key="a", more="y" * 10_000)
        assert tracker.current_consist.inputs == {}
    assert tracker.get_artifacts_for_run("r").inputs == {}


def test_metadata_keeps_file_modes_for_restores(tracker: Tracker) -> None:
    with tracker.start_run("mode", "m"):
        p = write("x.sh", "#!/bin/sh\n")
        p.chmod(0o755)
        art = tracker.log_output(p, key="x", note="executable")
    assert art.meta["note"] == "executable" and art.meta["mode"] == "0755"
    Path("x.sh").unlink()
    with tracker.start_run("mode", "m"):
        assert tracker.is_cached and Path("x.sh").stat().st_mode & 0o777 == 0o755


def test_run_fields_and_metadata_live_in_run_meta_and_not_in_the_identity(tracker: Tracker) -> None:
    calls = []

    def step() -> None:
        calls.append(1)
        tracker.log_meta(households=1000, stage="calibrated")

    r = tracker.run(step, name="s", description="first try", stage="draft", phase="base", meta={"who": "ana"})
    meta = tracker.get_run(r.run_id).meta
    assert meta["description"] == "first try" and meta["phase"] == "base" and meta["who"] == "ana"
    assert meta["stage"] == "calibrated" and meta["households"] == 1000  # log_meta replaces, adds
    assert "cache_miss_explanation" in meta  # consist's own keys stay
    hit = tracker.run(step, name="s", description="second", stage="final")
    assert hit.cache_hit and calls == [1]
    assert tracker.get_run(hit.run_id).meta["description"] == "second"
    tracker.sync()
    with duckdb.connect(str(tracker.db_path), read_only=True) as con:
        stages = con.execute(
            "SELECT json_extract_string(meta, '$.stage') FROM run WHERE model = 's' ORDER BY started_at"
        ).fetchall()
    assert stages == [("calibrated",), ("final",)]


def test_begin_run_keeps_extra_keywords_as_metadata(tracker: Tracker) -> None:
    with tracker.start_run("b", "m", description="d", scenario_label="A", year=2030) as run:
        assert run.meta["scenario_label"] == "A" and run.meta["description"] == "d" and run.year == 2030
    assert tracker.get_run("b").meta["scenario_label"] == "A"


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        ({"blob": "x" * 70_000}, "over the limit of 65,536"),
        ({"mode": "fast"}, "'mode' of artifact 'a' is one consist records itself"),
        ({"ratio": float("nan")}, "NaN, infinity"),
        ({"when": object()}, "cannot be stored as JSON"),
        ({"k" * 129: 1}, "at most 128 characters"),
    ],
)
def test_bad_artifact_metadata_is_refused_clearly_and_records_nothing(tracker: Tracker, meta: dict, match: str) -> None:
    with tracker.start_run("bad", "m"):
        with pytest.raises(consist.MetadataError, match=match) as err:
            tracker.log_output(write("a.csv", "a"), key="a", **meta)
        assert isinstance(err.value, ValueError) and isinstance(err.value, consist.ConsistError)
    assert tracker.get_artifacts_for_run("bad").outputs == {}


def test_bad_run_metadata_is_refused_before_anything_runs(tracker: Tracker) -> None:
    calls = []
    with pytest.raises(consist.MetadataError, match="stage is text of at most 128"):
        tracker.run(lambda: calls.append(1), name="s", stage="x" * 200)
    with pytest.raises(consist.MetadataError, match="'cache_miss_explanation'"):
        tracker.run(lambda: calls.append(1), name="s", meta={"cache_miss_explanation": "mine"})
    with pytest.raises(consist.MetadataError, match="'description' of run"):
        tracker.run(lambda: calls.append(1), name="s", meta={"description": "use the argument"})
    assert calls == [] and tracker.find_runs() == []
    with tracker.start_run("r", "m"), pytest.raises(consist.MetadataError, match="over the limit"):
        tracker.log_meta(big="x" * 70_000)
    assert "big" not in (tracker.get_run("r").meta or {})


# --------------------------------------------------------------------- lineage that follows the data


def test_an_artifact_input_is_linked_as_that_very_artifact(tracker: Tracker) -> None:
    a = tracker.run(lambda: write("same.csv", "s"), name="a", outputs=["x"])
    b = tracker.run(lambda: write("same2.csv", "s"), name="b", outputs=["y"])  # same content, another run
    use = tracker.run(lambda i: None, name="use", inputs={"i": a.outputs["x"]})
    assert links(tracker, use.run_id, "input")["i"]["id"] == a.outputs["x"].id
    use_b = tracker.run(lambda i: None, name="use_b", inputs={"i": b})  # a RunResult with one output
    assert links(tracker, use_b.run_id, "input")["i"]["id"] == b.outputs["y"].id
    lineage = tracker.get_artifact_lineage(b.outputs["y"].id)
    assert lineage["producing_run"]["run"].id == b.run_id


def test_a_path_whose_content_a_run_produced_links_to_that_run(tracker: Tracker) -> None:
    made = tracker.run(lambda: write("made.csv", "m"), name="make", outputs=["m"])
    write("copy.csv", "m")  # the same bytes, at another place
    use = tracker.run(lambda p: None, name="use", inputs={"p": "copy.csv"})
    assert links(tracker, use.run_id, "input")["p"]["run_id"] == made.run_id


def test_an_artifact_in_a_list_of_inputs_keeps_its_own_key(tracker: Tracker) -> None:
    a = tracker.run(lambda: write("data/households.csv", "h"), name="a", outputs=["households"])
    write("extra.csv", "e")
    use = tracker.run(lambda: None, name="use", inputs=[a.outputs["households"], "extra.csv"])
    assert sorted(links(tracker, use.run_id, "input")) == ["extra.csv", "households"]


def test_an_artifact_whose_file_is_gone_is_restored_from_the_store_when_the_step_executes(tracker: Tracker) -> None:
    made = tracker.run(lambda: write("made.csv", "payload"), name="make", outputs=["m"])
    art = made.outputs["m"]
    Path("made.csv").unlink()
    read = []

    def use(src: Path, n: int) -> None:
        read.append((src, src.read_text()))

    first = tracker.run(use, name="use", config={"n": 1}, inputs={"src": art})
    [(src, text)] = read
    assert text == "payload" and src.name == "made.csv"
    # Put back in the workspace's own folder of such inputs, never at the place the artifact names.
    assert tracker.run_dir / ".consist" / "inputs" in src.parents and not Path("made.csv").exists()
    assert links(tracker, first.run_id, "input")["src"]["id"] == art.id
    hit = tracker.run(use, name="use", config={"n": 1}, inputs={"src": art})
    assert hit.cache_hit and len(read) == 1  # a hit needs no input bytes
    tracker.run(use, name="use", config={"n": 2}, inputs={"src": art})  # already in place: used as it is
    assert read[1] == read[0]


def test_two_gone_artifacts_of_one_place_each_give_the_step_their_own_bytes(tracker: Tracker) -> None:
    v1 = tracker.run(lambda v: write("table.csv", f"version {v}"), name="make", config={"v": 1}, outputs=["t"])
    v2 = tracker.run(lambda v: write("table.csv", f"version {v}"), name="make", config={"v": 2}, outputs=["t"])
    Path("table.csv").unlink()
    seen = {}
    tracker.run(lambda old, new: seen.update(old=old.read_text(), new=new.read_text()), name="compare",
                inputs={"old": v1.outputs["t"], "new": v2.outputs["t"]})  # fmt: skip
    assert seen == {"old": "version 1", "new": "version 2"}


def test_an_artifact_object_claiming_other_content_or_place_writes_nothing_there(
    tracker: Tracker, tmp_path: Path
) -> None:
    made = tracker.run(lambda: write("made.csv", "payload"), name="make", outputs=["m"])
    Path("made.csv").unlink()
    art = made.outputs["m"]
    target = tmp_path / "elsewhere" / "authorized_keys"
    forged = art.model_copy(update={"uri": str(target)})  # the real id and hash, another place
    got = []
    tracker.run(lambda src: got.append(src.read_text()), name="use", inputs={"src": forged})
    assert got == ["payload"] and not target.exists() and not target.parent.exists()
    wrong = art.model_copy(update={"hash": "sha256:" + "0" * 64})  # the real id, other content
    with pytest.raises(consist.InputNotFoundError):  # not taken for the recorded artifact
        tracker.run(lambda src: None, name="use2", inputs={"src": wrong})


def test_a_gone_artifact_whose_bytes_are_not_stored_is_a_clear_input_error(tracker: Tracker) -> None:
    made = tracker.run(lambda: write("made.csv", "payload"), name="make", outputs=["m"], cache_mode="readonly")
    Path("made.csv").unlink()
    with pytest.raises(consist.InputNotFoundError):
        tracker.run(lambda src: None, name="use", inputs={"src": made.outputs["m"]})


def test_a_damaged_stored_input_is_never_handed_to_a_step(tracker: Tracker) -> None:
    made = tracker.run(lambda: write("made.csv", "payload"), name="make", outputs=["m"])
    obj = tracker._objects.path_of(made.outputs["m"].hash)
    obj.chmod(0o644)
    obj.write_text("tampered")
    Path("made.csv").unlink()
    calls = []
    with pytest.raises(consist.IntegrityError):
        tracker.run(lambda src: calls.append(1), name="use", inputs={"src": made.outputs["m"]})
    assert calls == [] and not Path("made.csv").exists()
    assert tracker.get_run(tracker.last_run.run_id).status == "failed"


# --------------------------------------------------------------------- recovery across workspaces


def test_hydrate_run_outputs_into_another_workspace_and_a_target_directory(make_tracker) -> None:
    t = make_tracker("first", store_dir="shared-store")

    def step() -> dict[str, Path]:
        return {"table": write("first/out/table.csv", "x\n1\n"), "folder": Path(write("first/out/d/a.txt", "a").parent)}

    made = t.run(step, name="made", outputs=["table", "folder"])
    t.close()
    other = make_tracker("second", store_dir="shared-store")
    got = other.hydrate_run_outputs(made.run_id)
    assert got["table"] == Path("second/out/table.csv").resolve() and got["table"].read_text() == "x\n1\n"
    assert (got["folder"] / "a.txt").read_text() == "a"
    only = other.hydrate_run_outputs(made.run_id, target_root="restart", keys=["table"])
    assert only == {"table": Path("restart/table.csv").absolute()} and only["table"].read_text() == "x\n1\n"
    with pytest.raises(consist.OutputError, match=r"recorded no output 'nope'.*'folder', 'table'"):
        other.hydrate_run_outputs(made.run_id, keys=["nope"])
    with pytest.raises(consist.RunNotFoundError):
        other.hydrate_run_outputs("no-such-run")


def test_hydrating_damaged_bytes_writes_nothing(tracker: Tracker) -> None:
    made = tracker.run(lambda: write("o.csv", "good"), name="made", outputs=["o"])
    obj = tracker._objects.path_of(made.outputs["o"].hash)
    obj.chmod(0o644)
    obj.write_text("evil")
    with pytest.raises(consist.IntegrityError):
        tracker.hydrate_run_outputs(made.run_id, target_root="t")
    assert not Path("t/o.csv").exists()


def test_eager_validation_re_executes_when_a_stored_object_is_damaged(tracker: Tracker) -> None:
    calls = []

    def step() -> Path:
        calls.append(1)
        return write("o.csv", "good")

    made = tracker.run(step, name="s", outputs=["o"])
    obj = tracker._objects.path_of(made.outputs["o"].hash)
    obj.chmod(0o644)
    obj.write_text("evil")
    lazy = tracker.run(step, name="s", outputs=["o"])  # the output is in place: a lazy hit does not read the store
    assert lazy.cache_hit and calls == [1]
    with pytest.warns(consist.ConsistWarning, match="cannot be restored"):
        eager = tracker.run(step, name="s", outputs=["o"], validate_cached_outputs="eager")
    assert not eager.cache_hit and calls == [1, 1]
    assert Path("o.csv").read_text() == "good"
    with pytest.raises(ValueError, match="validate_cached_outputs"):
        tracker.run(step, name="s", validate_cached_outputs="sometimes")


# --------------------------------------------------------------------- scenario contracts


def test_scenario_inputs_declared_outputs_and_the_steps_it_records(tracker: Tracker) -> None:
    write("land_use.csv", "zone,pop\n1,10\n")
    with consist.scenario("base", tracker) as sc:
        land = sc.add_input("land_use.csv", key="land_use")
        assert land.key == "land_use" and "land_use" in sc.coupler
        sc.declare_outputs("trips")
        sc.declare_outputs("report", required=False)
        sc.run(lambda land_use: write("trips.csv", land_use.read_text()), name="trips", inputs={"land_use": "land_use"},
               outputs=["trips"])  # fmt: skip
    header = tracker.get_run("base")
    assert header.status == "completed"
    summary = header.meta["scenario"]
    assert [s["status"] for s in summary["steps"]] == ["executed"] and summary["failed_step"] is None
    assert summary["declared_outputs"] == ["report", "trips"]
    arts = tracker.get_artifacts_for_run("base")
    assert set(arts.inputs) == {"land_use"} and set(arts.outputs) == {"trips"}

    with consist.scenario("base", tracker) as sc:  # again: the step is a hit
        sc.add_input("land_use.csv", key="land_use")
        sc.run(lambda land_use: write("trips.csv", land_use.read_text()), name="trips", inputs={"land_use": "land_use"},
               outputs=["trips"])  # fmt: skip
    assert [s["status"] for s in tracker.get_run("base~2").meta["scenario"]["steps"]] == ["hit"]


def test_a_scenario_without_a_required_output_fails_naming_it(tracker: Tracker) -> None:
    with pytest.raises(consist.OutputError, match="without its required outputs 'skims'"):
        with consist.scenario("s", tracker) as sc:
            sc.declare_outputs("skims", "trips")
            sc.run(lambda: write("trips.csv", "t"), name="trips", outputs=["trips"])
    header = tracker.get_run("s")
    assert header.status == "failed" and "skims" in header.error
    assert header.meta["scenario"]["missing_outputs"] == ["skims"]


def test_a_failing_step_is_named_in_the_header(tracker: Tracker) -> None:
    def boom() -> None:
        raise RuntimeError("model crashed")

    with pytest.raises(RuntimeError), consist.scenario("f", tracker) as sc:
        sc.run(lambda: write("a.csv", "a"), name="ok", outputs=["a"])
        sc.run(boom, name="bad")
    summary = tracker.get_run("f").meta["scenario"]
    assert [s["status"] for s in summary["steps"]] == ["executed", "failed"]
    assert summary["failed_step"].startswith("bad_")


# --------------------------------------------------------------------- conventions


def test_output_path_and_output_dir_are_per_run(tracker: Tracker) -> None:
    def step() -> Path:
        path = consist.output_path("trips", ext="parquet")
        assert path == tracker.run_dir / tracker.current_consist.run_id / "trips.parquet"
        assert consist.output_dir() == path.parent and path.parent.is_dir()
        return write(path, "t")

    r = tracker.run(step, name="s", outputs=["trips"])
    assert r.outputs["trips"].path.parent.name == r.run_id
    with pytest.raises(consist.RunStateError, match="no run is active"):
        tracker.output_dir()
    with tracker.start_run("r", "m"), pytest.raises(consist.InvalidNameError):
        tracker.output_path("../escape")


@pytest.mark.parametrize(
    ("call", "option"),
    [
        (lambda t: t.run(lambda: None, cache_mode="resue"), "cache_mode"),
        (lambda t: Tracker(t.run_dir, hashing_strategy="quick"), "hashing_strategy"),
        (lambda t: t.run(lambda: None, validate_cached_outputs="maybe"), "validate_cached_outputs"),
    ],
)
def test_invalid_option_values_are_value_errors(tracker: Tracker, call, option: str) -> None:
    with pytest.raises(consist.InvalidOptionError, match=f"Unknown {option}") as err:
        call(tracker)
    assert isinstance(err.value, ValueError) and isinstance(err.value, consist.ConsistError)


def test_an_unknown_backend_is_a_value_error() -> None:
    from consist.containers import get_backend

    with pytest.raises(ValueError, match="Unknown backend_type 'dockerr'") as err:
        get_backend("dockerr")
    assert isinstance(err.value, consist.ContainerError)


def test_noop_tracker_runs_every_step_and_records_nothing(tmp_path: Path) -> None:
    t = consist.NoopTracker(tmp_path / "runs", db_path=tmp_path / "x.duckdb")
    write("in.csv", "1")
    calls = []

    def step(src: Path, k: int) -> Path:
        calls.append(k)
        rec = t.current_consist
        return write(t.output_path("out", ext="csv"), src.read_text() + str(rec.config["k"]))

    for _ in range(2):
        r = t.run(step, name="s", config={"k": 5}, inputs={"src": "in.csv"}, outputs=["out"])
        assert not r.cache_hit and r.outputs["out"].path.read_text() == "15"
    assert calls == [5, 5] and not t.is_cached and t.cached_output("out") is None
    with t.start_run("m", "m"):
        t.log_output("in.csv", key="x", rows=1)
        t.log_meta(a=1)
    assert t.last_run.run_id == "m" and t.find_runs() == [] and t.get_run("m") is None
    with t.scenario("sc") as sc:
        sc.run(step, name="s", config={"k": 1}, inputs={"src": "in.csv"}, outputs=["out"])
        assert "out" in sc.coupler
    assert not (tmp_path / "x.duckdb").exists() and not list((tmp_path / "runs").glob("**/*.sqlite"))


def test_a_read_only_tracker_reads_everything_and_writes_nothing(make_tracker, tmp_path: Path) -> None:
    t = make_tracker()
    r = t.run(lambda: write("o.csv", "o"), name="s", outputs=["o"], stage="calib")
    t.close()

    def files() -> dict[Path, int]:
        # Any reader of a WAL database (the command line too) may create its empty -wal/-shm companions.
        return {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file() and p.suffix not in (
            ".sqlite-wal", ".sqlite-shm")}  # fmt: skip

    before = files()
    ro = make_tracker(read_only=True)
    assert ro.get_run(r.run_id).meta["stage"] == "calib"
    assert [x.id for x in ro.find_runs(model="s")] == [r.run_id]
    assert set(ro.get_artifacts_for_run(r.run_id).outputs) == {"o"}
    for attempt in (
        lambda: ro.run(lambda: write("o.csv", "o"), name="s", outputs=["o"]),
        lambda: ro.begin_run("x", "m"),
        lambda: ro.scenario("sc").__enter__(),
        lambda: ro.hydrate_run_outputs(r.run_id),
    ):
        with pytest.raises(consist.RunStateError, match="read-only"):
            attempt()
    ro.close()
    assert files() == before
    nothing = tmp_path / "nothing-here"
    with pytest.raises(consist.StoreError, match="There is no run index"):
        Tracker(nothing, read_only=True)
    assert not nothing.exists()


def test_metadata_shows_in_json_exports_of_the_run(tracker: Tracker) -> None:
    tracker.run(lambda: None, name="s", stage="draft", meta={"note": "n"})
    run = tracker.find_runs(model="s")[0]
    assert json.loads(run.model_dump_json())["meta"]["note"] == "n"
    assert os.fspath(tracker.run_dir)


# --------------------------------------------------------------------- attacks on the above


def _set_location(t: Tracker, art_id: str, location: str, kind: str | None = None) -> None:
    t._index.execute("UPDATE artifact SET location = ? WHERE id = ?", (location, art_id))
    if kind:
        t._index.execute("UPDATE artifact SET kind = ? WHERE id = ?", (kind, art_id))


@pytest.mark.parametrize("location", ["project://", "run_dir://", "run_dir://.consist", "run_dir://.consist/objects"])
def test_a_record_naming_a_root_or_consists_own_files_never_replaces_them(
    make_tracker, tmp_path: Path, location: str
) -> None:
    t = make_tracker()
    write("precious.txt", "keep me")
    made = t.run(lambda: write("out/x.txt", "x"), name="s", outputs=["x"])
    _set_location(t, made.outputs["x"].id, location)
    Path("out/x.txt").unlink()
    with pytest.warns(consist.ConsistWarning, match="cannot be restored"):
        again = t.run(lambda: write("out/x.txt", "x"), name="s", outputs=["x"])
    assert not again.cache_hit  # not restorable there: the step ran again
    assert Path("precious.txt").read_text() == "keep me" and t.run_dir.is_dir()
    assert t._objects.has(made.outputs["x"].hash)
    with pytest.raises(consist.ConsistError, match=r"root itself|consist's own files"):
        t.hydrate_run_outputs(made.run_id)
    assert Path("precious.txt").read_text() == "keep me"


def test_hydrating_never_writes_through_a_link_it_restored(make_tracker, tmp_path: Path) -> None:
    t = make_tracker()
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()

    def step() -> dict[str, Path]:
        Path("evil").symlink_to(outside)
        return {"lnk": Path("evil"), "pay": write("payload.txt", "p")}

    made = t.run(step, name="s", outputs=["lnk", "pay"])
    _set_location(t, made.outputs["pay"].id, "project://evil/payload")
    Path("evil").unlink()
    Path("payload.txt").unlink()
    t.hydrate_run_outputs(made.run_id, keys=["lnk"])  # the link itself comes back
    assert Path("evil").is_symlink()
    with pytest.raises(consist.ConsistError, match="symbolic link"):
        t.hydrate_run_outputs(made.run_id, keys=["pay"])
    assert list(outside.iterdir()) == []


def test_hydrating_keys_that_would_share_a_file_name_is_refused(tracker: Tracker) -> None:
    made = tracker.run(lambda: {"tables/trips": write("a.csv", "A"), "tables_trips": write("b.csv", "B")},
                       name="s", outputs=["tables/trips", "tables_trips"])  # fmt: skip
    with pytest.raises(consist.OutputError, match="to the same place"):
        tracker.hydrate_run_outputs(made.run_id, target_root="t")
    assert not Path("t").exists()


def test_a_read_only_tracker_never_prunes_or_rebuilds(make_tracker, tmp_path: Path) -> None:
    t = make_tracker()
    t.run(lambda: write("o.csv", "o"), name="s", outputs=["o"])
    t.close()
    objects = sorted(p for p in (tmp_path / "runs" / ".consist" / "objects").rglob("*") if p.is_file())
    ro = make_tracker(read_only=True)
    for attempt in (lambda: ro.prune_store(older_than=0), ro.prune_store, ro.rebuild_index):
        with pytest.raises(consist.RunStateError, match="read-only"):
            attempt()
    assert sorted(p for p in (tmp_path / "runs" / ".consist" / "objects").rglob("*") if p.is_file()) == objects


def test_prune_store_takes_seconds_too(tracker: Tracker) -> None:
    tracker.run(lambda: write("o.csv", "o"), name="s", outputs=["o"])
    assert tracker.prune_store(older_than=3600, dry_run=True) == tracker.prune_store(
        older_than=dt.timedelta(hours=1), dry_run=True
    )


def test_self_referencing_metadata_is_a_metadata_error(tracker: Tracker) -> None:
    loop: list = []
    loop.append(loop)
    with tracker.start_run("r", "m"), pytest.raises(consist.MetadataError):
        tracker.log_meta(loop=loop)


def test_the_merger_of_a_removed_workspace_creates_nothing(tmp_path: Path) -> None:
    from consist.store import merger

    gone = tmp_path / "gone" / "provenance.duckdb"
    assert merger.main([str(gone)]) == 0
    assert not (tmp_path / "gone").exists()


def test_scenario_inputs_with_one_file_name_keep_both_and_contracts_need_steps(tracker: Tracker) -> None:
    write("a/data.csv", "A")
    write("b/data.csv", "B")
    with pytest.raises(consist.OutputError, match="'result'"):
        with consist.scenario("s", tracker) as sc:
            first = sc.add_input("a/data.csv")
            second = sc.add_input("b/data.csv")
            assert (first.key, second.key) == ("data.csv", "data.csv#2")
            sc.add_input("a/data.csv", key="result")  # an input does not fulfil an output contract
            sc.declare_outputs("result")
    assert set(tracker.get_artifacts_for_run("s").inputs) == {"data.csv", "data.csv#2", "result"}
    with consist.scenario("t", tracker) as sc:
        for bad in ("", "  ", "a\0b"):
            with pytest.raises(consist.ConsistError, match="printable text"):
                sc.declare_outputs(bad)


def test_a_noop_tracker_behaves_like_a_tracker_where_code_relies_on_it(tmp_path: Path) -> None:
    t = consist.NoopTracker(tmp_path / "runs")
    write("data/trips.csv", "t")
    got = {}
    with consist.scenario("sc", t) as sc:
        sc.run(lambda: Path("data/trips.csv"), name="make", outputs=["trips"])
        sc.run(lambda trips: got.update(trips=trips), name="use", inputs={"trips": "trips"})
        with sc.trace("look") as step:
            assert step.cache_hit is False and step.cache_source is None
            step.log_output("data/trips.csv", key="again")
            assert set(step.outputs) == {"again"}
    assert got["trips"] == Path("data/trips.csv").absolute()  # the coupler key, as a Tracker resolves it
    run = t.begin_run("manual", "m")
    assert isinstance(run, consist.Run) and run.status == "running" and not run.cache_hit
    assert t.end_run().status == "completed"
    with pytest.raises(consist.RunStateError):
        t.end_run()
    with pytest.raises(consist.InvalidNameError):
        t.begin_run("../../evil", "m")
    with t.start_run("r", "m"), pytest.raises(consist.InvalidNameError):
        t.output_path("../../escaped")
    with pytest.raises(consist.OutputError):
        t.run(lambda: Path("data/trips.csv"), name="two", outputs=["a", "b"])
    assert not (tmp_path / "evil").exists()
