"""Guarantees of the Tracker's cache decisions and restores.

What a run is keyed on (``_plan``), when an earlier run is reused and what is put
back (``_try_reuse``, ``_holds``, ``_store_for``, ``_record_hit``), and what is
recorded for a run that executed (``_open``, ``_new_row``, ``_link_inputs``,
``_store_output``, ``_finish``). Real trackers, files and databases throughout.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import time
import warnings
from pathlib import Path

import pytest

import consist
from consist import Tracker
from consist.hashing import FileHasher, NullMemo, dumps, hash_canonical, manifest_bytes
from consist.identity import make_signature
from consist.planning import driver_for, normalize_inputs
from consist.restoring import _holds
from files import aged, sha, write


def index_row(tracker: Tracker, run_id: str) -> dict:
    row = tracker._index.run(run_id)
    assert row is not None, run_id
    return row


def links(tracker: Tracker, run_id: str, direction: str) -> dict[str, dict]:
    return {r["link_key"]: r for r in tracker._index.links_of(run_id, direction)}


# --------------------------------------------------------------------- what a run is keyed on


def test_plan_components_are_exactly_the_documented_ones(make_tracker) -> None:
    t = make_tracker(code_version="v7", cache_epoch=3)
    write("in/a.csv", "A")
    plan = t._plan(
        fn=None, source=None, name="step", model="model", config={"b": 2.0, "a": [1]}, inputs={"src": "in/a.csv"},
        year=2030, iteration=2, cache_mode="reuse", code_version=None,
    )  # fmt: skip
    cfg = {"a": [1], "b": 2}
    assert plan.components == {
        "code": "v7",
        "config": hash_canonical(cfg),
        "inputs": {"src": sha(b"A")},
        "run_fields": {"model": "model", "year": 2030, "iteration": 2},
        "cache_epoch": 3,
    }
    assert plan.signature == make_signature(plan.components)
    assert (plan.name, plan.model, plan.config, plan.config_hash) == ("step", "model", cfg, hash_canonical(cfg))
    assert plan.inputs == [("src", Path("in/a.csv"), sha(b"A"))]
    assert (plan.cache_mode, plan.year, plan.iteration) == ("reuse", 2030, 2)
    assert plan.hasher.strategy == "full" and plan.hasher.memo is t._index
    extra = t._plan(
        fn=None, source=None, name="s", model="m", config=None, inputs=None, year=None, iteration=None,
        cache_mode="reuse", code_version="pinned", extra={"kind": "container", "cache_epoch": 9},
    )  # fmt: skip
    assert extra.components["kind"] == "container" and extra.components["cache_epoch"] == 9
    assert extra.components["code"] == "pinned" and extra.components["config"] == hash_canonical({})
    assert extra.components["inputs"] == {} and extra.config == {}


def test_code_version_precedence(make_tracker) -> None:
    def step() -> None:
        return None

    unpinned = make_tracker()
    assert unpinned.run(step).run.code_version.startswith("module:")
    pinned = make_tracker(code_version="tracker-pin")
    assert pinned.run(step).run.code_version == "tracker-pin"
    assert pinned.run(step, code_version="call-pin").run.code_version == "call-pin"


def test_unknown_cache_mode_is_refused_before_anything_is_hashed(tracker: Tracker) -> None:
    with pytest.raises(consist.ConsistError) as err:
        tracker.run(lambda src: None, name="x", inputs={"src": "missing.csv"}, cache_mode="always")
    assert str(err.value) == "Unknown cache_mode 'always'. Fix: use one of 'reuse', 'overwrite', 'readonly'."
    assert isinstance(err.value, ValueError)


def test_a_missing_input_names_its_key(tracker: Tracker) -> None:
    with pytest.raises(consist.InputNotFoundError, match="The input 'households' path does not exist"):
        tracker.run(lambda households: None, name="x", inputs={"households": "nowhere.csv"})


def test_config_files_are_keyed_by_content(tracker: Tracker) -> None:
    cfg = write("settings.yaml", "a: 1\n")
    expected = {"$config_file": sha(b"a: 1\n")}
    assert tracker._canonical_config(cfg, tracker._hasher("reuse")) == expected
    assert tracker._canonical_config("settings.yaml", tracker._hasher("reuse")) == expected
    assert tracker._canonical_config("not-a-file.yaml", tracker._hasher("reuse")) == "not-a-file.yaml"
    assert tracker._canonical_config(None, tracker._hasher("reuse")) == {}
    r = tracker.run(lambda: None, name="c", config=cfg)
    assert r.run.config == expected and r.run.config_hash == hash_canonical(expected)


def test_readonly_runs_read_the_hash_memo_but_never_write_it(make_tracker) -> None:
    t = make_tracker()
    f = aged(write("big.bin", b"x" * 1000))
    ro = t._hasher("readonly")
    assert ro.strategy == "full"
    ro.hash_path(f)
    assert ro.bytes_hashed == 1000
    assert t._index.query_one("SELECT count(*) AS n FROM hash_memo")["n"] == 0  # nothing written
    t._hasher("reuse").hash_path(f)
    assert t._index.query_one("SELECT count(*) AS n FROM hash_memo")["n"] == 1
    again = t._hasher("readonly")
    assert again.hash_path(f) == sha(b"x" * 1000) and again.bytes_hashed == 0  # read from the memo
    fast = make_tracker(run_dir="fast_runs", hashing_strategy="fast")
    assert fast._hasher("readonly").strategy == "fast" and fast._hasher("reuse").strategy == "fast"


# --------------------------------------------------------------------- inputs


def keyed(inputs: object, resolve: object = None) -> list[tuple[str, Path]]:
    return [(k, p) for k, p, _value in normalize_inputs(inputs, resolve)]  # type: ignore[arg-type]


def test_normalize_inputs_keys(tmp_path: Path) -> None:
    assert keyed(None) == []
    pairs = [("a", Path("x/one.csv")), ("2", Path("two.csv"))]
    assert keyed({"a": "x/one.csv", 2: Path("two.csv")}) == pairs
    assert keyed("data/one.csv") == [("one.csv", Path("data/one.csv"))]
    assert keyed(Path("data/one.csv")) == [("one.csv", Path("data/one.csv"))]
    assert keyed(["a/in.csv", "b/in.csv", "c/in.csv", "d/other.csv"]) == [
        ("in.csv", Path("a/in.csv")),
        ("in.csv#2", Path("b/in.csv")),
        ("in.csv#3", Path("c/in.csv")),
        ("other.csv", Path("d/other.csv")),
    ]
    resolved = keyed(["households", "plain.csv"], lambda v: Path("/c/hh.csv") if v == "households" else None)
    assert resolved == [("households", Path("/c/hh.csv")), ("plain.csv", Path("plain.csv"))]
    assert keyed({"k": "households"}, lambda v: Path("/c/hh.csv")) == [("k", Path("/c/hh.csv"))]


def test_artifacts_and_run_results_as_inputs(tracker: Tracker) -> None:
    one = tracker.run(lambda: write("one.txt", "1"), name="one", outputs=["o"])
    # An artifact keeps its own key (a plain path is keyed by its file name).
    assert keyed([one.outputs["o"]]) == [("o", one.outputs["o"].path)]
    assert keyed(one.outputs["o"]) == [("o", one.outputs["o"].path)]
    assert normalize_inputs([one.outputs["o"]])[0][2] is one.outputs["o"]  # the value itself comes along
    assert keyed({"x": one}) == [("x", one.outputs["o"].path)]
    two = tracker.run(lambda: {"a": write("a.txt", "a"), "b": write("b.txt", "b")}, name="two", outputs=["a", "b"])
    with pytest.raises(consist.ConsistError) as err:
        normalize_inputs({"x": two})
    assert str(err.value) == (
        "A run result with 2 outputs was passed as one input. Likely cause: it is ambiguous which output is "
        "meant. Fix: pass result.outputs[key] instead."
    )
    with pytest.raises(consist.ConsistError) as err:
        normalize_inputs({"x": 42})
    assert str(err.value) == (
        "Input of type int is not a path, artifact or run result. "
        "Fix: pass a path (str or pathlib.Path), an Artifact or a RunResult."
    )


def test_inputs_are_linked_to_the_artifact_that_produced_them(tracker: Tracker) -> None:
    first = tracker.run(lambda: write("made.csv", "m"), name="make", outputs=["made"])
    made = first.outputs["made"]
    second = tracker.run(lambda src: None, name="use", inputs={"src": "made.csv"})
    assert links(tracker, second.run_id, "input")["src"]["id"] == made.id


def test_raw_inputs_get_one_artifact_per_path_and_content(tracker: Tracker) -> None:
    raw = write("raw/zones.csv", "z")
    (Path("raw") / "dir").mkdir()
    write("raw/dir/f.txt", "f")
    a = tracker.run(lambda src, d: None, name="a", inputs={"src": raw, "d": "raw/dir"})
    b = tracker.run(lambda src: None, name="b", inputs={"src": raw})
    la, lb = links(tracker, a.run_id, "input"), links(tracker, b.run_id, "input")
    uri = str(raw.resolve())
    expected_id = hash_canonical([uri, sha(b"z")], "consist-input-artifact-v1").split(":")[1][:32]
    assert la["src"]["id"] == lb["src"]["id"] == expected_id
    assert (la["src"]["uri"], la["src"]["size"], la["src"]["kind"], la["src"]["driver"]) == (uri, 1, "file", "csv")
    assert la["src"]["run_id"] is None and la["src"]["hash"] == sha(b"z") and la["src"]["key"] == "src"
    assert (la["d"]["size"], la["d"]["kind"], la["d"]["driver"]) == (None, "dir", "dir")
    write("raw/zones.csv", "zz")
    c = tracker.run(lambda src: None, name="c", inputs={"src": raw})
    assert links(tracker, c.run_id, "input")["src"]["id"] != expected_id


def test_fast_hashing_never_links_inputs_to_outputs_by_hash(make_tracker) -> None:
    t = make_tracker(hashing_strategy="fast")
    first = t.run(lambda: write("made.csv", "m"), name="make", outputs=["made"])
    second = t.run(lambda src: None, name="use", inputs={"src": "made.csv"})
    linked = links(t, second.run_id, "input")["src"]
    assert linked["id"] != first.outputs["made"].id and linked["run_id"] is None


# --------------------------------------------------------------------- what is recorded


def test_the_run_row_records_identity_and_provenance(make_tracker) -> None:
    t = make_tracker(code_version="cv", cache_epoch=5)
    write("in.csv", "i")
    r = t.run(lambda src, k: None, name="step", run_id="rid", inputs={"src": "in.csv"}, config={"k": 1.0},
              year=2040, iteration=3, tags=["x", "y"])  # fmt: skip
    row = index_row(t, "rid")
    identity = json.loads(row["identity"])
    assert identity["inputs"] == {"src": sha(b"i")}
    assert row["name"] == "rid" and row["model"] == "step" and row["status"] == "completed"
    assert (row["year"], row["iteration"], row["cache_epoch"]) == (2040, 3, 5)
    assert json.loads(row["tags"]) == ["x", "y"]
    assert row["signature"] == make_signature(identity) and row["code_version"] == "cv"
    assert row["config"] == dumps({"k": 1}) and row["config_hash"] == hash_canonical({"k": 1})
    assert row["input_hash"] == hash_canonical({"src": sha(b"i")}, "consist-inputs-v1")
    assert (row["cache_hit"], row["cache_source"], row["error"]) == (0, None, None)
    assert (row["run_dir"], row["pid"], row["host"]) == (str(t.run_dir), os.getpid(), socket.gethostname())
    assert row["started_at"] <= row["ended_at"] <= time.time()
    assert r.run.parent_run_id is None
    untagged = t.run(lambda: None, name="bare")
    assert index_row(t, untagged.run_id)["tags"] is None
    assert untagged.run_id.startswith("bare_") and len(untagged.run_id) == len("bare_") + 8


def test_nested_runs_record_their_parent(tracker: Tracker) -> None:
    with tracker.start_run("outer", "pipeline"):
        inner = tracker.run(lambda: None, name="inner")
        inner_hit = tracker.run(lambda: None, name="inner")
    assert inner.run.parent_run_id == "outer"
    assert inner_hit.cache_hit and index_row(tracker, inner_hit.run_id)["parent_run_id"] == "outer"
    explicit = tracker.run(lambda: None, name="other", parent_run_id="someone")
    assert explicit.run.parent_run_id == "someone"


def test_outputs_are_stored_and_recorded(tracker: Tracker) -> None:
    def step() -> dict[str, Path]:
        write("out/d/x.csv", "xx")
        write("out/d/sub/y.csv", "yyy")
        return {"table": write("out/t.CSV", "t,u\n"), "folder": Path("out/d"), "z": write("out/m.zarr/0", "0").parent}

    r = tracker.run(step, name="o", outputs=["table", "folder", "z"])
    rows = links(tracker, r.run_id, "output")
    t_row, d_row, z_row = rows["table"], rows["folder"], rows["z"]
    assert (t_row["hash"], t_row["size"], t_row["kind"], t_row["driver"]) == (sha(b"t,u\n"), 4, "file", "csv")
    assert t_row["uri"] == str(Path("out/t.CSV").resolve()) and t_row["run_id"] == r.run_id
    assert t_row["meta"] is None and t_row["key"] == "table"
    manifest = [["sub/y.csv", sha(b"yyy"), 3], ["x.csv", sha(b"xx"), 2]]
    assert (d_row["hash"], d_row["size"], d_row["kind"]) == (sha(manifest_bytes(manifest)), 5, "dir")
    assert (d_row["driver"], json.loads(d_row["meta"])) == ("dir", {"files": 2})
    assert (z_row["kind"], z_row["driver"]) == ("dir", "zarr")
    root = str(tracker._objects.root)
    for row in (t_row, d_row):
        assert tracker._objects.has(row["hash"])
        assert tracker._index.object_stores(row["hash"]) == [root]
    assert tracker._index.query_one("SELECT size FROM object WHERE hash = ?", (d_row["hash"],))["size"] == 5


def test_outputs_are_content_hashed_even_with_fast_input_hashing(make_tracker) -> None:
    t = make_tracker(hashing_strategy="fast")
    r = t.run(lambda: write("o.txt", "content"), name="f", outputs=["o"])
    assert r.outputs["o"].hash == sha(b"content")


def test_a_missing_output_is_an_error_that_says_where(tracker: Tracker) -> None:
    with pytest.raises(consist.OutputError) as err:
        tracker.run(lambda: None, name="liar", outputs={"o": "never/written.csv"})
    assert f"Output 'o' does not exist at {Path('never/written.csv').absolute()}" in str(err.value)
    assert "make the function write the file before returning its path" in str(err.value)


def test_readonly_misses_describe_outputs_without_storing_them(tracker: Tracker) -> None:
    def step() -> dict[str, Path]:
        write("ro/d/a", "aa")
        return {"f": write("ro/f.json", "{}"), "d": Path("ro/d")}

    r = tracker.run(step, name="ro", outputs=["f", "d"], cache_mode="readonly")
    f, d = r.outputs["f"], r.outputs["d"]
    assert (f.hash, f.size, f.kind, f.driver, f.meta) == (sha(b"{}"), 2, "file", "json", None)
    assert (d.size, d.kind, d.meta) == (2, "dir", {"files": 1})
    assert d.hash == sha(manifest_bytes([["a", sha(b"aa"), 2]]))
    assert not tracker._objects.has(f.hash) and not tracker._objects.has(d.hash)
    assert tracker._index.query("SELECT * FROM object") == []
    assert tracker._index.query("SELECT * FROM run") == []
    assert tracker._index.query("SELECT * FROM artifact") == []


def test_failed_runs_record_the_error(tracker: Tracker) -> None:
    def boom() -> None:
        raise ValueError("bad input")

    with pytest.raises(ValueError):
        tracker.run(boom, run_id="f1")
    row = index_row(tracker, "f1")
    assert (row["status"], row["error"]) == ("failed", "ValueError: bad input")
    assert row["ended_at"] is not None and row["ended_at"] >= row["started_at"]
    tracker.begin_run("f2", "manual")
    tracker.end_run("failed", "the model diverged")
    assert index_row(tracker, "f2")["error"] == "the model diverged"
    tracker.begin_run("ok", "manual")
    tracker.end_run()
    assert index_row(tracker, "ok")["error"] is None


def test_a_failed_scenario_step_marks_its_scenario(tracker: Tracker) -> None:
    with pytest.raises(RuntimeError):
        with tracker.scenario("sc") as sc:
            sc.run(lambda: (_ for _ in ()).throw(RuntimeError("step broke")), name="step")
    header = tracker.get_run("sc")
    assert header.status == "failed"


def test_restored_outputs_of_a_manual_hit_keep_their_producer(tracker: Tracker) -> None:
    with tracker.start_run("make", "m"):
        tracker.log_output(write("made.txt", "m"), key="made")
    Path("made.txt").unlink()
    with tracker.start_run("again", "m") as run:
        assert run.cache_hit
    out = links(tracker, "again", "output")["made"]
    assert out["run_id"] == "make"
    assert tracker._index.query_one("SELECT count(*) AS n FROM artifact WHERE key = 'made'")["n"] == 1


# --------------------------------------------------------------------- hits


def test_a_hit_is_recorded_with_its_source_and_outputs(tracker: Tracker, calls) -> None:
    def step() -> Path:
        calls()
        return write("o.txt", "o")

    first = tracker.run(step, run_id="first", outputs=["o"], tags=["t"])
    events = []
    tracker.on_run_start(lambda run: events.append(("start", run.id, run.cache_hit)))
    tracker.on_run_complete(lambda run, outs: events.append(("done", run.id, sorted(outs))))
    hit = tracker.run(step, run_id="second", outputs=["o"], tags=["t"])
    assert calls.n == 1 and hit.cache_hit and hit.cache_source == "first" and hit.run_id == "second"
    row = index_row(tracker, "second")
    assert (row["status"], row["cache_hit"], row["cache_source"]) == ("completed", 1, "first")
    assert json.loads(row["tags"]) == ["t"] and row["parent_run_id"] is None
    assert row["ended_at"] >= row["started_at"] and row["signature"] == index_row(tracker, "first")["signature"]
    assert links(tracker, "second", "output")["o"]["id"] == first.outputs["o"].id
    assert events == [("start", "second", True), ("done", "second", ["o"])]
    assert set(hit.outputs["o"].model_dump()) >= {"id", "uri", "hash"}
    assert hit.outputs["o"].id == first.outputs["o"].id and hit.run.cache_miss_explanation is None


def test_a_hit_is_served_by_the_run_that_executed_never_by_a_hit(tracker: Tracker) -> None:
    tracker.run(lambda: write("o.txt", "o"), name="s", run_id="producer", outputs=["o"])
    tracker.run(lambda: write("o.txt", "o"), name="s", run_id="hit1", outputs=["o"])
    again = tracker.run(lambda: write("o.txt", "o"), name="s", run_id="hit2", outputs=["o"])
    assert again.cache_source == "producer"


def test_outputs_restored_to_another_path_get_their_own_artifact(make_tracker, tmp_path: Path) -> None:
    t = make_tracker()

    def step() -> None:
        write("out/r.csv", "r")

    os.chdir(tmp_path)
    (tmp_path / "checkout_a").mkdir()
    os.chdir(tmp_path / "checkout_a")
    first = t.run(step, name="s", outputs={"r": "out/r.csv"})
    (tmp_path / "checkout_b").mkdir()
    os.chdir(tmp_path / "checkout_b")
    hit = t.run(step, name="s", outputs={"r": "out/r.csv"})
    assert hit.cache_hit and Path("out/r.csv").read_text() == "r"
    restored = links(t, hit.run_id, "output")["r"]
    original = first.outputs["r"]
    assert restored["id"] != original.id and restored["run_id"] == first.run_id
    assert restored["uri"] == str((tmp_path / "checkout_b" / "out" / "r.csv").resolve())
    assert json.loads(restored["meta"]) == {"restored_from": original.id}
    assert restored["hash"] == original.hash and restored["created_at"] >= index_row(t, first.run_id)["ended_at"]
    assert hit.outputs["r"].id == restored["id"] and hit.outputs["r"].meta == {"restored_from": original.id}
    third = t.run(step, name="s", outputs={"r": "out/r.csv"})  # same place again: reuse that artifact row
    assert third.cache_hit
    # Every hit restored away from the producer's path records its own artifact row.
    assert t._index.query_one("SELECT count(*) AS n FROM artifact WHERE key = 'r'")["n"] == 3
    assert links(t, third.run_id, "output")["r"]["uri"] == restored["uri"]


def test_outputs_recorded_without_a_location_restore_to_their_path(tracker: Tracker) -> None:
    """Index rows written before locations existed carry only the absolute path."""
    r = tracker.run(lambda: write("legacy/o.txt", "o"), name="legacy", outputs=["o"])
    tracker._index.execute("UPDATE artifact SET location = NULL WHERE id = ?", (r.outputs["o"].id,))
    Path("legacy/o.txt").unlink()
    hit = tracker.run(lambda: write("legacy/o.txt", "other"), name="legacy", outputs=["o"])
    assert hit.cache_hit and Path("legacy/o.txt").read_text() == "o"


def test_readonly_hits_restore_but_record_nothing(tracker: Tracker) -> None:
    tracker.run(lambda: write("o.txt", "o"), name="s", outputs=["o"])
    before = tracker._index.max_seq()
    Path("o.txt").unlink()
    hit = tracker.run(lambda: write("o.txt", "other"), name="s", outputs=["o"], cache_mode="readonly")
    assert hit.cache_hit and Path("o.txt").read_text() == "o"
    assert tracker._index.max_seq() == before


def test_an_output_already_in_place_is_not_rewritten(tracker: Tracker) -> None:
    def step() -> dict[str, Path]:
        write("keep/d/a.txt", "a")
        return {"f": write("keep/f.txt", "f"), "d": Path("keep/d")}

    tracker.run(step, name="k", outputs=["f", "d"])
    inode_f, inode_a = Path("keep/f.txt").stat().st_ino, Path("keep/d/a.txt").stat().st_ino
    assert tracker.run(step, name="k", outputs=["f", "d"]).cache_hit
    assert Path("keep/f.txt").stat().st_ino == inode_f and Path("keep/d/a.txt").stat().st_ino == inode_a
    write("keep/f.txt", "F")  # same size, other bytes
    write("keep/d/a.txt", "b")
    assert tracker.run(step, name="k", outputs=["f", "d"]).cache_hit
    assert Path("keep/f.txt").read_text() == "f" and Path("keep/d/a.txt").read_text() == "a"


def test_holds_compares_kind_size_and_content(tmp_path: Path) -> None:
    hasher = FileHasher(NullMemo())
    f = write(tmp_path / "f.txt", "abc")
    assert _holds({"kind": "file", "size": 3, "hash": sha(b"abc")}, f, hasher)
    assert not _holds({"kind": "file", "size": 4, "hash": sha(b"abc")}, f, hasher)
    assert not _holds({"kind": "file", "size": 3, "hash": sha(b"abd")}, f, hasher)
    assert not _holds({"kind": "file", "size": 3, "hash": sha(b"abc")}, tmp_path / "absent", hasher)
    d = tmp_path / "d"
    d.mkdir()
    write(d / "x", "x")
    dir_hash = sha(manifest_bytes([["x", sha(b"x"), 1]]))
    assert _holds({"kind": "dir", "size": None, "hash": dir_hash}, d, hasher)
    assert not _holds({"kind": "dir", "size": None, "hash": sha(b"other")}, d, hasher)
    assert not _holds({"kind": "dir", "size": None, "hash": dir_hash}, f, hasher)


def test_every_object_is_checked_before_any_output_is_written(tracker: Tracker) -> None:
    seen = []

    def step() -> dict[str, Path]:
        seen.append(sorted(p.name for p in Path("outs").glob("*")) if Path("outs").exists() else [])
        return {"a": write("outs/a.txt", "a"), "b": write("outs/b.txt", "b")}

    r = tracker.run(step, name="two", outputs=["a", "b"])
    b_obj = tracker._objects.path_of(r.outputs["b"].hash)
    os.chmod(b_obj, 0o644)
    b_obj.write_text("x")  # damaged: same size, other content
    for name in ("a.txt", "b.txt"):
        Path("outs", name).unlink()
    with pytest.warns(consist.ConsistWarning) as caught:
        again = tracker.run(step, name="two", outputs=["a", "b"])
    assert not again.cache_hit
    assert seen == [[], []]  # a.txt was not restored before b's damage was found
    message = str(caught[0].message)
    assert message.startswith(f"Cached outputs of run {r.run_id!r} cannot be restored (Stored object ")
    assert message.endswith("; running the step again.")
    assert tracker.explain(again.run_id)["reason"] == "outputs_unavailable"


@pytest.mark.skipif(
    "MUTANT_UNDER_TEST" in os.environ, reason="mutmut's trampolines add stack frames between caller and callee"
)
def test_the_restore_warning_points_at_the_callers_line(tracker: Tracker) -> None:
    r = tracker.run(lambda: write("w.txt", "w"), name="w", outputs=["w"])
    obj = tracker._objects.path_of(r.outputs["w"].hash)
    os.chmod(obj, 0o644)
    obj.write_text("x")
    Path("w.txt").unlink()
    with pytest.warns(consist.ConsistWarning) as caught:
        tracker.run(lambda: write("w.txt", "w"), name="w", outputs=["w"])
    assert caught[0].filename == __file__


def test_a_producer_missing_a_declared_output_is_skipped(tracker: Tracker, calls) -> None:
    def step() -> None:
        calls()
        consist.log_output(write("a.txt", "a"), key="a")

    first = tracker.run(step, name="p")  # recorded output: a
    plan = tracker._plan(
        fn=step, source=None, name="p", model="p", config=None, inputs=None, year=None, iteration=None,
        cache_mode="reuse", code_version=None,
    )  # fmt: skip
    assert tracker._try_reuse(plan, None, ["a", "b"]) == "outputs_not_recorded"
    producer, outs = tracker._try_reuse(plan, None, ["a"])
    assert producer["id"] == first.run_id and set(outs) == {"a"}
    assert tracker._try_reuse(plan, None, []) != "outputs_not_recorded"
    assert calls.n == 1


def test_the_newest_usable_producer_is_reused(tracker: Tracker) -> None:
    def step() -> Path:
        return write("o.txt", "o")

    tracker.run(step, name="n", run_id="older", outputs=["o"])
    newer = tracker.run(step, name="n", run_id="newer", outputs=["o"], cache_mode="overwrite")
    # Point the newer producer's output at content no store holds: the older producer is used instead.
    tracker._index.execute("UPDATE artifact SET hash = ? WHERE id = ?", ("sha256:" + "0" * 64, newer.outputs["o"].id))
    Path("o.txt").unlink()
    hit = tracker.run(step, name="n", outputs=["o"])
    assert hit.cache_hit and hit.cache_source == "older" and Path("o.txt").read_text() == "o"


def test_pruned_outputs_rerun_without_a_warning(tracker: Tracker, calls) -> None:
    def step() -> Path:
        calls()
        return write("o.txt", "o")

    r = tracker.run(step, name="p", outputs=["o"])
    tracker._objects.remove(r.outputs["o"].hash)
    tracker._index.drop_objects([(r.outputs["o"].hash, str(tracker._objects.root))])
    Path("o.txt").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = tracker.run(step, name="p", outputs=["o"])
    assert not again.cache_hit and calls.n == 2
    assert tracker.explain(again.run_id)["reason"] == "outputs_pruned"


def test_outputs_are_restored_from_another_run_dir_sharing_the_database(make_tracker, calls) -> None:
    def step() -> Path:
        calls()
        return write("shared.txt", "s")

    a = make_tracker(run_dir="runs_a")
    b = make_tracker(run_dir="runs_b")
    r = a.run(step, name="sh", outputs=["o"])
    Path("shared.txt").unlink()
    hit = b.run(step, name="sh", outputs=["o"])
    assert hit.cache_hit and Path("shared.txt").read_text() == "s" and calls.n == 1
    assert b._store_for(r.outputs["o"].hash).root == a._objects.root
    a._objects.remove(r.outputs["o"].hash)  # deleted by hand: still listed in the index
    Path("shared.txt").unlink()
    assert b._store_for(r.outputs["o"].hash).root == b._objects.root
    with pytest.warns(consist.ConsistWarning, match="missing"):
        assert not b.run(step, name="sh", outputs=["o"]).cache_hit


def test_miss_explanations_name_the_reason(tracker: Tracker) -> None:
    def step(k: int) -> Path:
        return write("o.txt", str(k))

    first = tracker.run(step, name="e", config={"k": 1}, outputs=["o"])
    assert first.run.cache_miss_explanation["reason"] == "no_prior_run"
    changed = tracker.run(step, name="e", config={"k": 2}, outputs=["o"])
    expl = changed.run.cache_miss_explanation
    assert expl["reason"] == "config_changed" and expl["nearest_run"] == first.run_id
    forced = tracker.run(step, name="e", config={"k": 2}, outputs=["o"], cache_mode="overwrite")
    assert forced.run.cache_miss_explanation["reason"] == "cache_mode_overwrite"
    other_model = tracker.run(step, name="e2", config={"k": 2}, outputs=["o"])
    assert other_model.run.cache_miss_explanation["reason"] == "no_prior_run"


@pytest.mark.parametrize(
    ("name", "is_dir", "driver"),
    [
        ("a.csv", False, "csv"), ("a.TSV", False, "csv"), ("a.parquet", False, "parquet"), ("a.pq", False, "parquet"),
        ("a.json", False, "json"), ("a.jsonl", False, "jsonl"), ("a.ndjson", False, "jsonl"), ("a.h5", False, "h5"),
        ("a.hdf5", False, "h5"), ("a.zarr", True, "zarr"), ("a.nc", False, "netcdf"), ("a.omx", False, "openmatrix"),
        ("a.txt", False, "text"), ("a.log", False, "text"), ("a.yaml", False, "yaml"), ("a.yml", False, "yaml"),
        ("model.sif", False, "sif"), ("a.bin", False, None), ("tables", True, "dir"), ("x.csv", True, "dir"),
    ],
)  # fmt: skip
def test_driver_from_extension(name: str, is_dir: bool, driver: str | None) -> None:
    assert driver_for(Path(name), is_dir) == driver


def test_each_file_of_a_directory_output_is_recorded_as_a_member(make_tracker, tmp_path: Path) -> None:
    t = make_tracker()

    def step() -> None:
        write("tables/trips.csv", "t\n")
        write("tables/sub/mode_share.parquet", b"PAR1")

    (tmp_path / "a").mkdir()
    os.chdir(tmp_path / "a")
    r = t.run(step, name="m", outputs={"tables": "tables"})
    d = links(t, r.run_id, "output")["tables"]
    members = {m["link_key"]: m for m in t._index.links_of(r.run_id, "member")}
    assert sorted(members) == ["sub/mode_share.parquet", "trips.csv"]
    trips, share = members["trips.csv"], members["sub/mode_share.parquet"]
    assert trips["uri"] == d["uri"] + "/trips.csv" and trips["location"] == d["location"].rstrip("/") + "/trips.csv"
    assert (trips["hash"], trips["size"], trips["kind"], trips["driver"]) == (sha(b"t\n"), 2, "file", "csv")
    assert (share["driver"], share["run_id"], share["created_at"]) == ("parquet", r.run_id, d["created_at"])
    assert json.loads(trips["meta"]) == {"member_of": d["id"]} and trips["key"] == "trips.csv"
    (tmp_path / "b").mkdir()
    os.chdir(tmp_path / "b")
    hit = t.run(step, name="m", outputs={"tables": "tables"})  # declared relative to this checkout
    assert hit.cache_hit
    copies = {m["link_key"]: m for m in t._index.links_of(hit.run_id, "member")}
    assert copies["trips.csv"]["uri"] == str((tmp_path / "b" / "tables" / "trips.csv").resolve())
    assert copies["trips.csv"]["hash"] == trips["hash"] and copies["trips.csv"]["run_id"] == r.run_id


def test_members_of_an_output_outside_every_root_keep_absolute_locations(make_tracker, tmp_path: Path) -> None:
    t = make_tracker(run_dir="p/runs", project_root=tmp_path / "p", allow_external_paths=True)
    out = tmp_path / "outside"

    def step() -> None:
        write(out / "a.csv", "a")

    r = t.run(step, name="ext", outputs={"out": str(out)})
    member = t._index.links_of(r.run_id, "member")[0]
    assert member["location"] == str(out.resolve() / "a.csv")


def test_members_of_a_directory_output_at_a_root_have_valid_locations(make_tracker, tmp_path: Path) -> None:
    (tmp_path / "scratch").mkdir()
    t = make_tracker(mounts={"scratch": tmp_path / "scratch"})

    def step() -> None:
        write(tmp_path / "scratch" / "a.csv", "a")

    r = t.run(step, name="root_out", outputs={"out": str(tmp_path / "scratch")})
    assert links(t, r.run_id, "output")["out"]["location"] == "scratch://"
    member = t._index.links_of(r.run_id, "member")[0]
    assert member["location"] == "scratch://a.csv"
    assert t.roots.resolve(member["location"]) == tmp_path / "scratch" / "a.csv"


# --------------------------------------------------------------------- _store_output in detail


def test_a_missing_output_message_reads_in_full(tracker: Tracker) -> None:
    with pytest.raises(consist.OutputError) as err:
        tracker.run(lambda: None, name="liar", outputs={"o": "nowhere.csv"})
    assert str(err.value) == (
        f"Output 'o' does not exist at {Path('nowhere.csv').absolute()}. Likely cause: the step did not write it, "
        "or wrote it somewhere else. Fix: make the function write the file before returning its path."
    )


def test_outputs_outside_every_root_need_permission(tracker: Tracker, tmp_path: Path) -> None:
    outside = write(tmp_path.parent / f"{tmp_path.name}-outside.csv", "x")
    try:
        tracker.begin_run("ext", "m")
        active = tracker._stack[-1]
        row = tracker._store_output(active, "k", outside, allow_external=True)
        assert row["location"] == str(outside.resolve()) and row["created_at"] <= time.time()
        with pytest.raises(consist.OutputError, match=f"Output 'other' at {outside.resolve()} lies outside"):
            tracker._store_output(active, "other", outside)
        tracker.end_run()
    finally:
        outside.unlink()


def test_stored_outputs_are_memoised_as_content_hashes(make_tracker) -> None:
    t = make_tracker(hashing_strategy="fast")
    old = aged(write("old_table.csv", "kept from before"))
    r = t.run(lambda: old, name="reuse_old", outputs=["t"])
    st = old.stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    assert t._index.memo_get(key, "sha256/file-v1") == sha(b"kept from before") == r.outputs["t"].hash
    assert t._index.memo_get(key, "sha256/consist-fast-v1") is None


def test_a_link_output_is_stored_as_a_link_and_leased_to_its_run(tracker: Tracker) -> None:
    write("target.csv", "t")
    os.symlink("target.csv", "link.csv")
    tracker.begin_run("linker", "m")
    art = tracker.log_output("link.csv", key="l")
    digest = sha(b"consist-link-v1\x00target.csv")
    assert (art.kind, art.hash, art.size) == ("link", digest, len("target.csv"))
    lease = tracker._index.query_one("SELECT hash, kind, run_id FROM lease WHERE hash = ?", (digest,))
    assert lease == {"hash": digest, "kind": "link", "run_id": "linker"}
    assert tracker._index.query_one("SELECT store, size FROM object WHERE hash = ?", (digest,)) == {
        "store": str(tracker._objects.root),
        "size": len("target.csv"),
    }
    tracker.end_run()
    assert tracker._index.query("SELECT * FROM lease") == []  # the run's record references it now


def test_readonly_runs_describe_links_and_linked_folders_without_storing(tracker: Tracker) -> None:
    def step() -> dict[str, Path]:
        write("ro/d/real.csv", "r")
        if not Path("ro/d/alias.csv").is_symlink():
            os.symlink("real.csv", "ro/d/alias.csv")
            os.symlink("ro/d/real.csv", "ro/top-link.csv")
        return {"d": Path("ro/d"), "l": Path("ro/top-link.csv")}

    ro = tracker.run(step, name="ro_links", outputs=["d", "l"], cache_mode="readonly")
    assert tracker._index.query("SELECT * FROM object") == [] and not (tracker._objects.root / "sha256").exists()
    stored = tracker.run(step, name="ro_links", outputs=["d", "l"], cache_mode="overwrite")
    assert ro.outputs["d"].hash == stored.outputs["d"].hash  # the link inside is hashed as a link either way
    assert ro.outputs["l"].hash == stored.outputs["l"].hash == sha(b"consist-link-v1\x00ro/d/real.csv")


def test_restore_paths_follow_the_recorded_location(tracker: Tracker, tmp_path: Path) -> None:
    from consist.locations import UnresolvableLocation

    row = {"location": "run_dir://tables/t.csv", "uri": "/another/checkout/runs/tables/t.csv"}
    assert tracker._restore_path(row) == tracker.run_dir / "tables" / "t.csv"
    inside = tracker.run_dir / "legacy.csv"
    assert tracker._restore_path({"location": None, "uri": str(inside)}) == inside
    with pytest.raises(UnresolvableLocation):
        tracker._restore_path({"uri": "/another/checkout/runs/tables/t.csv"})
    assert driver_for(Path("plain.csv")) == "csv"  # a file unless told otherwise


def test_a_file_in_place_with_its_recorded_mode_is_not_rewritten(tracker: Tracker) -> None:
    def step() -> Path:
        p = write("private.csv", "secret")
        os.chmod(p, 0o600)
        return p

    tracker.run(step, name="priv", outputs=["p"])
    inode = Path("private.csv").stat().st_ino
    hit = tracker.run(step, name="priv", outputs=["p"])
    assert hit.cache_hit and Path("private.csv").stat().st_ino == inode
    assert stat.S_IMODE(Path("private.csv").stat().st_mode) == 0o600


def test_explanations_name_config_keys_and_unrecorded_outputs(tracker: Tracker) -> None:
    def step(k: int, j: int) -> None:
        consist.log_output(write("a.txt", "a"), key="a")

    tracker.run(step, name="ex", config={"k": 1, "j": 1})
    changed = tracker.run(step, name="ex", config={"k": 2, "j": 1})
    assert changed.run.cache_miss_explanation["details"]["config_keys_changed"] == ["k"]
    write("b.txt", "b")
    wants_more = tracker.run(step, name="ex", config={"k": 2, "j": 1}, outputs={"a": "a.txt", "b": "b.txt"})
    assert not wants_more.cache_hit  # the producer recorded no output "b"
    assert wants_more.run.cache_miss_explanation["reason"] == "outputs_not_recorded"


def test_a_missing_config_file_is_named(tracker: Tracker) -> None:
    with pytest.raises(consist.InputNotFoundError, match="The input 'config' path does not exist"):
        tracker.run(lambda: None, name="c", config=Path("missing.yaml"))


def test_input_artifacts_record_when_and_where(tracker: Tracker) -> None:
    write("data/in.csv", "i")
    before = time.time()
    r = tracker.run(lambda src: None, name="inp", inputs={"src": "data/in.csv"})
    art = links(tracker, r.run_id, "input")["src"]
    assert before <= art["created_at"] <= time.time()
    assert art["location"] == "project://data/in.csv" and art["meta"] is None and art["run_id"] is None


def test_a_hit_updates_the_scenario_coupler(tracker: Tracker) -> None:
    def step() -> Path:
        return write("trips.csv", "t")

    with tracker.scenario("first") as sc:
        sc.run(step, name="trips_step", outputs=["trips"])
    with tracker.scenario("second") as sc:
        hit = sc.run(step, name="trips_step", outputs=["trips"])
        assert hit.cache_hit and "trips" in sc.coupler
        assert Path(sc.coupler.path("trips")) == Path("trips.csv").resolve()


# --------------------------------------------------------------------- what a run's record links
# The files of a directory output are members of the run that produced it and of
# every run that hit it; an input whose content an earlier run produced is linked
# to that run's artifact, unless inputs are hashed by size and time only.


def make_dir(root: str) -> Path:
    write(f"{root}/a.csv", "a")
    write(f"{root}/sub/b.csv", "bb")
    return Path(root)


def test_the_files_of_a_directory_output_are_members_of_its_run_and_of_each_hit(tracker: Tracker) -> None:
    def step() -> Path:
        return make_dir("out")

    first = tracker.run(step, name="dir_step", outputs=["d"])
    members = links(tracker, first.run_id, "member")
    assert sorted(members) == ["a.csv", "sub/b.csv"]
    d = first.outputs["d"]
    for key, m in members.items():
        assert m["direction"] == "member" and m["run_id"] == first.run_id
        assert m["uri"] == f"{d.uri}/{key}" and d.id in m["meta"]
    assert members["sub/b.csv"]["size"] == 2
    assert sorted(links(tracker, first.run_id, "output")) == ["d"]
    assert sorted(m["link_key"] for m in tracker._index.members_of(first.run_id, d.id)) == sorted(members)

    hit = tracker.run(step, name="dir_step", outputs=["d"])
    assert hit.cache_hit
    hit_members = links(tracker, hit.run_id, "member")
    # The hit links the producer's member artifacts; it records no new ones.
    assert {k: m["id"] for k, m in hit_members.items()} == {k: m["id"] for k, m in members.items()}
    assert len(tracker._index.query("SELECT id FROM artifact WHERE meta LIKE '%member_of%'")) == 2


def test_a_directory_output_restored_at_a_new_place_gets_member_rows_of_its_own(make_tracker) -> None:
    def step(dest: str) -> Path:
        return make_dir(dest)

    t = make_tracker()
    first = t.run(step, name="moved", config={"dest": "here"}, outputs=["d"])
    other = make_tracker("elsewhere")
    hit = other.run(step, name="moved", config={"dest": "here"}, outputs=["d"])
    assert hit.cache_hit
    produced = links(t, first.run_id, "member")
    restored = links(other, hit.run_id, "member")
    assert sorted(restored) == sorted(produced)
    for key in produced:
        assert restored[key]["hash"] == produced[key]["hash"]
        assert restored[key]["run_id"] == first.run_id  # the same producer, another place


def test_an_input_an_earlier_run_produced_is_linked_to_that_runs_artifact(tracker: Tracker) -> None:
    def make() -> Path:
        return write("made.csv", "x,y\n")

    made = tracker.run(make, name="make", outputs=["made"])
    use = tracker.run(lambda p: None, name="use", inputs={"p": "made.csv"})
    [link] = links(tracker, use.run_id, "input").values()
    assert link["id"] == made.outputs["made"].id and link["run_id"] == made.run_id
    assert link["link_key"] == "p"


def test_an_input_no_run_produced_gets_an_artifact_of_its_own(tracker: Tracker) -> None:
    write("raw.csv", "raw")
    r = tracker.run(lambda p: None, name="read", inputs={"p": "raw.csv"})
    [link] = links(tracker, r.run_id, "input").values()
    assert link["run_id"] is None and link["key"] == "p" and link["kind"] == "file"
    assert link["uri"] == str(Path("raw.csv").resolve()) and link["size"] == 3
    again = tracker.run(lambda p: None, name="read2", inputs={"p": "raw.csv"})
    assert links(tracker, again.run_id, "input")["p"]["id"] == link["id"]  # same place, same content


def test_fast_hashing_never_links_an_input_to_a_producer_by_size_and_time(make_tracker) -> None:
    t = make_tracker(hashing_strategy="fast")
    made = t.run(lambda: write("made.csv", "x,y\n"), name="make", outputs=["made"])
    use = t.run(lambda p: None, name="use", inputs={"p": "made.csv"})
    [link] = links(t, use.run_id, "input").values()
    assert link["id"] != made.outputs["made"].id and link["run_id"] is None


# --------------------------------------------------------------------- recording, called directly


def _plan_for(t: Tracker, inputs: object = None, name: str = "direct") -> object:
    return t._plan(fn=None, source=None, name=name, model=name, config={"k": 1}, inputs=inputs, year=None,
                   iteration=None, cache_mode="reuse", code_version="v")  # fmt: skip


def test_linking_members_records_new_member_artifacts_and_links_every_member(tracker: Tracker) -> None:
    tracker._index.claim_run_id("r", {"id": "r", "name": "r", "status": "completed"})
    known = {"id": "known", "key": "a.csv", "uri": "/d/a.csv", "hash": "sha256:a", "kind": "file", "run_id": "p"}
    tracker._index.add_artifact(known)
    fresh = {**known, "id": "fresh", "key": "b.csv", "uri": "/d/b.csv", "hash": "sha256:b", "_new": True}
    out = {"id": "dir", "_members": [dict(known), fresh]}
    tracker._index.atomic(lambda: tracker._link_members("r", out))
    got = links(tracker, "r", "member")
    assert {k: v["id"] for k, v in got.items()} == {"a.csv": "known", "b.csv": "fresh"}
    assert tracker._index.query_one("SELECT key FROM artifact WHERE id = 'fresh'") == {"key": "b.csv"}
    assert "_new" in fresh and out["_members"][1] is fresh  # the caller's rows are left as they were
    tracker._link_members("r", {"id": "plain"})  # no members: nothing to do
    assert len(links(tracker, "r", "member")) == 2


def test_linking_inputs_directly_links_given_artifacts_and_never_changes_them(tracker: Tracker) -> None:
    made = tracker.run(lambda: write("made.csv", "m"), name="make", outputs=["m"])
    write("raw.csv", "r")
    plan = _plan_for(tracker, {"given": made.outputs["m"], "raw": "raw.csv"})
    assert plan.input_artifacts["given"]["id"] == made.outputs["m"].id and "raw" not in plan.input_artifacts
    tracker._index.claim_run_id("use", {"id": "use", "name": "use", "status": "completed"})
    before = tracker._index.artifact(made.outputs["m"].id)
    tracker._index.atomic(lambda: tracker._link_inputs("use", plan))
    got = links(tracker, "use", "input")
    assert got["given"]["id"] == made.outputs["m"].id
    assert tracker._index.artifact(made.outputs["m"].id) == before  # the producer's record is left alone
    raw = got["raw"]
    assert raw["run_id"] is None and raw["uri"] == str(Path("raw.csv").resolve()) and raw["meta"] is None
    uri, digest = str(Path("raw.csv").resolve()), sha(b"r")
    assert raw["id"] == hash_canonical([uri, digest], "consist-input-artifact-v1").split(":")[1][:32]
    assert (raw["key"], raw["hash"], raw["size"], raw["kind"], raw["driver"], raw["location"]) == (
        "raw",
        digest,
        1,
        "file",
        "csv",
        "project://raw.csv",
    )
    assert time.time() - 60 < raw["created_at"] <= time.time()
    tracker._index.atomic(lambda: tracker._link_inputs("use", plan))  # again: the same links, no new rows
    assert {k: v["id"] for k, v in links(tracker, "use", "input").items()} == {k: v["id"] for k, v in got.items()}


def test_a_directory_input_no_run_produced_is_recorded_as_a_directory(tracker: Tracker) -> None:
    write("zones/a.csv", "a")
    plan = _plan_for(tracker, {"zones": "zones"})
    tracker._index.claim_run_id("use", {"id": "use", "name": "use", "status": "completed"})
    tracker._index.atomic(lambda: tracker._link_inputs("use", plan))
    zones = links(tracker, "use", "input")["zones"]
    assert (zones["kind"], zones["size"], zones["driver"], zones["key"]) == ("dir", None, "dir", "zones")


def test_linking_by_size_and_time_never_takes_anothers_output(make_tracker) -> None:
    t = make_tracker(hashing_strategy="fast")
    t.run(lambda: write("made.csv", "m"), name="make", outputs=["m"])
    plan = _plan_for(t, {"p": "made.csv"})
    t._index.claim_run_id("use", {"id": "use", "name": "use", "status": "completed"})
    t._index.atomic(lambda: t._link_inputs("use", plan))
    assert links(t, "use", "input")["p"]["run_id"] is None


def test_finishing_a_step_marks_its_scenario_and_cleans_its_output_rows(tracker: Tracker) -> None:
    with consist.scenario("sc", tracker) as sc:
        header = tracker._stack[-1]
        tracker.begin_run("step_ok", "m")
        ok = tracker._stack[-1]
        ok.outputs["o"] = {"id": "a", "key": "o", "uri": "/x", "hash": "sha256:x", "kind": "file",
                           "run_id": "step_ok", "_new": True, "_members": []}  # fmt: skip
        tracker._finish(tracker._stack.pop(), "completed")
        assert sc.failed_steps == [] and tracker.last_run.run_id == "step_ok"
        assert "_new" not in ok.outputs["o"] and "_members" not in ok.outputs["o"]
        tracker.begin_run("step_bad", "m2")
        tracker._finish(tracker._stack.pop(), "failed", "boom")
        assert sc.failed_steps == ["step_bad"] and tracker._index.run("step_bad")["error"] == "boom"
        tracker._finish(header, "failed", "header")  # the header itself is not one of its steps
        assert sc.failed_steps == ["step_bad"]
        tracker._stack.remove(header)
        tracker._stack.append(header)  # put back for the with block to close
        header.row["status"] = "running"
    assert tracker.last_run.run_id == "sc"


def test_a_hit_recorded_for_a_sweep_waits_in_its_batch(tracker: Tracker) -> None:
    made = tracker.run(lambda: write("o.csv", "o"), name="direct", config={"k": 1}, code_version="v", outputs=["o"])
    plan = _plan_for(tracker)
    tracker._deferred_hits = []
    try:
        hit = tracker._record_hit(plan, tracker._try_reuse(plan, None, ["o"]), "later", None, None)
        assert hit.cache_hit and hit.run_id == "later" and tracker._index.run("later") is None  # not yet recorded
        [(record, result, _announce)] = tracker._deferred_hits
        assert result is hit and callable(record)
        tracker._flush_hits()
        assert tracker._index.run("later")["cache_source"] == made.run_id
    finally:
        tracker._deferred_hits = None


def test_a_hit_restored_at_a_new_place_records_its_copy_as_the_producers(make_tracker) -> None:
    first = make_tracker()
    made = first.run(lambda: write("out/o.csv", "o"), name="direct", config={"k": 1}, code_version="v",
                     outputs={"o": "out/o.csv"})  # fmt: skip
    plan = _plan_for(first)
    found = first._try_reuse(plan, {"o": Path("elsewhere/o.csv")}, ["o"])
    hit = first._record_hit(plan, found, None, None, None)
    copy = links(first, hit.run_id, "output")["o"]
    assert copy["uri"] == str(Path("elsewhere/o.csv").resolve()) and copy["id"] != made.outputs["o"].id
    assert copy["run_id"] == made.run_id  # the same producer, another place
    assert hit.run_id in {r["id"] for r in first._index.query("SELECT id FROM run")}


def test_recording_a_hit_directly_gives_its_metadata_and_the_last_run(tracker: Tracker) -> None:
    made = tracker.run(lambda: write("o.csv", "o"), name="direct", config={"k": 1}, code_version="v", outputs=["o"])
    plan = _plan_for(tracker)
    found = tracker._try_reuse(plan, None, ["o"])
    assert not isinstance(found, str)
    hit = tracker._record_hit(plan, found, None, None, None, waited_for="w", meta={"stage": "s"})
    assert hit.cache_hit and hit.cache_source == made.run_id and hit.run_id.startswith("direct_")
    assert tracker.get_run(hit.run_id).meta == {"stage": "s", "waited_for": "w"}
    last = tracker.last_run
    assert last.run_id == hit.run_id and last.is_cached and last.config == {"k": 1}
    assert sorted(last.outputs) == ["o"] and last.cached_output("o").hash == made.outputs["o"].hash
    plain = tracker._record_hit(plan, tracker._try_reuse(plan, None, ["o"]), "named", None, None)
    assert plain.run_id == "named" and tracker.get_run("named").meta is None


def test_a_sweeps_hit_only_look_records_hits_and_nothing_else(tracker: Tracker) -> None:
    """``_run_step(hit_only=True)``: what a sweep's all-hit pass uses before it executes anything."""
    calls = []

    def step(k: int) -> Path:
        calls.append(k)
        return write(f"o{k}.csv", str(k))

    common = dict(name="swept", run_id=None, model=None, inputs=None, outputs=["o"], year=None, iteration=None,
                  code_version="v", parent_run_id=None)  # fmt: skip
    assert tracker._run_step(step, config={"k": 1}, cache_mode="reuse", tags=None, hit_only=True, **common) is None
    assert calls == [] and tracker._index.query("SELECT id FROM run") == []  # a miss: nothing ran, nothing recorded
    made = tracker.run(step, name="swept", config={"k": 1}, outputs=["o"], code_version="v")
    Path("o1.csv").unlink()
    ids = {"run_id": "row1", "parent_run_id": "batch"}
    hit = tracker._run_step(step, config={"k": 1}, cache_mode="reuse", tags=["t"], hit_only=True,
                            meta={"stage": "sweep"}, **{**common, **ids})  # fmt: skip
    assert hit is not None and hit.cache_hit is True and hit.cache_source == made.run_id and hit.run_id == "row1"
    assert Path("o1.csv").read_text() == "1" and calls == [1]
    row = tracker._index.run("row1")
    assert (row["parent_run_id"], json.loads(row["tags"]), json.loads(row["meta"])) == (
        "batch",
        ["t"],
        {"stage": "sweep"},
    )
    elsewhere = tracker._run_step(step, config={"k": 1}, cache_mode="reuse", tags=None, hit_only=True,
                                  **{**common, "outputs": {"o": "moved/o.csv"}})  # fmt: skip
    assert elsewhere is not None and Path("moved/o.csv").read_text() == "1"
    more = tracker._run_step(step, config={"k": 1}, cache_mode="reuse", tags=None, hit_only=True,
                             **{**common, "outputs": ["o", "p"]})  # fmt: skip
    assert more is None  # the earlier run lacks an output asked for
    forced = tracker._run_step(step, config={"k": 1}, cache_mode="overwrite", tags=None, hit_only=True, **common)
    assert forced is None and calls == [1]


