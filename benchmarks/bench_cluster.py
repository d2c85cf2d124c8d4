"""A PostgreSQL store against the embedded one, sweeps on Dask, and concurrent writers.

    .venv/bin/python benchmarks/bench_cluster.py [--quick] [--pg-url URL] [--out FILE]

Needs a PostgreSQL server where the role of URL may create databases (by default
the one `scripts/setup-scaleout.sh` starts: CONSIST_TEST_PG_URL, else the URL in
/tmp/ci-scaleout/scaleout.env). Every part works in a database of its own,
created empty by this script (bench_cluster_*) and dropped at the end.

1. `tracker.run` of a trivial step on PostgreSQL and on the embedded store
   (SQLite run index, DuckDB file): in each round one miss (a new config) on
   each, in rotating order; then, in as many rounds, one hit on each, of the
   configs the misses recorded, in the same way.
2. A sweep of trivial steps through `tracker.map_runs` on a Dask LocalCluster
   (two worker processes, one thread each) recording in PostgreSQL, against a
   bare `client.map` of the same function over the same inputs on the same
   cluster, gathered. Each round uses rows of its own (the round number is part
   of every row), so every row of the sweep is a miss; the two alternate which
   goes first. After both, the same rows through `map_runs` again: all hits, so
   nothing may be submitted. `map_runs` gets the cluster's executor through a
   thin wrapper that counts the tasks and notes when the first was submitted:
   every row's hit is decided in the calling process before that.
3. Writer processes (benchmarks/cluster_worker.py) started together on one
   PostgreSQL database, each recording distinct trivial runs. Interpreter
   start-up is left out: every writer imports consist, opens its tracker and
   says it is ready; then the script writes the start file, whose time is the
   common start. The database must then hold exactly one completed run per
   call, none twice. Throughput is all runs over the time from the common start
   to the end of the last writer.

Writes every sample to benchmarks/results/cluster-<date>-<time>.json and prints
the Markdown table that benchmarks/render.py makes from that file.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import cluster_steps  # noqa: E402
from _common import interleaved, new_result, print_block, summary, write_result  # noqa: E402

PARAMS = {
    "run_rounds": 200,
    "sweep_rows": 1000,
    "sweep_rounds": 6,
    "warm_up_rows": 128,
    "dask_workers": 2,
    "threads_per_worker": 1,
    "writers": 8,
    "runs_per_writer": 100,
    "writer_rounds": 5,
}
QUICK = {**PARAMS, "run_rounds": 20, "sweep_rows": 200, "sweep_rounds": 2, "writers": 4, "runs_per_writer": 20,
         "writer_rounds": 1}  # fmt: skip
TARGETS = {
    "pg_miss": {"max_ms": 3},
    "pg_hit": {"max_ms": 1.5},
    "sweep": {"max_ratio": 1.5},
    "sweep_hits": {"max_ms": 500, "submitted": 0},
    "writers": {"lost": 0, "duplicates": 0},
}
ENV_FILE = Path(os.environ.get("CONSIST_SCALEOUT_DIR", "/tmp/ci-scaleout")) / "scaleout.env"
DB_PREFIX = "bench_cluster_"


def say(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- PostgreSQL


def default_pg_url() -> str | None:
    url = os.environ.get("CONSIST_TEST_PG_URL")
    if url:
        return url
    try:
        for line in ENV_FILE.read_text().splitlines():
            if line.startswith("CONSIST_TEST_PG_URL="):
                return line.split("=", 1)[1].strip().strip("'\"")
    except OSError:
        pass
    return None


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


def fresh_database(url: str, name: str) -> str:
    """Drop database `name` if it exists and create it empty, owned by the URL's role; its URL."""
    import psycopg
    from psycopg import sql

    owner = urlsplit(url).username or "consist"
    with psycopg.connect(with_database(url, "postgres"), connect_timeout=5, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(owner)))
    return with_database(url, name)


