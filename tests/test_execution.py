"""tracker.run, consist.run, the manual lifecycle and cache modes."""

from __future__ import annotations

from pathlib import Path

import pytest

import consist
from consist import Tracker


def write(path: str, text: str) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def test_inputs_are_passed_as_paths_and_outputs_recorded(tracker: Tracker, calls) -> None:
    write("raw.csv", "x\n1\n2\n")

    def clean(raw: Path, scale: int) -> Path:
        calls()
        assert isinstance(raw, Path)
        rows = raw.read_text().splitlines()[1:]
        return write("clean.csv", "x\n" + "".join(f"{int(r) * scale}\n" for r in rows))

    r = tracker.run(clean, inputs={"raw": "raw.csv"}, config={"scale": 10}, outputs=["clean"])
    assert not r.cache_hit and r.cache_source is None
    art = r.outputs["clean"]
    assert art.key == "clean" and art.path == Path("clean.csv").resolve()
    assert art.hash.startswith("sha256:") and art.run_id == r.run_id
    hit = tracker.run(clean, inputs={"raw": "raw.csv"}, config={"scale": 10}, outputs=["clean"])
    assert hit.cache_hit and hit.cache_source == r.run_id and calls.n == 1
    assert hit.outputs["clean"].hash == art.hash


def test_dict_return_for_several_outputs(tracker: Tracker) -> None:
    def split() -> dict[str, Path]:
        return {"a": write("a.txt", "a"), "b": write("b.txt", "b")}

    r = tracker.run(split, outputs=["a", "b"])
    assert set(r.outputs) == {"a", "b"}
    with pytest.raises(consist.OutputError, match="declared outputs"):
        tracker.run(lambda: {"a": write("a.txt", "x")}, name="partial", outputs=["a", "b"])


def test_declared_output_paths(tracker: Tracker, calls) -> None:
    def step() -> None:
        calls()
        write("out/result.csv", "r\n1\n")

    tracker.run(step, outputs={"result": "out/result.csv"})
    Path("out/result.csv").unlink()
    r = tracker.run(step, outputs={"result": "out/result.csv"})
    assert r.cache_hit and Path("out/result.csv").read_text() == "r\n1\n" and calls.n == 1


def test_missing_output_fails_the_run(tracker: Tracker) -> None:
    with pytest.raises(consist.OutputError, match="does not exist"):
        tracker.run(lambda: Path("never.csv"), name="liar", outputs=["x"])
    runs = tracker.find_runs(model="liar")
    assert [r.status for r in runs] == ["failed"]


def test_list_inputs_are_hashed_not_bound(tracker: Tracker, calls) -> None:
    write("a.csv", "1")

    def step() -> None:
        calls()

    tracker.run(step, inputs=["a.csv"])
    assert tracker.run(step, inputs=["a.csv"]).cache_hit
    write("a.csv", "2")
    assert not tracker.run(step, inputs=["a.csv"]).cache_hit


def test_artifact_and_run_result_as_inputs(tracker: Tracker) -> None:
    first = tracker.run(lambda: write("x.txt", "x"), name="make", outputs=["x"])
    seen = []

    def use(x: Path) -> None:
        seen.append(x.read_text())

    tracker.run(use, inputs={"x": first.outputs["x"]})
    tracker.run(use, name="use2", inputs={"x": first})
    assert seen == ["x", "x"]


def test_module_level_run_and_use_tracker(tracker: Tracker) -> None:
    with pytest.raises(consist.RunStateError, match="use_tracker"):
        consist.run(lambda: None)
    with consist.use_tracker(tracker):
        r = consist.run(lambda: None, name="mod")
        assert consist.current_tracker() is tracker
    assert r.run.model == "mod"
    assert consist.current_tracker(required=False) is None


def test_log_output_inside_a_function(tracker: Tracker, calls) -> None:
    def step() -> None:
        calls()
        consist.log_output(write("side.txt", "s"), key="side")

    r = tracker.run(step)
    assert "side" in r.outputs
    Path("side.txt").unlink()
    assert tracker.run(step).cache_hit and Path("side.txt").read_text() == "s" and calls.n == 1


def test_failing_function_is_recorded_and_never_served(tracker: Tracker) -> None:
    state = {"fail": True}

    def flaky() -> Path:
        if state["fail"]:
            raise ValueError("boom")
        return write("f.txt", "ok")

    with pytest.raises(ValueError, match="boom"):
        tracker.run(flaky, outputs=["f"])
    failed = tracker.find_runs(model="flaky")[0]
    assert failed.status == "failed" and "boom" in failed.error
    state["fail"] = False
    r = tracker.run(flaky, outputs=["f"])
    assert not r.cache_hit


