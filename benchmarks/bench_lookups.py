"""Run and artifact lookups (consist.lookups) on a run index of 100,000 runs.

    .venv/bin/python benchmarks/bench_lookups.py [--runs N] [--quick] [--db-url URL] [--out FILE]

The index is filled straight through the run index's own statements, a large
transaction per table chunk (tracker.run would take hours for 100,000 runs):
runs of ten models in scenarios of ten steps, seven years, three iterations, a
third of them cache hits, 1 % failed; tags (half "base", a fifth "calibrated",
and a tag per scenario); stage and phase in the metadata of 30 %; two outputs
per executed run (hits link their producer's), two inputs per run (one of 200
raw files, and the previous step's output). ``--quick`` makes 10,000 runs.
``--db-url`` fills a PostgreSQL database instead of the SQLite index (it must be
empty: a new database).

Then a Tracker opened on it (read-only: the same reads, and no DuckDB file to
merge the runs into when it closes) answers each lookup in rounds: every lookup once per
round, in rotating order, with other arguments each round (another model, run,
scenario, ...). Each is timed from call to answer (the Run and Artifact objects
built; load_run_output reads a small CSV file). Target: a median of at most 5 ms
each (``diff_runs`` with table summaries reads both tables with DuckDB: not a lookup,
shown for reference).

Writes every sample to benchmarks/results/lookups-<date>-<time>.json and prints
the Markdown table that benchmarks/render.py makes from that file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import interleaved, new_result, print_block, stopwatch, write_result  # noqa: E402

PARAMS = {"runs": 100_000, "rounds": 60, "chunk": 20_000}
QUICK = {"runs": 10_000, "rounds": 50, "chunk": 20_000}
TARGETS = {"max_ms": 5.0}
MODELS = [f"m{k}" for k in range(10)]
STEPS = 10  # runs per scenario, one of each model
YEARS = [2020 + 5 * k for k in range(7)]
STAGES = ("prep", "assign", "report")
PHASES = ("calibration", "validation")
RAW_FILES = 200
T0 = 1.7e9


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, file=sys.stderr, flush=True)


def h(*parts: Any) -> str:
    return "sha256:" + hashlib.sha256(repr(parts).encode()).hexdigest()


# ---------------------------------------------------------------------------- the recorded history


class History:
    """Who is what in the generated history (run i is the i-th oldest)."""

    def __init__(self, n: int, run_dir: Path) -> None:
        self.n = n
        self.run_dir = run_dir

    def run_id(self, i: int) -> str:
        return f"{self.model(i)}_{i:07d}"

    def model(self, i: int) -> str:
        return MODELS[i % STEPS]

    def scenario(self, i: int) -> str:
        return f"sc{i // STEPS:06d}"

    def year(self, i: int) -> int:
        return YEARS[(i // STEPS) % len(YEARS)]

    def iteration(self, i: int) -> int:
        return (i // (STEPS * len(YEARS))) % 3

    def is_hit(self, i: int) -> bool:
        return i % 3 == 2 and i >= STEPS

    def source(self, i: int) -> int:
        """The executed run whose outputs run i has (itself, or for a hit the same model's run 10 before)."""
        return i - STEPS if self.is_hit(i) else i

    def stage(self, i: int) -> str | None:
        return STAGES[(i // STEPS) % 3] if i % STEPS < 3 else None

    def phase(self, i: int) -> str | None:
        return PHASES[(i // 7) % 2] if i % STEPS < 3 else None

    def tags(self, i: int) -> list[str]:
        out = [f"s{i // STEPS}"]
        if i % 2 == 0:
            out.append("base")
        if i % STEPS in (3, 4):
            out.append("calibrated")
        return out

    def output_keys(self, i: int) -> list[str]:
        return [f"{self.model(i)}_out", "summary"]

    def output_id(self, i: int, key: str) -> str:
        return hashlib.md5(f"out{self.source(i)}{key}".encode()).hexdigest()

    def output_uri(self, i: int, key: str) -> str:
        j = self.source(i)
        return str(self.run_dir / self.run_id(j) / f"{key}.csv")

    def raw_id(self, r: int) -> str:
        return hashlib.md5(f"raw{r}".encode()).hexdigest()

    def run_row(self, i: int) -> dict[str, Any]:
        hit, j = self.is_hit(i), self.source(i)
        meta: dict[str, Any] = {}
        if not hit:
            meta["cache_miss_explanation"] = {"reason": "config_changed", "changed": ["config"]}
        for key, value in (("stage", self.stage(i)), ("phase", self.phase(i))):
            if value is not None:
                meta[key] = value
        if i % 50 == 0:
            meta["description"] = f"run {i} of the benchmark history"
        started = T0 + i
        return {
            "id": self.run_id(i), "name": self.run_id(i), "model": self.model(i),
            "status": "failed" if i % 97 == 0 else "completed", "parent_run_id": self.scenario(i),
            "year": self.year(i), "iteration": self.iteration(i), "tags": json.dumps(self.tags(i)),
            "signature": h("sig", j), "code_version": f"git:{i * 10 // self.n:07x}",
            "config_hash": h("cfg", j % 20_000), "input_hash": h("in", j // STEPS),
            "config": json.dumps({"model": self.model(i), "year": self.year(i), "rate": (j % 100) / 10}),
            "identity": json.dumps({"code": "git", "config": h("cfg", j % 20_000)}),
            "cache_hit": int(hit), "cache_source": self.run_id(j) if hit else None, "cache_epoch": 1,
            "error": "RuntimeError: boom" if i % 97 == 0 else None, "meta": json.dumps(meta) if meta else None,
            "run_dir": str(self.run_dir), "pid": 1000 + i % 7, "host": "bench", "started_at": started,
            "ended_at": started + 0.5,
        }  # fmt: skip

    def artifact_rows(self, i: int) -> list[dict[str, Any]]:
        """The outputs run i recorded (none for a hit: it links its producer's)."""
        if self.is_hit(i):
            return []
        return [
            {"id": self.output_id(i, key), "key": key, "uri": self.output_uri(i, key),
             "hash": h("summary", i % 1000) if key == "summary" else h("content", i, key), "size": 1000 + i % 500,
             "kind": "file", "driver": "csv", "run_id": self.run_id(i), "created_at": T0 + i + 0.5, "meta": None,
             "location": f"run_dir://{self.run_id(i)}/{key}.csv"}
            for key in self.output_keys(i)
        ]  # fmt: skip

    def raw_rows(self) -> list[dict[str, Any]]:
        return [
            {"id": self.raw_id(r), "key": "land_use", "uri": f"/data/raw/land_use_{r}.csv", "hash": h("raw", r),
             "size": 5000, "kind": "file", "driver": "csv", "run_id": None, "created_at": T0 - RAW_FILES + r,
             "meta": None, "location": None}
            for r in range(RAW_FILES)
        ]  # fmt: skip

    def link_rows(self, i: int) -> list[tuple[str, str, str, str]]:
        rid = self.run_id(i)
        links = [(rid, self.raw_id(i % RAW_FILES), "input", "land_use")]
        if i % STEPS:  # the scenario's previous step feeds this one
            prev = i - 1
            links.append((rid, self.output_id(prev, f"{self.model(prev)}_out"), "input", "upstream"))
        links += [(rid, self.output_id(i, key), "output", key) for key in self.output_keys(i)]
        return links


def fill(index: Any, hist: History, chunk: int) -> dict[str, Any]:
    """Insert the history through the index's statements, one transaction per chunk of runs."""
    from consist.store.columns import ARTIFACT_COLUMNS, RUN_COLUMNS

    run_sql = f"INSERT INTO run ({','.join([*RUN_COLUMNS, 'seq'])}) VALUES ({','.join('?' * (len(RUN_COLUMNS) + 1))})"
    art_sql = (
        f"INSERT INTO artifact ({','.join([*ARTIFACT_COLUMNS, 'seq'])}) "
        f"VALUES ({','.join('?' * (len(ARTIFACT_COLUMNS) + 1))})"
    )
    link_sql = "INSERT INTO run_artifact (run_id, artifact_id, direction, key, seq) VALUES (?,?,?,?,?)"
    counts = {"runs": 0, "artifacts": 0, "links": 0}
    start = time.perf_counter()
    with index.write() as seq:
        rows = hist.raw_rows()
        counts["artifacts"] += index._run_many(art_sql, [[r[c] for c in ARTIFACT_COLUMNS] + [seq] for r in rows])
    for lo in range(0, hist.n, chunk):
        ids = range(lo, min(lo + chunk, hist.n))
        with index.write() as seq:
            runs = [[row[c] for c in RUN_COLUMNS] + [seq] for row in map(hist.run_row, ids)]
            arts = [[a[c] for c in ARTIFACT_COLUMNS] + [seq] for i in ids for a in hist.artifact_rows(i)]
            links = [[*link, seq] for i in ids for link in hist.link_rows(i)]
            index._run_many(run_sql, runs)
            index._run_many(art_sql, arts)
            index._run_many(link_sql, links)
        counts["runs"] += len(runs)
        counts["artifacts"] += len(arts)
        counts["links"] += len(links)
        log(f"  {counts['runs']:,} runs")
    counts["run_tags"] = index.query_one("SELECT count(*) AS n FROM run_tag")["n"]
    counts["seconds"] = round(time.perf_counter() - start, 1)
    return counts


# ---------------------------------------------------------------------------- the lookups


def lookups(t: Any, hist: History, with_files: list[int]) -> dict[str, tuple[str, Callable[[int], Any]]]:
    """name -> (the call, as shown; a function of the round that makes it)."""
    n = hist.n

    def pick(i: int, salt: int) -> int:
        """A run spread over the whole history, another each round."""
        return (i * 7919 + salt * 104_729) % n

    def executed(i: int, salt: int) -> int:
        return hist.source(pick(i, salt))

    on_disk = set(with_files)
    no_files = [j for j in range(STEPS, n - STEPS) if j not in on_disk]
    calls: dict[str, tuple[str, Callable[[int], Any]]] = {
        "newest": ("find_runs() (the newest 100)", lambda i: t.find_runs()),
        "model": ("find_runs(model=...)", lambda i: t.find_runs(model=MODELS[i % 10])),
        "status": ("find_runs(status='failed')", lambda i: t.find_runs(status="failed")),
        "tag_common": ("find_runs(tags=['base']) (half the runs)", lambda i: t.find_runs(tags=["base"])),
        "tag_rare": ("find_runs(tags=[a scenario's tag]) (10 runs)",
                     lambda i: t.find_runs(tags=[f"s{pick(i, 1) // STEPS}"])),
        "two_tags": ("find_runs(tags=['base', 'calibrated'])", lambda i: t.find_runs(tags=["base", "calibrated"])),
        "model_tag": ("find_runs(model=..., tags=['calibrated'])",
                      lambda i: t.find_runs(model=MODELS[3 + i % 2], tags=["calibrated"])),
        "failed_tag": ("find_runs(status='failed', tags=['base'])",
                       lambda i: t.find_runs(status="failed", tags=["base"])),
        "model_year": ("find_runs(model=..., year=..., status='completed')",
                       lambda i: t.find_runs(model=MODELS[i % 10], year=YEARS[i % 7], status="completed")),
        "parent": ("find_runs(parent_id=...)", lambda i: t.find_runs(parent_id=hist.scenario(pick(i, 2)))),
        "year_iteration": ("find_runs(year=..., iteration=...)",
                           lambda i: t.find_runs(year=YEARS[i % 7], iteration=i % 3)),
        "stage": ("find_runs(stage=...)", lambda i: t.find_runs(stage=STAGES[i % 3])),
        "stage_phase": ("find_runs(stage=..., phase=...)",
                        lambda i: t.find_runs(stage=STAGES[i % 3], phase=PHASES[i % 2])),
        "index_by": ("find_runs(model=..., index_by='year')",
                     lambda i: t.find_runs(model=MODELS[i % 10], index_by="year")),
        "find_run": ("find_run(parent_id=..., model=...)",
                     lambda i: t.find_run(parent_id=hist.scenario(pick(i, 3)), model=hist.model(pick(i, 3)))),
        "latest": ("find_latest_run(model=..., status='completed')",
                   lambda i: t.find_latest_run(model=MODELS[i % 10], status="completed")),
        "latest_id": ("get_latest_run_id(stage=..., phase=...)",
                      lambda i: t.get_latest_run_id(stage=STAGES[i % 3], phase=PHASES[i % 2])),
        "signature": ("find_matching_runs(signature)",
                      lambda i: t.find_matching_runs(h("sig", executed(i, 4)))),
        "config_hash": ("find_matching_runs(config_hash=...)",
                        lambda i: t.find_matching_runs(config_hash=h("cfg", executed(i, 5) % 20_000))),
        "input_hash": ("find_matching_runs(input_hash=...)",
                       lambda i: t.find_matching_runs(input_hash=h("in", executed(i, 6) // STEPS))),
        "code_version": ("find_matching_runs(code_version=...)",
                         lambda i: t.find_matching_runs(code_version=f"git:{i % 10:07x}")),
        "history": ("history() (10 runs, a DataFrame)", lambda i: t.history()),
        "history_tags": ("history(tags=['calibrated'])", lambda i: t.history(tags=["calibrated"])),
        "config": ("get_run_config(run_id)", lambda i: t.get_run_config(hist.run_id(pick(i, 7)))),
        "artifact_id": ("get_artifact(id)", lambda i: t.get_artifact(hist.output_id(executed(i, 8), "summary"))),
        "artifact_key": ("get_artifact('summary') (the key of an output of every executed run)",
                         lambda i: t.get_artifact("summary")),
        "artifact_raw_key": ("get_artifact('land_use') (raw inputs only)", lambda i: t.get_artifact("land_use")),
        "artifact_of_run": ("get_artifact(key, run_id=...)",
                            lambda i: t.get_artifact("upstream", run_id=hist.run_id(pick(i, 9) // 10 * 10 + 5))),
        "artifact_uri": ("get_artifact_by_uri(path)",
                         lambda i: t.get_artifact_by_uri(hist.output_uri(executed(i, 10), "summary"))),
        "creator": ("find_artifacts(creator=...)", lambda i: t.find_artifacts(creator=hist.run_id(executed(i, 11)))),
        "consumer": ("find_artifacts(consumer=...)", lambda i: t.find_artifacts(consumer=hist.run_id(pick(i, 12)))),
        "artifact_key_list": ("find_artifacts(key='summary')", lambda i: t.find_artifacts(key="summary")),
        "artifact_hash": ("find_artifacts(hash=...)", lambda i: t.find_artifacts(hash=h("summary", i % 1000))),
        "load_output": ("load_run_output(run_id, key) (a 3-row CSV)",
                        lambda i: t.load_run_output(hist.run_id(with_files[i % len(with_files)]), "summary")),
        "diff": ("diff_runs(a, b) (outputs not on disk)",
                 lambda i: t.diff_runs(hist.run_id(no_files[(i * 31) % len(no_files)]),
                                       hist.run_id(no_files[(i * 31 + STEPS) % len(no_files)]))),
        "diff_tables": ("diff_runs(a, b) with table summaries (DuckDB reads both CSVs)",
                        lambda i: t.diff_runs(hist.run_id(with_files[i % len(with_files)]),
                                              hist.run_id(with_files[(i + 1) % len(with_files)]))),
    }  # fmt: skip
    return calls


UNTARGETED = ("diff_tables",)


def write_outputs(hist: History, runs: list[int]) -> None:
    """Small CSV files at the recorded places of these executed runs' summaries."""
    for j in runs:
        path = Path(hist.output_uri(j, "summary"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"zone,trips\n1,{j % 17}\n2,{j % 23}\n3,{j % 29}\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, help="runs in the index (default 100,000; 10,000 with --quick)")
    ap.add_argument("--quick", action="store_true", help="10,000 runs: a smoke test, not for publication")
    ap.add_argument("--db-url", help="fill this (new, empty) PostgreSQL database instead of the SQLite index")
    ap.add_argument("--out", help="results file (default: benchmarks/results/lookups-<date>-<time>.json)")
    args = ap.parse_args()
    p: dict[str, Any] = dict(QUICK if args.quick else PARAMS)
    if args.runs:
        p["runs"] = args.runs
    base = Path(tempfile.mkdtemp(prefix="consist_bench_"))
    backend = "postgresql" if args.db_url else "sqlite"
    result = new_result("lookups", base, {**p, "quick": args.quick, "backend": backend})
    if args.db_url:
        from consist.store.postgres import redact

        result["command"] = result["command"].replace(args.db_url, redact(args.db_url))
    result["targets"] = TARGETS
    os.environ["CONSIST_PROGRESS"] = "0"
    try:
        from consist import Tracker

        db = base / "provenance.duckdb"
        hist = History(p["runs"], base / "runs")
        if args.db_url:
            from consist.store.postgres import PostgresIndex

            index: Any = PostgresIndex(args.db_url)
        else:
            from consist.store.sqlite import SQLiteIndex, index_path_for

            index = SQLiteIndex(index_path_for(db))
        log(f"filling the {backend} index with {p['runs']:,} runs")
        build = fill(index, hist, p["chunk"])
        if args.db_url:
            index.execute("ANALYZE")  # what autovacuum does on a live database
            build["schema_version"] = index.schema_version
        else:
            build["index_mib"] = round(index.path.stat().st_size / 2**20, 1)
            build["sqlite"] = sqlite3.sqlite_version
            build["schema_version"] = index.schema_version
        index.close()
        result["build"] = build
        with_files = sorted({hist.source(j) for j in range(STEPS, p["runs"], max(1, p["runs"] // 200))})
        write_outputs(hist, with_files)
        # Read-only: the lookups read the index as a recording tracker's do, and closing it does not merge
        # the 100,000 runs into a DuckDB file.
        t = Tracker(base / "runs", db_path=db, db_url=args.db_url, project_root=base, read_only=True)
        try:
            calls = lookups(t, hist, with_files)
            for _name, (_text, fn) in calls.items():  # every answer once, before timing: no first-call costs
                fn(0)
            log(f"timing {len(calls)} lookups, {p['rounds']} rounds")
            arms = {name: (lambda i, fn=fn: stopwatch(lambda: fn(i))) for name, (_text, fn) in calls.items()}
            measured = interleaved(arms, p["rounds"])
            result["measurements"] = {
                **measured,
                "calls": {name: text for name, (text, _fn) in calls.items()},
                "untargeted": list(UNTARGETED),
            }
        finally:
            t.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    path = write_result(result, args.out)
    print_block(result, path)


if __name__ == "__main__":
    main()