def drop_database(url: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(with_database(url, "postgres"), connect_timeout=5, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def server_version(url: str) -> str:
    import psycopg

    with psycopg.connect(with_database(url, "postgres"), connect_timeout=5) as conn:
        return str(conn.execute("SHOW server_version").fetchone()[0])


# ---------------------------------------------------------------------------- 1. tracker.run


def run_calls(base: Path, url: str, p: dict[str, Any]) -> dict[str, Any]:
    from consist import Tracker

    db = fresh_database(url, DB_PREFIX + "runs")
    trackers = {
        "postgresql": Tracker(base / "runs_pg", db_url=db, store_dir=base / "objects_pg", code_version="bench"),
        "embedded": Tracker(base / "runs_embedded", code_version="bench"),
    }
    try:
        for t in trackers.values():  # the first call loads modules
            assert not t.run(cluster_steps.trivial, name="trivial", config={"i": -1}).cache_hit

        def call(arm: str, hit: bool) -> Any:
            t = trackers[arm]

            def one(i: int) -> float:
                s = time.perf_counter()
                got = t.run(cluster_steps.trivial, name="trivial", config={"i": i}).cache_hit
                s = time.perf_counter() - s
                assert got == hit, f"{arm}: expected cache_hit={hit} for i={i}"
                return s

            return one

        out = {}
        for kind, hit in (("miss", False), ("hit", True)):
            say(f"tracker.run {kind} x{p['run_rounds']} (PostgreSQL, embedded)")
            d = interleaved({arm: call(arm, hit) for arm in trackers}, p["run_rounds"])
            arms = d.pop("arms")
            d.update(arms)
            d["ratio_of_medians"] = arms["postgresql"]["median_ms"] / arms["embedded"]["median_ms"]
            out[kind] = d
        return out
    finally:
        for t in trackers.values():
            t.close()


# ---------------------------------------------------------------------------- 2. sweeps on Dask


class Counting(cf.Executor):
    """Hands every task to the executor it wraps; counts them and notes when the first one came.

    map_runs decides every row's hit in the calling process before it submits
    anything, so the time to the first task is what that phase takes.
    """

    def __init__(self, inner: cf.Executor) -> None:
        self.inner = inner
        self.reset()

    def reset(self) -> None:
        self.first: float | None = None
        self.tasks = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        if self.first is None:
            self.first = time.perf_counter()
        self.tasks += 1
        return self.inner.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.inner.shutdown(wait=wait, cancel_futures=cancel_futures)


def sweeps(base: Path, url: str, p: dict[str, Any]) -> dict[str, Any]:
    from distributed import Client, LocalCluster

    from consist import Tracker

    db = fresh_database(url, DB_PREFIX + "sweep")
    n = p["sweep_rows"]
    out: dict[str, Any] = {}
    with (
        LocalCluster(n_workers=p["dask_workers"], threads_per_worker=p["threads_per_worker"], processes=True,
                     dashboard_address=None) as cluster,
        Client(cluster) as client,
        Tracker(base / "sweep_runs", db_url=db, store_dir=base / "sweep_objects", code_version="bench") as t,
    ):  # fmt: skip
        found = client.run(lambda: importlib.util.find_spec("cluster_steps") is not None)
        out["workers_import_steps_module"] = all(found.values())
        if not out["workers_import_steps_module"]:  # send the step by value instead
            import cloudpickle

            cloudpickle.register_pickle_by_value(cluster_steps)
        executor = Counting(client.get_executor())
        decide: list[float] = []  # per miss sweep: from the call to its first task (hits decided by then)
        tasks: list[int] = []

        def rows(sweep: int, k: int) -> list[dict[str, int]]:
            return [{"i": i, "sweep": sweep} for i in range(k)]

        def bare(sweep: int, k: int) -> float:
            s = time.perf_counter()
            futures = client.map(cluster_steps.trivial, range(k), [sweep] * k)
            got = client.gather(futures)
            s = time.perf_counter() - s
            assert got == [None] * k
            del futures
            return s

        def swept(sweep: int, k: int, hits: bool) -> tuple[float, Any]:
            executor.reset()
            s = time.perf_counter()
            batch = t.map_runs(cluster_steps.trivial, rows(sweep, k), executor=executor, progress=False)
            e = time.perf_counter()
            assert batch.failure_count == 0, batch.failed[:1]
            assert batch.cached_count == (k if hits else 0)
            assert batch.submitted == (0 if hits else k)
            if not hits:
                assert executor.first is not None
                decide.append(executor.first - s)
                tasks.append(executor.tasks)
            return e - s, batch

        say("sweep warm-up (workers open their trackers)")
        w = p["warm_up_rows"]
        bare(-1, w)
        swept(-1, w, hits=False)
        swept(-1, w, hits=True)

        samples: dict[str, list[float]] = {"bare_dask": [], "map_runs": [], "map_runs_all_hits": []}
        first, submitted, cached = [], [], []
        for r in range(p["sweep_rounds"]):
            order = ["bare_dask", "map_runs"] if r % 2 == 0 else ["map_runs", "bare_dask"]
            first.append(order[0])
            for arm in order:
                samples[arm].append(bare(r, n) if arm == "bare_dask" else swept(r, n, hits=False)[0])
            s, batch = swept(r, n, hits=True)
            samples["map_runs_all_hits"].append(s)
            submitted.append(batch.submitted)
            cached.append(batch.cached_count)
            say(f"sweep round {r + 1}/{p['sweep_rounds']}: bare {samples['bare_dask'][-1]:.2f} s, map_runs "
                f"{samples['map_runs'][-1]:.2f} s, all hits {s:.2f} s")  # fmt: skip
        del decide[0], tasks[0]  # the warm-up's
        bd, mr = summary(samples["bare_dask"]), summary(samples["map_runs"])
        out["misses"] = {
            "rounds": p["sweep_rounds"],
            "first": first,
            "bare_dask": bd,
            "map_runs": mr,
            "ratio_of_medians": mr["median_ms"] / bd["median_ms"],
            "median_paired_ratio": statistics.median(
                m / b for m, b in zip(samples["map_runs"], samples["bare_dask"], strict=True)
            ),
            "overhead_per_row_ms": (mr["median_ms"] - bd["median_ms"]) / n,
            "bare_dask_tasks": n,
            "map_runs_tasks": tasks,
            "map_runs_tasks_max": max(tasks),
            "map_runs_until_first_task": summary(decide),
        }
        out["misses"]["until_first_task_per_row_ms"] = out["misses"]["map_runs_until_first_task"]["median_ms"] / n
        out["all_hits"] = {
            "map_runs": summary(samples["map_runs_all_hits"]),
            "submitted": submitted,
            "submitted_max": max(submitted),
            "cached": cached,
        }
        out["all_hits"]["per_row_ms"] = out["all_hits"]["map_runs"]["median_ms"] / n
    return out


# ---------------------------------------------------------------------------- 3. concurrent writers


def writers(base: Path, url: str, p: dict[str, Any]) -> dict[str, Any]:
    import psycopg

    k, per = p["writers"], p["runs_per_writer"]
    rounds = []
    for r in range(p["writer_rounds"]):
        name = f"{DB_PREFIX}writers_{r}"
        db = fresh_database(url, name)
        work = base / f"writers_{r}"
        work.mkdir()
        go = work / "go"
        script = str(HERE / "cluster_worker.py")
        procs = [
            subprocess.Popen(
                [sys.executable, script, db, str(work), str(w), str(per), str(go)], stdout=subprocess.PIPE, text=True
            )
            for w in range(k)
        ]
        try:
            for proc in procs:
                assert proc.stdout is not None
                line = proc.stdout.readline()
                if line.strip() != "READY":
                    raise RuntimeError(f"a writer did not start: {line!r}")
            tmp = work / "go.tmp"
            start = time.time()
            tmp.write_text(repr(start))
            tmp.rename(go)
            reports = []
            for proc in procs:
                stdout, _ = proc.communicate(timeout=600)
                if proc.returncode != 0:
                    raise RuntimeError(f"a writer failed with code {proc.returncode}")
                reports.append(json.loads(stdout.strip().splitlines()[-1]))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        end = max(rep["end"] for rep in reports)
        with psycopg.connect(db, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE status = 'completed'), count(DISTINCT id), "
                "count(DISTINCT signature), count(*) FILTER (WHERE cache_hit) FROM consist.run"
            ).fetchone()
        total, completed, ids, signatures, hits = (int(x) for x in row)
        expected = k * per
        one = {
            "expected_runs": expected,
            "runs_in_view": total,
            "completed_runs": completed,
            "distinct_ids": ids,
            "distinct_signatures": signatures,
            "cache_hits": hits,
            "hits_reported": sum(rep["hits"] for rep in reports),
            "lost": expected - completed,
            "duplicates": total - signatures,
            "wall_s": end - start,
            "latest_writer_start_after_go_s": max(rep["start"] for rep in reports) - start,
            "runs_per_s": expected / (end - start),
            "per_run": summary([s for rep in reports for s in rep["seconds"]]),
            "per_writer_runs_per_s": [per / (rep["end"] - rep["start"]) for rep in reports],
        }
        say(f"writers round {r + 1}/{p['writer_rounds']}: {completed} of {expected} completed, "
            f"{total - signatures} duplicates, {one['runs_per_s']:.0f} runs/s")  # fmt: skip
        rounds.append(one)
        drop_database(url, name)
    rates = [one["runs_per_s"] for one in rounds]
    return {
        "rounds": rounds,
        "expected_runs": k * per,
        "completed_runs_min": min(one["completed_runs"] for one in rounds),
        "completed_runs_max": max(one["completed_runs"] for one in rounds),
        "lost_max": max(one["lost"] for one in rounds),
        "duplicates_max": max(one["duplicates"] for one in rounds),
        "runs_per_s": rates,
        "runs_per_s_median": statistics.median(rates),
        "per_run_all": summary([s / 1000 for one in rounds for s in one["per_run"]["samples_ms"]]),
    }


# ---------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not for publication")
    ap.add_argument("--pg-url", default=default_pg_url(), help="PostgreSQL URL (default: the test server's)")
    ap.add_argument("--out", help="results file (default: benchmarks/results/cluster-<date>-<time>.json)")
    args = ap.parse_args()
    if not args.pg_url:
        ap.error(f"no PostgreSQL: give --pg-url, set CONSIST_TEST_PG_URL, or start the server ({ENV_FILE})")
    url = args.pg_url
    p = dict(QUICK if args.quick else PARAMS)
    os.environ["CONSIST_PROGRESS"] = "0"  # inherited by the Dask workers and the writers
    base = Path(tempfile.mkdtemp(prefix="consist_bench_"))
    params = {**p, "quick": args.quick, "pg_url": without_password(url), "pg_server_version": server_version(url)}
    result = new_result("cluster", base, params)
    result["targets"] = TARGETS
    m: dict[str, Any] = {}
    result["measurements"] = m
    try:
        m["run"] = run_calls(base, url, p)
        m["sweep"] = sweeps(base, url, p)
        say(f"writers: {p['writer_rounds']} rounds of {p['writers']} processes x {p['runs_per_writer']} runs")
        m["writers"] = writers(base, url, p)
    finally:
        for name in ("runs", "sweep"):
            drop_database(url, DB_PREFIX + name)
        shutil.rmtree(base, ignore_errors=True)
    path = write_result(result, args.out)
    say(f"wrote {path}")
    print_block(result, path)


if __name__ == "__main__":
    main()