def test_hits_and_misses_log_their_decision(tracker: Tracker, caplog: pytest.LogCaptureFixture) -> None:
    import ast
    import logging

    caplog.set_level(logging.DEBUG, logger="consist")
    miss = tracker.run(lambda: write("l.csv", "l"), name="logged", outputs=["o"], code_version="v")
    hit = tracker.run(lambda: write("l.csv", "l"), name="logged", outputs=["o"], code_version="v")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("logged:")]
    assert lines[2] == f"logged: cache hit, reusing the outputs of {miss.run_id}"
    head = f"logged: signature {hit.run.signature}, components "
    assert lines[3].startswith(head) and ast.literal_eval(lines[3].removeprefix(head)) == hit.run.identity


def test_run_metadata_reaches_misses_and_hits_and_a_miss_is_plainly_not_a_hit(tracker: Tracker) -> None:
    miss = tracker.run(lambda: write("m.csv", "m"), name="meta", outputs="o", code_version="v", meta={"a": 1})
    assert miss.cache_hit is False and set(miss.outputs) == {"o"}  # one key may be given as a string
    assert tracker._index.run(miss.run_id)["meta"] and json.loads(tracker._index.run(miss.run_id)["meta"])["a"] == 1
    hit = tracker.run(lambda: write("m.csv", "m"), name="meta", outputs="o", code_version="v", meta={"a": 2})
    assert hit.cache_hit is True and json.loads(tracker._index.run(hit.run_id)["meta"]) == {"a": 2}


