"""Sweeps of container steps on a real Slurm (dask-jobqueue workers), and what ``scancel`` leaves behind."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

import sweep_steps
from consist import Tracker
from engines import image, need
from scaleout import fresh_pg_database, slurm_partition

pytestmark = pytest.mark.slow


def _newest_job_id() -> int:
    """The highest Slurm job id ever seen: ended jobs (the job completion log) and the queue."""
    log = Path(os.environ.get("CONSIST_TEST_SLURM_JOBCOMP_LOG", "/var/log/slurm/jobcomp.log"))
    ended = re.findall(r"^JobId=(\d+)", log.read_text(), re.M) if log.exists() else []
    queued = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True).stdout.split()
    return max([0, *(int(j.split("_")[0]) for j in [*ended, *queued])])


def _slurm_cluster(tmp_path: Path):  # type: ignore[no-untyped-def]
    from dask_jobqueue import SLURMCluster

    return SLURMCluster(
        queue=slurm_partition(), cores=1, processes=1, memory="1GB", walltime="00:15:00",
        python=sys.executable, interface="lo", scheduler_options={"dashboard_address": None},
        local_directory=str(tmp_path / "dask-work"), log_directory=str(tmp_path / "dask-logs"),
        # The workers import the steps as the user's own module: it must be on their path.
        job_script_prologue=[f"export PYTHONPATH={Path(__file__).parent}"],
    )  # fmt: skip


def test_a_container_sweep_runs_on_slurm_workers_and_the_second_sweep_submits_no_job(tmp_path: Path) -> None:
    need("slurm")
    need("postgres")
    need("docker")
    need("apptainer")
    from distributed import Client

    url = fresh_pg_database(f"t_{uuid.uuid4().hex[:12]}")
    out = tmp_path / "rd" / "out"
    rows = [
        {"zone": z, "out_dir": str(out), "engine": engine, "image": image(engine)}
        for z, engine in enumerate(["docker", "apptainer", "docker", "apptainer"])
    ]
    spec = {"db_url": url, "store_dir": tmp_path / "shared-objects", "code_version": "v1"}
    with Tracker(tmp_path / "rd", **spec) as t:  # type: ignore[arg-type]
        with _slurm_cluster(tmp_path) as cluster, Client(cluster) as client:
            cluster.scale(2)
            client.wait_for_workers(2, timeout=180)
            first = t.map_runs(sweep_steps.container_step, rows, executor=client.get_executor(), outputs=["zone"])
        first.raise_on_failure()
        assert first.submitted == 4 and first.cached_count == 0
        lines = (out / "executions.log").read_text().splitlines()
        assert len(lines) == 4
        job_ids = {line.split()[1] for line in lines}
        assert "-" not in job_ids  # every row ran inside a Slurm job
        for z in range(4):
            assert (out / f"zone_{z}.txt").read_text() == f"zone {z}\n"
        # Each container step is recorded as its own run, child of the row's run, on PostgreSQL.
        containers = t.find_runs(model="zone_0", limit=None) + t.find_runs(model="zone_1", limit=None)
        assert {r.status for r in containers} == {"completed"} and len(containers) == 2

        for z in range(4):
            (out / f"zone_{z}.txt").unlink()
        newest = _newest_job_id()
        with _slurm_cluster(tmp_path) as idle, Client(idle) as client:  # no worker: a submission would hang
            second = t.map_runs(sweep_steps.container_step, rows, executor=client.get_executor(), outputs=["zone"])
        assert second.submitted == 0 and second.cached_count == 4
        assert _newest_job_id() == newest  # no job was submitted
        assert len((out / "executions.log").read_text().splitlines()) == 4
        for z in range(4):  # restored from the shared store
            assert (out / f"zone_{z}.txt").read_text() == f"zone {z}\n"


def _submit(tmp_path: Path, engine: str, seconds: int) -> str:
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(f"""\
        #!{sys.executable}
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from consist import Tracker
        import sweep_steps
        with Tracker({str(tmp_path / "rd")!r}, code_version="v1") as t:
            t.run(sweep_steps.sleeper, config={{"seconds": {seconds}, "engine": {engine!r},
                  "image": {image(engine)!r}, "name": "sleeper"}})
        """)
    )
    script.chmod(0o755)
    proc = subprocess.run(
        ["sbatch", "--parsable", "-p", str(slurm_partition()), "-o", str(tmp_path / "job.out"), str(script)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return proc.stdout.strip().split(";")[0]


def _running(engine: str, seconds: int) -> list[str]:
    """Containers (Docker, Podman) or processes (Apptainer) running ``sleep <seconds>``."""
    if engine == "apptainer":
        ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
        return [line for line in ps.splitlines() if f"sleep {seconds}" in line and "ps -eo" not in line]
    ps = subprocess.run(
        [engine, "ps", "-a", "--no-trunc", "--format", "{{.Names}} {{.Command}}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [line for line in ps.splitlines() if f"sleep {seconds}" in line]


@pytest.mark.parametrize("engine", ["docker", "podman", "apptainer"])
def test_scancel_leaves_no_container_running(engine: str, tmp_path: Path) -> None:
    need("slurm")
    need(engine)
    seconds = random.randint(1000, 9999)  # names this test's container among others
    job = _submit(tmp_path, engine, seconds)
    deadline = time.monotonic() + 120
    while not _running(engine, seconds):
        assert time.monotonic() < deadline, (
            (tmp_path / "job.out").read_text() if (tmp_path / "job.out").exists() else ""
        )
        time.sleep(0.3)
    subprocess.run(["scancel", job], check=True)
    deadline = time.monotonic() + 60
    while _running(engine, seconds) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _running(engine, seconds) == [], f"still running after scancel of job {job}"
