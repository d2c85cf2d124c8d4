"""Multi-step scenarios: header and steps, coupler, trace, sweeps and years, hooks."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import consist
from consist import Tracker
from consist.integrations.containers import run_container
from engines import image, need


def write(path: str, text: str) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def prep(raw: Path, factor: int = 1) -> Path:
    rows = raw.read_text().splitlines()
    return write("work/prepped.csv", "\n".join([rows[0], *[str(int(r) * factor) for r in rows[1:]]]) + "\n")


def test_steps_are_children_of_a_header(tracker: Tracker) -> None:
    write("raw.csv", "a\n1\n2\n")
    with tracker.scenario("base", config={"region": "bay"}, tags=["sweep"]) as sc:
        step = sc.run(prep, inputs={"raw": "raw.csv"}, outputs=["prepped"])
    assert sc.run_id == "base" and step.run.parent_run_id == "base"
    header = tracker.get_run("base")
    assert header.model == "scenario" and header.status == "completed" and header.tags == ["sweep"]
    assert header.config == {"region": "bay"}
    assert [r.id for r in tracker.find_runs(parent_id="base")] == [step.run_id]


def test_failing_step_fails_step_and_header_and_propagates(tracker: Tracker) -> None:
    with pytest.raises(ZeroDivisionError):
        with consist.scenario("broken", tracker) as sc:
            sc.run(lambda: 1 / 0, name="divide")
    assert tracker.get_run("broken").status == "failed"
    assert tracker.find_runs(model="divide")[0].status == "failed"
    with consist.scenario("caught", tracker) as sc:  # a failure the block handles still marks the header
        with pytest.raises(ValueError):
            sc.run(lambda: (_ for _ in ()).throw(ValueError("x")), name="bad")
    caught = tracker.get_run("caught")
    assert caught.status == "failed" and "bad_" in caught.error


def test_coupler_api_and_automatic_updates(tracker: Tracker) -> None:
    write("raw.csv", "a\n1\n")
    with consist.scenario("c", tracker) as sc:
        assert "prepped" not in sc.coupler and sc.coupler.get("prepped") is None
        with pytest.raises(consist.CouplerKeyError, match=r"'prepped'.*available: none yet"):
            sc.coupler.require("prepped")
        r = sc.run(prep, inputs={"raw": "raw.csv"}, outputs=["prepped"])
        assert sc.coupler.keys() == ["prepped"] and "prepped" in sc.coupler
        art = sc.coupler.require("prepped")
        assert art.hash == r.outputs["prepped"].hash and sc.coupler.path("prepped") == art.path
        manual = sc.coupler.set("lookup", write("lookup.csv", "k\n1\n"))
        assert manual.hash.startswith("sha256:") and sc.coupler.path("lookup") == Path("lookup.csv").resolve()
        assert dict(sc.coupler.items()).keys() == {"prepped", "lookup"}
        with pytest.raises(consist.CouplerKeyError, match=r"available: lookup, prepped"):
            sc.coupler.require("nope")
        with pytest.raises(consist.ConsistError, match="no artifact"):
            sc.coupler.set("empty", None)

        # A string input naming a coupler key resolves to that artifact.
        seen = []
        sc.run(lambda prepped: seen.append(prepped.read_text()), name="consume", inputs={"prepped": "prepped"})
        assert seen == ["a\n1\n"]


def test_only_the_changed_step_reruns(tracker: Tracker, calls) -> None:
    write("raw.csv", "a\n1\n2\n")

    def analyse(prepped: Path, label: str) -> Path:
        calls()
        return write("work/report.txt", f"{label}: {prepped.read_text().count(chr(10))}")

    def scenario(label: str) -> list[bool]:
        with consist.scenario("pipe", tracker) as sc:
            a = sc.run(prep, inputs={"raw": "raw.csv"}, outputs=["prepped"])
            b = sc.run(analyse, inputs={"prepped": "prepped"}, config={"label": label}, outputs=["report"])
        return [a.cache_hit, b.cache_hit]

    assert scenario("v1") == [False, False]
    assert scenario("v1") == [True, True]
    assert scenario("v2") == [True, False]
    assert calls.n == 2
    headers = [r.id for r in tracker.find_runs(model="scenario")]
    assert sorted(headers) == ["pipe", "pipe~2", "pipe~3"]  # never overwritten


def test_trace_hit_semantics(tracker: Tracker) -> None:
    write("raw.csv", "a\n1\n2\n")
    work_done = []

    def pipeline() -> consist.TraceStep:
        with consist.scenario("t", tracker) as sc:
            sc.run(prep, inputs={"raw": "raw.csv"}, outputs=["prepped"])
            with sc.trace("analysis", config={"threshold": 1}, inputs=["prepped"]) as step:
                if not step.cache_hit:
                    work_done.append(1)
                    df = consist.load_df(sc.coupler.require("prepped"))
                    write("summary.csv", f"rows\n{len(df)}\n")
                    consist.log_output("summary.csv", key="summary")
                hit = step.cache_hit
            assert "summary" in sc.coupler
        return hit

    assert pipeline() is False
    Path("summary.csv").unlink()
    assert pipeline() is True and work_done == [1]
    assert Path("summary.csv").read_text() == "rows\n2\n"  # restored before the block ran
    runs = tracker.find_runs(model="analysis")
    assert [r.cache_hit for r in runs] == [True, False] and runs[0].cache_source == runs[1].id
    assert runs[0].parent_run_id == "t~2"


def test_trace_that_writes_new_content_becomes_a_producer(tracker: Tracker) -> None:
    for text in ("one", "two"):
        with consist.scenario("p", tracker) as sc:
            with sc.trace("writer") as step:
                consist.log_output(write("w.txt", text), key="w")
            last = step.run_id
    assert not tracker.get_run(last).cache_hit  # same identity, different output: it executed
    with pytest.raises(RuntimeError):
        with consist.scenario("p", tracker) as sc:
            with sc.trace("writer"):
                raise RuntimeError("trace failed")
    assert tracker.find_runs(model="writer")[0].status == "failed"


def test_sweep_and_years_are_separate_and_queryable(tracker: Tracker, calls) -> None:
    from sqlmodel import Session, select

    from consist import Run

    write("raw.csv", "a\n1\n")

    def simulate(factor: int, year: int = 0) -> Path:
        calls()
        return write(f"work/sim_{factor}_{year}.csv", f"{factor * year}\n")

    for name, factor in (("baseline", 1), ("high_income", 2)):
        with consist.scenario(name, tracker, config={"factor": factor}) as sc:
            for year in (2020, 2030):
                sc.run(simulate, model="travel_model", config={"factor": factor}, year=year, iteration=1,
                       outputs=["trips"])  # fmt: skip
    assert calls.n == 4
    with Session(tracker.engine) as session:
        runs = session.exec(select(Run).where(Run.model == "travel_model")).all()
        assert len(runs) == 4 and {r.parent_run_id for r in runs} == {"baseline", "high_income"}
        y2030 = session.exec(select(Run).where(Run.model == "travel_model", Run.year == 2030)).all()
        assert len(y2030) == 2 and all(r.iteration == 1 for r in y2030)
    assert len(tracker.find_runs(model="travel_model", year=2020, parent_id="high_income")) == 1


def test_load_df_on_a_coupler_directory(tracker: Tracker) -> None:
    def tables() -> Path:
        d = Path("tables")
        d.mkdir(exist_ok=True)
        pd.DataFrame({"a": [1, 2]}).to_parquet(d / "p1.parquet")
        pd.DataFrame({"a": [3]}).to_parquet(d / "p2.parquet")
        return d

    with consist.scenario("dirs", tracker) as sc:
        sc.run(tables, outputs=["preprocessed_data"])
        assert sorted(consist.load_df(sc.coupler.require("preprocessed_data"))["a"]) == [1, 2, 3]


def test_hook_order_and_a_raising_hook(tracker: Tracker, caplog) -> None:
    events = []
    tracker.on_run_start(lambda run: events.append(("start", run.model)))
    tracker.on_run_complete(lambda run, outputs: events.append(("complete", run.model)))
    tracker.on_run_failed(lambda run, exc: events.append(("failed", run.model)))
    tracker.on_run_complete(lambda run, outputs: 1 / 0)
    with consist.scenario("h", tracker) as sc:
        sc.run(lambda: None, name="step")
    assert events == [("start", "scenario"), ("start", "step"), ("complete", "step"), ("complete", "scenario")]
    assert "ZeroDivisionError" in caplog.text and tracker.get_run("h").status == "completed"


def test_container_steps_cache_independently(tracker: Tracker) -> None:
    need("docker")
    write("raw_data/households.csv", "HH\nA\nB\n")
    write("configs/settings.txt", "v1\n")
    Path("counter").mkdir()

    def workflow() -> tuple[bool, bool]:
        with consist.use_tracker(tracker), consist.scenario("nested") as sc:
            pre = run_container(
                tracker, "preprocess", image("docker"),
                ["sh", "-c", "echo pre >> /counter/n; mkdir -p /out; tr A-Z a-z < /data/households.csv > /out/hh.csv"],
                {"./raw_data": "/data", "./preprocessed": "/out", "./counter": "/counter"},
                [Path("./raw_data")], ["./preprocessed"],
            )  # fmt: skip
            sc.coupler.set("preprocessed_data", pre.output)
            model = run_container(
                tracker, "model", image("docker"),
                ["sh", "-c", "echo model >> /counter/n; cat /configs/settings.txt /pre/hh.csv > /outputs/result.csv"],
                {"./configs": "/configs", "./preprocessed": "/pre", "./model_outputs": "/outputs",
                 "./counter": "/counter"},
                [Path("./configs"), "preprocessed_data"], ["./model_outputs"],
            )  # fmt: skip
            assert model.run_result.run.parent_run_id == sc.run_id
            assert "model_outputs" in sc.coupler  # updated automatically
            with sc.trace("analysis") as step:
                if not step.cache_hit:
                    assert len(consist.load_df(sc.coupler.require("preprocessed_data"))) == 2
        return pre.cache_hit, model.cache_hit

    def starts() -> list[str]:
        return Path("counter/n").read_text().split()

    assert workflow() == (False, False) and starts() == ["pre", "model"]
    assert workflow() == (True, True) and starts() == ["pre", "model"]  # no container started
    write("configs/settings.txt", "v2\n")
    assert workflow() == (True, False) and starts() == ["pre", "model", "model"]
    assert Path("model_outputs/result.csv").read_text().startswith("v2")