def test_step_names_are_checked_as_names_and_nameless_callables_are_steps(tracker: Tracker) -> None:
    import functools

    with pytest.raises(consist.InvalidNameError, match=r"^name '\.\./x' is not allowed"):
        tracker.run(lambda: None, name="../x")
    r = tracker.run(functools.partial(lambda k: None, 1), code_version="v")
    assert r.run.model == "step" and r.run_id.startswith("step_")


# --------------------------------------------------------------------- hydrating, eager checks, gone inputs


def _damage(t: Tracker, digest: str, text: str = "evil") -> None:
    obj = t._objects.path_of(digest)
    obj.chmod(0o644)
    obj.write_text(text)


def test_hydrating_puts_outputs_back_where_they_belong_or_under_a_target(tracker: Tracker) -> None:
    made = tracker.run(lambda: {"t": write("out/t.csv", "t"), "d": write("out/d/a.txt", "a").parent},
                       name="h", outputs=["t", "d"])  # fmt: skip
    Path("out/t.csv").unlink()
    got = tracker.hydrate_run_outputs(made.run_id, keys=["t"])
    assert got == {"t": Path("out/t.csv").resolve()} and got["t"].read_text() == "t"
    assert tracker._index.query("SELECT * FROM lease") == []  # the restore's lease ended
    into = tracker.hydrate_run_outputs(made.run_id, target_root="restart")
    assert into == {"t": Path("restart/t.csv").absolute(), "d": Path("restart/d").absolute()}
    assert (into["d"] / "a.txt").read_text() == "a" and into["t"].read_text() == "t"
    again = tracker.hydrate_run_outputs(made.run_id, target_root="restart")  # in place: left as it is
    assert again == into
    with pytest.raises(consist.OutputError, match=r"recorded no output 'x'\. Likely cause: its outputs are 'd', 't'"):
        tracker.hydrate_run_outputs(made.run_id, keys=["x"])
    with pytest.raises(consist.RunNotFoundError, match="No run with id 'nope'"):
        tracker.hydrate_run_outputs("nope")


