"""Sweeps with map_runs: on a process pool, on Dask, as scenario steps; failures per row."""

from __future__ import annotations

import concurrent.futures as cf
import os
import uuid
from pathlib import Path

import pytest

import consist
import sweep_steps
from consist import Tracker
from engines import need
from scaleout import fresh_pg_database


class CountingPool(cf.ProcessPoolExecutor):
    """A real process pool that counts what is submitted to it."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.submitted = 0

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def,override]
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


def _executions(out: Path) -> list[str]:
    log = out / "executions.log"
    return log.read_text().split("\n")[:-1] if log.exists() else []


def test_a_sweep_on_a_process_pool_reports_failed_rows_and_a_second_sweep_submits_only_those(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CONSIST_PROGRESS", "1")
    monkeypatch.setenv("CONSIST_PROGRESS_DELAY", "0")
    out = tmp_path / "out"
    rows = [{"x": x, "out_dir": str(out)} for x in range(20)]
    with Tracker(tmp_path / "rd", code_version="v1") as t, CountingPool(2) as pool:
        first = t.map_runs(sweep_steps.square, rows, executor=pool, outputs=["square"], name_template="sq_{x}")
        assert pool.submitted >= 1 and first.submitted == 20
        assert first.failure_count == 1 and first.success_count == 19 and first.cached_count == 0
        (failed,) = first.failed
        assert failed.index == 13 and failed.row == rows[13] and "thirteen is refused" in failed.error
        assert "ValueError" in failed.traceback
        assert first.retry_rows() == [rows[13]]
        # Results come back in row order, each with its own output and run id.
        for x, result in enumerate(first.results):
            if x == 13:
                assert result is None
                continue
            assert result is not None and result.run_id == f"sq_{x}" and not result.cache_hit
            assert result.output_path("square").read_text() == f"{x * x}\n"
        # The workers were other processes.
        pids = {line.split()[1] for line in _executions(out)}
        assert str(os.getpid()) not in pids
        assert sorted(int(line.split()[0]) for line in _executions(out)) == [x for x in range(20) if x != 13]

        pool.submitted = 0
        second = t.map_runs(sweep_steps.square, rows, executor=pool, outputs=["square"])
        assert second.submitted == 1 and second.cached_count == 19 and second.failure_count == 1
        assert pool.submitted == 1
        assert [r.cache_source for r in second.results if r is not None] == [
            r.run_id for r in first.results if r is not None
        ]
        runs = {r.id: r for r in t.find_runs(model="square", limit=None)}
        assert {"sq_0", "sq_19"} <= set(runs) and runs["sq_0"].status == "completed"
    err = capfd.readouterr().err
    assert "19 executed, 0 cached, 1 failed" in err and "0 executed, 19 cached, 1 failed" in err


def test_a_fully_cached_sweep_submits_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    rows = [{"x": x, "out_dir": str(out)} for x in (1, 2, 3)]
    with Tracker(tmp_path / "rd", code_version="v1") as t:
        t.map_runs(sweep_steps.square, rows, outputs=["square"])  # in this process
        for p in out.glob("square_*.txt"):
            p.unlink()
        with CountingPool(2) as pool:
            batch = t.map_runs(sweep_steps.square, rows, executor=pool, outputs=["square"])
        assert pool.submitted == 0 and batch.submitted == 0 and batch.cached_count == 3
        assert (out / "square_2.txt").read_text() == "4\n"  # restored by the hit
        assert len(_executions(out)) == 3


def test_map_runs_takes_the_function_by_name_and_the_config_from_the_rows(tmp_path: Path) -> None:
    out = tmp_path / "out"
    rows = [{"x": x, "label": f"row{x}"} for x in (4, 5)]
    with Tracker(tmp_path / "rd", code_version="v1") as t, CountingPool(2) as pool:
        batch = t.map_runs(
            "sweep_steps:square", rows, executor=pool, outputs=["square"],
            config_from=lambda row: {"x": row["x"], "out_dir": str(out)}, year_from="x", tags=["sweep"],
        )  # fmt: skip
        batch.raise_on_failure()
        assert [r.run.year for r in batch.results if r is not None] == [4, 5]
        assert sorted(r.id for r in t.find_runs(tags=["sweep"])) == sorted(batch.child_run_ids)  # type: ignore[arg-type]


def test_scenario_map_runs_makes_rows_steps_of_the_scenario_and_a_failure_fails_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    rows = [{"x": x, "out_dir": str(out)} for x in (12, 13)]
    with Tracker(tmp_path / "rd", code_version="v1") as t:
        with consist.scenario("sweep_scenario", t) as sc:
            batch = sc.map_runs(sweep_steps.square, rows, outputs=["square"])
        assert batch.failure_count == 1
        header = t.get_run("sweep_scenario")
        assert header is not None and header.status == "failed" and "row 1" in (header.error or "")
        child = batch.results[0]
        assert child is not None and child.run.parent_run_id == "sweep_scenario"


def test_a_sweep_on_dask_with_postgresql_then_all_hits(tmp_path: Path) -> None:
    need("postgres")
    import cloudpickle
    from distributed import Client, LocalCluster

    cloudpickle.register_pickle_by_value(sweep_steps)
    url = fresh_pg_database(f"t_{uuid.uuid4().hex[:12]}")
    out = tmp_path / "out"
    rows = [{"x": x, "out_dir": str(out)} for x in range(40) if x != 13]
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0", processes=True) as cluster,
        Client(cluster) as client,
        Tracker(tmp_path / "rd", db_url=url, store_dir=tmp_path / "objects", code_version="v1") as t,
    ):
        executor = client.get_executor()
        first = t.map_runs(sweep_steps.square, rows, executor=executor, outputs=["square"])
        first.raise_on_failure()
        assert first.submitted == 39 and first.cached_count == 0
        worker_pids = {line.split()[1] for line in _executions(out)}
        assert str(os.getpid()) not in worker_pids
        second = t.map_runs(sweep_steps.square, rows, executor=executor, outputs=["square"])
        assert second.submitted == 0 and second.cached_count == 39
        assert len(_executions(out)) == 39
        assert len(t.find_runs(model="square", cache_hit=False, limit=None)) == 39
