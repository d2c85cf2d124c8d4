"""Guarantees of consist.inflight: identical runs started at once execute once, on the embedded store.

Two trackers on one database stand for two processes; threads run them at the same time.
"""

from __future__ import annotations

import ast
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import consist.store.index as index_mod
from consist import Tracker
from consist.store.columns import HOST


def _pair(tmp_path: Path) -> tuple[Tracker, Tracker]:
    db = tmp_path / "prov.duckdb"
    return (
        Tracker(tmp_path / "a", db_path=db, store_dir=tmp_path / "objects", code_version="v"),
        Tracker(tmp_path / "b", db_path=db, store_dir=tmp_path / "objects", code_version="v"),
    )


def _claims(t: Tracker) -> list[dict[str, Any]]:
    return t._index.query("SELECT * FROM claim")


def _sig(t: Tracker, fn: Any, config: Any = None) -> str:
    plan = t._plan(fn=fn, source=None, name="step", model="step", config=config, inputs=None, year=None,
                   iteration=None, cache_mode="reuse", code_version=None)  # fmt: skip
    return plan.signature


def test_a_run_started_while_an_identical_one_executes_waits_and_takes_its_outputs(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    started, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def step(out: str) -> Path:
        calls.append(out)
        started.set()
        assert release.wait(30)
        p = Path(out)
        p.write_text("once\n")
        return p

    out = str(tmp_path / "out.txt")
    results: dict[str, Any] = {}
    first = threading.Thread(target=lambda: results.update(a=a.run(step, name="step", config={"out": out},
                                                                   outputs=["o"])))  # fmt: skip
    first.start()
    assert started.wait(30)
    (claim,) = _claims(b)
    assert claim["host"] == HOST and claim["run_id"].startswith("step_")  # the claim passed to the run
    second = threading.Thread(target=lambda: results.update(b=b.run(step, name="step", config={"out": out},
                                                                    outputs=["o"])))  # fmt: skip
    second.start()
    time.sleep(0.5)
    assert second.is_alive()  # waiting, not executing
    release.set()
    first.join(30)
    second.join(30)
    assert calls == [out]
    assert not results["a"].cache_hit and results["a"].waited_for is None
    assert results["b"].cache_hit and results["b"].cache_source == results["a"].run_id
    assert results["b"].waited_for == results["a"].run_id
    assert results["b"].run.meta == {"waited_for": results["a"].run_id}
    assert _claims(a) == []  # released with the run's final status
    a.close()
    b.close()


def test_when_the_executing_run_fails_a_waiter_executes(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    started, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def step() -> None:
        calls.append(threading.current_thread().name)
        if threading.current_thread().name == "first":
            started.set()
            assert release.wait(30)
            raise RuntimeError("the model crashed")

    errors: list[BaseException] = []
    results: dict[str, Any] = {}

    def first_run() -> None:
        try:
            a.run(step, name="step")
        except RuntimeError as exc:
            errors.append(exc)

    t1 = threading.Thread(target=first_run, name="first")
    t1.start()
    assert started.wait(30)
    t2 = threading.Thread(target=lambda: results.update(b=b.run(step, name="step")), name="second")
    t2.start()
    time.sleep(0.3)
    assert t2.is_alive()
    release.set()
    t1.join(30)
    t2.join(30)
    assert [str(e) for e in errors] == ["the model crashed"]
    assert calls == ["first", "second"]
    assert not results["b"].cache_hit and results["b"].waited_for is not None
    assert _claims(a) == []
    a.close()
    b.close()


def test_a_claim_whose_process_ended_is_taken_over_at_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    a, _b = _pair(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()

    def step() -> None:
        return None

    sig = _sig(a, step)
    a._index.execute("INSERT INTO claim VALUES (?, ?, ?, ?, ?)", (sig, "ghost", HOST, dead.pid, time.time()))
    started = time.monotonic()
    r = a.run(step, name="step")
    assert time.monotonic() - started < 5
    assert not r.cache_hit and r.waited_for is None  # it never waited
    assert "ghost (on " in caplog.text and "stopped before finishing step; executing it here" in caplog.text
    assert _claims(a) == []


def test_a_claim_of_another_host_holds_until_its_heartbeat_is_older_than_the_expiry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_mod, "EXPIRY_S", 1.0)
    a, _b = _pair(tmp_path)

    def step() -> None:
        return None

    sig = _sig(a, step)
    beat = time.time()
    a._index.execute("INSERT INTO claim VALUES (?, ?, ?, ?, ?)", (sig, "far", "node-far", 1, beat))
    claimed, holder = a._index.try_claim(sig, "mine")
    assert not claimed and holder is not None and holder["run_id"] == "far"  # fresh: it holds
    r = a.run(step, name="step")
    assert time.time() - beat >= 1.0 and not r.cache_hit and r.waited_for == "far"


def test_a_claim_of_this_process_is_never_taken_as_dead(tmp_path: Path) -> None:
    a, _b = _pair(tmp_path)
    now = time.time()
    assert not a._index._gone({"host": HOST, "pid": __import__("os").getpid(), "beat_at": now - 10**6}, now)
    assert a._index._gone({"host": "elsewhere", "pid": 1, "beat_at": now - index_mod.EXPIRY_S - 1}, now)
    assert not a._index._gone({"host": "elsewhere", "pid": 1, "beat_at": now - index_mod.EXPIRY_S + 5}, now)


@pytest.mark.parametrize("mode", ["overwrite", "readonly"])
def test_overwrite_and_readonly_neither_wait_nor_claim(tmp_path: Path, mode: str) -> None:
    a, _b = _pair(tmp_path)

    def step() -> None:
        return None

    sig = _sig(a, step)
    a._index.execute("INSERT INTO claim VALUES (?, ?, ?, ?, ?)", (sig, "busy", "node-far", 1, time.time()))
    started = time.monotonic()
    r = a.run(step, name="step", cache_mode=mode)
    assert time.monotonic() - started < 5 and not r.cache_hit and r.waited_for is None
    assert [c["run_id"] for c in _claims(a)] == ["busy"]


def test_a_claim_is_released_when_opening_the_run_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, _b = _pair(tmp_path)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("explain failed")

    monkeypatch.setattr(a, "_explain", broken)
    with pytest.raises(RuntimeError, match="explain failed"):
        a.run(lambda: None, name="step")
    assert _claims(a) == []


def test_a_hit_found_while_waiting_leaves_no_claim(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)

    def step() -> None:
        return None

    assert not a.run(step, name="step").cache_hit
    sig = _sig(b, step)
    assert b._index.claim_of(sig) is None
    r = b.run(step, name="step")
    assert r.cache_hit and r.waited_for is None and _claims(b) == []


def test_heartbeats_refresh_the_claims_and_runs_of_this_process(tmp_path: Path) -> None:
    a, _b = _pair(tmp_path)
    ix = a._index
    ix.execute("INSERT INTO claim VALUES ('s', 'r1', ?, ?, 0)", (HOST, __import__("os").getpid()))
    ix.execute("INSERT INTO heartbeat VALUES ('r1', ?, ?, 0)", (HOST, __import__("os").getpid()))
    ix.execute("INSERT INTO claim VALUES ('t', 'r2', 'node-far', 7, 0)")
    ix._beating.add("r1")
    ix.beat()
    beats = {r["run_id"]: r["beat_at"] for r in ix.query("SELECT run_id, beat_at FROM claim")}
    assert beats["r1"] > time.time() - 60 and beats["r2"] == 0
    (hb,) = ix.query("SELECT beat_at FROM heartbeat")
    assert hb["beat_at"] > time.time() - 60


def _hold_and_wait(tmp_path: Path, step_out: Any = None, wait_out: Any = None, patch_waiter: Any = None) -> tuple:
    """Run ``a`` (blocked until released) and ``b`` (started while ``a`` executes); their results and log."""
    a, b = _pair(tmp_path)
    if patch_waiter is not None:
        patch_waiter(b)
    started, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def step(out: str) -> Path:
        calls.append(threading.current_thread().name)
        started.set()
        assert release.wait(30)
        p = Path(out)
        p.write_text("once\n")
        return p

    out = str(tmp_path / "made.txt")
    results: dict[str, Any] = {}
    t1 = threading.Thread(target=lambda: results.update(a=a.run(step, name="step", config={"out": out},
                                                                outputs=step_out or ["o"])), name="first")  # fmt: skip
    t1.start()
    assert started.wait(30)
    t2 = threading.Thread(target=lambda: results.update(b=b.run(step, name="step", config={"out": out},
                                                                outputs=wait_out or ["o"])), name="second")  # fmt: skip
    t2.start()
    time.sleep(0.6)
    release.set()
    t1.join(30)
    t2.join(30)
    return a, b, results, calls


def test_the_waiting_is_logged_once_naming_the_run_its_host_and_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import os

    caplog.set_level(logging.INFO, logger="consist")
    a, b, results, calls = _hold_and_wait(tmp_path)
    waiting = [r.getMessage() for r in caplog.records if "waiting for its outputs" in r.getMessage()]
    assert waiting == [f"consist: {results['a'].run_id} is executing on {HOST} (process {os.getpid()}); "
                       "waiting for its outputs"]  # fmt: skip
    assert calls == ["first"]
    a.close()
    b.close()


def test_a_taken_over_claim_is_logged_with_its_run_host_and_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a, _b = _pair(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()

    def step() -> None:
        return None

    a._index.execute("INSERT INTO claim VALUES (?, ?, ?, ?, ?)", (_sig(a, step), "ghost", HOST, dead.pid, time.time()))
    a.run(step, name="step")
    assert f"consist: ghost (on {HOST}, process {dead.pid}) stopped before finishing step; executing it here" in [
        r.getMessage() for r in caplog.records
    ]


def test_a_waiter_gets_the_outputs_at_its_own_destination(tmp_path: Path) -> None:
    mine = tmp_path / "b" / "mine.txt"
    a, b, results, calls = _hold_and_wait(tmp_path, wait_out={"o": str(mine)})
    assert calls == ["first"] and results["b"].cache_hit
    assert results["b"].output_path("o") == mine and mine.read_text() == "once\n"
    a.close()
    b.close()


def test_a_hit_found_right_after_the_claim_frees_releases_the_claim(tmp_path: Path) -> None:
    """The holder ends between the waiter's last look and its next claim: the claim is taken, the
    holder's outputs are found right away, and the claim is given back (nobody executes again)."""

    a, b, results, calls = _hold_and_wait(tmp_path, patch_waiter=_miss_until_claimed)
    assert calls == ["first"]
    assert results["b"].cache_hit and results["b"].waited_for == results["a"].run_id
    assert _claims(a) == []
    a.close()
    b.close()


def _miss_until_claimed(b: Tracker) -> None:
    """Every look of the waiter misses except the one right after it took the claim."""
    real_reuse, real_claim = b._try_reuse, b._index.try_claim
    state = {"claimed": False}

    def try_claim(sig: str, token: str) -> Any:
        claimed, holder = real_claim(sig, token)
        state["claimed"] = claimed
        return claimed, holder

    def try_reuse(*args: Any) -> Any:
        if state.pop("claimed", False):
            state["claimed"] = False
            return real_reuse(*args)
        return "no_match"

    b._index.try_claim = try_claim  # type: ignore[method-assign]
    b._try_reuse = try_reuse  # type: ignore[method-assign]


def test_a_hit_found_right_after_the_claim_frees_goes_to_the_waiters_destination(tmp_path: Path) -> None:
    mine = tmp_path / "b" / "mine.txt"
    a, b, results, calls = _hold_and_wait(tmp_path, wait_out={"o": str(mine)}, patch_waiter=_miss_until_claimed)
    assert calls == ["first"] and results["b"].cache_hit
    assert results["b"].output_path("o") == mine and mine.read_text() == "once\n"
    a.close()
    b.close()


def test_a_waiter_never_takes_a_run_that_lacks_an_output_it_declares(tmp_path: Path) -> None:
    """The executing run records fewer outputs than the waiter declares: the waiter executes itself."""
    a, b = _pair(tmp_path)
    started, release = threading.Event(), threading.Event()

    def one(out: str) -> Path:
        started.set()
        assert release.wait(30)
        return _write(Path(out), "one\n")

    def both(out: str) -> dict[str, Path]:
        return {"o": _write(Path(out), "one\n"), "p": _write(tmp_path / "p.txt", "p\n")}

    out = str(tmp_path / "made.txt")
    results: dict[str, Any] = {}
    t1 = threading.Thread(target=lambda: results.update(a=a.run(one, name="step", config={"out": out},
                                                                outputs=["o"])))  # fmt: skip
    t1.start()
    assert started.wait(30)
    t2 = threading.Thread(target=lambda: results.update(b=b.run(both, name="step", config={"out": out},
                                                                outputs=["o", "p"])))  # fmt: skip
    t2.start()
    time.sleep(0.5)
    release.set()
    t1.join(30)
    t2.join(30)
    assert not results["a"].cache_hit
    assert not results["b"].cache_hit and results["b"].waited_for == results["a"].run_id
    assert sorted(results["b"].outputs) == ["o", "p"]
    assert _claims(a) == []
    a.close()
    b.close()


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_miss_logs_its_reason_and_its_signature_with_the_components(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.DEBUG, logger="consist")
    a, _b = _pair(tmp_path)

    def step(k: int) -> None:
        return None

    r = a.run(step, name="logged", config={"k": 1})
    lines = [rec.getMessage() for rec in caplog.records if rec.getMessage().startswith("logged:")]
    assert lines[0] == "logged: executes (no_prior_run; changed: -; nearest earlier run: none)"
    head = f"logged: signature {r.run.signature}, components "
    assert lines[1].startswith(head)
    assert ast.literal_eval(lines[1].removeprefix(head)) == r.run.identity
    a.close()


def test_nothing_is_refreshed_after_misses_end(tmp_path: Path) -> None:
    """The claims of finished misses, taken under tokens, leave nothing for the heartbeat to refresh."""
    t = Tracker(tmp_path / "runs", project_root=tmp_path, code_version="v")
    for i in range(3):
        t.run(lambda i=i: _write(tmp_path / f"o{i}.txt", str(i)), name="s", config={"i": i}, outputs=["o"])
    with pytest.raises(RuntimeError):
        t.run(lambda: (_ for _ in ()).throw(RuntimeError("boom")), name="s", config={"i": 9}, outputs=["o"])
    assert t._index._beating == set() and t._index._claims == {} and t._index._running == set()
    assert t._index.query("SELECT * FROM claim") == [] and t._index.query("SELECT * FROM heartbeat") == []
    t.close()