def test_hydrating_damaged_bytes_publishes_nothing(tracker: Tracker) -> None:
    made = tracker.run(lambda: write("o.csv", "good"), name="h", outputs=["o"])
    _damage(tracker, made.outputs["o"].hash)
    with pytest.raises(consist.IntegrityError):
        tracker.hydrate_run_outputs(made.run_id, target_root="t")
    assert not Path("t/o.csv").exists() and tracker._index.query("SELECT * FROM lease") == []


@pytest.mark.parametrize(
    ("dest", "within", "match"),
    [
        ("runs/.consist/objects/x", None, "consist's own files"),
        ("runs", None, "consist's own files"),
        ("runs/sub/x", "elsewhere", "outside /.*/elsewhere"),
        ("/", None, "consist's own files"),
    ],
)
def test_a_destination_in_consists_files_or_outside_is_refused(
    tracker: Tracker, dest: str, within: str | None, match: str
) -> None:
    from consist.locations import UnresolvableLocation

    with pytest.raises(UnresolvableLocation, match=match):
        tracker._check_destination(Path(dest).absolute(), within=Path(within).absolute() if within else None)
    tracker._check_destination(Path("data/ok.csv").absolute())  # an ordinary place in the project
    tracker._check_destination(Path("t/ok.csv").absolute(), within=Path("t").absolute())