def test_failed_step_without_outputs_executes_again(tracker: Tracker, calls) -> None:
    """With nothing to restore, only the run's status can keep a failure from being served."""
    state = {"fail": True}

    def side_effect_only(k: int) -> None:
        calls()
        if state["fail"]:
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        tracker.run(side_effect_only, config={"k": 1})
    state["fail"] = False
    again = tracker.run(side_effect_only, config={"k": 1})
    assert not again.cache_hit and calls.n == 2
    assert tracker.run(side_effect_only, config={"k": 1}).cache_hit and calls.n == 2

    with pytest.raises(KeyError):
        with tracker.start_run("manual", "noout", config={"k": 1}):
            raise KeyError("missing")
    with tracker.start_run("manual", "noout", config={"k": 1}) as run:
        assert not run.cache_hit  # the failed block is no producer
    with tracker.start_run("manual", "noout", config={"k": 1}) as hit:
        assert hit.cache_hit and hit.cache_source == run.id


def test_manual_lifecycle(tracker: Tracker) -> None:
    write("in.csv", "1")
    run = tracker.begin_run("manual", "mymodel", config={"k": 1}, inputs=["in.csv"], tags=["t1"])
    assert run.status == "running" and not run.cache_hit
    tracker.log_artifact(write("o.txt", "o"), key="o")
    done = tracker.end_run()
    assert done.status == "completed"
    arts = tracker.get_artifacts_for_run("manual")
    assert set(arts.inputs) == {"in.csv"} and set(arts.outputs) == {"o"}

    Path("o.txt").unlink()
    again = tracker.begin_run("manual", "mymodel", config={"k": 1}, inputs=["in.csv"])
    assert again.cache_hit and again.cache_source == "manual" and again.id == "manual~2"
    assert Path("o.txt").read_text() == "o"  # restored before the block runs
    tracker.end_run()
    assert tracker.get_artifacts_for_run("manual~2").outputs["o"].run_id == "manual"

    with pytest.raises(consist.RunStateError):
        tracker.end_run()
    with pytest.raises(consist.RunStateError, match="no run is active"):
        tracker.log_artifact("o.txt")


def test_start_run_marks_failure(tracker: Tracker) -> None:
    with pytest.raises(KeyError):
        with tracker.start_run("ctx", "m") as run:
            assert run.id == "ctx"
            raise KeyError("missing")
    failed = tracker.get_run("ctx")
    assert failed.status == "failed" and "missing" in failed.error
    with tracker.start_run("ctx", "m") as run:
        consist.log_output(write("c.txt", "c"))
    assert tracker.get_run(run.id).status == "completed" and run.id == "ctx~2"


def test_overwrite_mode_always_executes_and_becomes_newest(tracker: Tracker, calls) -> None:
    def step() -> Path:
        calls()
        return write("o.txt", str(calls.n))

    first = tracker.run(step, outputs=["o"])
    second = tracker.run(step, outputs=["o"], cache_mode="overwrite")
    assert not second.cache_hit and calls.n == 2
    assert tracker.explain(second.run_id)["reason"] == "cache_mode_overwrite"
    third = tracker.run(step, outputs=["o"])
    assert third.cache_hit and third.cache_source == second.run_id != first.run_id
    assert Path("o.txt").read_text() == "2"


def test_readonly_reuses_but_persists_nothing(tracker: Tracker, calls) -> None:
    def step(v: int) -> Path:
        calls()
        return write("o.txt", str(v))

    tracker.run(step, config={"v": 1}, outputs=["o"])
    before = len(tracker.find_runs(limit=None))
    hit = tracker.run(step, config={"v": 1}, outputs=["o"], cache_mode="readonly")
    miss = tracker.run(step, config={"v": 2}, outputs=["o"], cache_mode="readonly")
    assert hit.cache_hit and not miss.cache_hit and calls.n == 2
    assert len(tracker.find_runs(limit=None)) == before
    assert tracker._index.query("SELECT count(*) AS n FROM run WHERE status = 'running'")[0]["n"] == 0
    assert not tracker.run(step, config={"v": 2}, outputs=["o"]).cache_hit  # nothing was cached


def test_unknown_cache_mode(tracker: Tracker) -> None:
    with pytest.raises(consist.ConsistError, match="cache_mode"):
        tracker.run(lambda: None, cache_mode="sometimes")


def test_hooks_fire_and_a_raising_hook_is_harmless(tracker: Tracker, caplog) -> None:
    events = []
    tracker.on_run_start(lambda run: events.append(("start", run.id)))
    tracker.on_run_complete(lambda run, outs: events.append(("done", run.id, sorted(outs))))
    tracker.on_run_failed(lambda run, exc: events.append(("failed", run.id, str(exc))))

    def bad_hook(run) -> None:
        raise RuntimeError("hook broke")

    tracker.on_run_start(bad_hook)
    r = tracker.run(lambda: write("h.txt", "h"), name="h", run_id="h1", outputs=["h"])
    assert r.run.status == "completed"
    with pytest.raises(ZeroDivisionError):
        tracker.run(lambda: 1 / 0, name="z", run_id="z1")
    assert events == [("start", "h1"), ("done", "h1", ["h"]), ("start", "z1"), ("failed", "z1", "division by zero")]
    assert "hook broke" in caplog.text