def test_a_destination_reached_through_a_link_out_of_the_roots_is_refused(tracker: Tracker, tmp_path: Path) -> None:
    from consist.locations import UnresolvableLocation

    outside = tmp_path.parent / f"{tmp_path.name}-out"
    outside.mkdir()
    Path("hop").symlink_to(outside)
    with pytest.raises(UnresolvableLocation, match="symbolic link"):
        tracker._check_destination(Path("hop/x.csv").absolute())
    Path("t").mkdir()
    Path("t/hop").symlink_to(outside)
    with pytest.raises(UnresolvableLocation, match="symbolic link"):
        tracker._check_destination(Path("t/hop/x.csv").absolute(), within=Path("t").absolute())


def test_eager_validation_reads_every_stored_object_of_files_and_folders(tracker: Tracker) -> None:
    made = tracker.run(lambda: {"f": write("f.csv", "f"), "d": write("d/a.txt", "a").parent}, name="e",
                       outputs=["f", "d"])  # fmt: skip
    tracker._verify_output(made.run_id, tracker._index.outputs_of(made.run_id)[0])
    rows = {r["link_key"]: r for r in tracker._index.outputs_of(made.run_id)}
    for row in rows.values():
        tracker._verify_output(made.run_id, row)  # intact: no error
    member = tracker._index.members_of(made.run_id, rows["d"]["id"])[0]
    _damage(tracker, member["hash"])
    with pytest.raises(consist.IntegrityError):
        tracker._verify_output(made.run_id, rows["d"])
    _damage(tracker, rows["f"]["hash"], "x")  # the same size, other bytes
    with pytest.raises(consist.IntegrityError):
        tracker._verify_output(made.run_id, rows["f"])


def test_gone_inputs_are_put_back_once_in_their_own_folder(tracker: Tracker) -> None:
    made = tracker.run(lambda: write("g.csv", "gone"), name="g", outputs=["o"])
    Path("g.csv").unlink()
    plan = _plan_for(tracker, {"src": made.outputs["o"]})
    [(_key, path, digest)] = plan.inputs
    assert path == tracker.run_dir / ".consist" / "inputs" / digest.split(":")[1][:32] / "g.csv"
    assert plan.missing_inputs["src"]["id"] == made.outputs["o"].id
    tracker._materialize_inputs(plan)
    assert path.read_text() == "gone" and tracker._index.query("SELECT * FROM lease") == []
    before = path.stat().st_mtime_ns
    tracker._materialize_inputs(plan)  # already there with the right bytes: left alone
    assert path.stat().st_mtime_ns == before
    tracker._put_back([])  # nothing to put back: nothing happens


# --------------------------------------------------------------------- a run's final record


def test_a_final_record_writes_its_status_over_an_interrupted_mark_and_keeps_the_rest(make_tracker) -> None:
    """The final record writes only what changed since the run was opened, and always its status,
    end and error: a mark written meanwhile by another process (a heartbeat that seemed to stop)
    is replaced, and every other column keeps what the opening recorded."""
    t = make_tracker(code_version="v1")
    other = make_tracker(code_version="v1")

    def step() -> Path:
        me = t._stack[-1].id
        other._index.execute(
            "UPDATE run SET status = 'interrupted', error = 'no heartbeat', ended_at = 1.0 WHERE id = ?", (me,)
        )
        return write("out.txt", "x")

    r = t.run(step, name="s", config={"a": 1}, outputs=["o"], tags=["t1"], description="d")
    row = index_row(t, r.run_id)
    opened = {k: v for k, v in r._run_row.items() if not k.startswith("_")}
    assert row["status"] == "completed" and row["error"] is None and row["ended_at"] == opened["ended_at"] > 1.0
    assert {k: row[k] for k in opened} == opened  # every column as the tracker holds it
    assert json.loads(row["meta"])["description"] == "d" and json.loads(row["tags"]) == ["t1"]
    assert [x.id for x in t.find_runs(tags=["t1"])] == [r.run_id]


def test_a_meta_changed_before_the_final_record_is_written(make_tracker) -> None:
    t = make_tracker(code_version="v1")

    def step() -> Path:
        t._stack[-1].row["meta"] = dumps({"changed": "at the end"})  # as a container run does
        return write("out.txt", "x")

    r = t.run(step, name="s", outputs=["o"])
    assert json.loads(index_row(t, r.run_id)["meta"]) == {"changed": "at the end"}
