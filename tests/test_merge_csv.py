"""Merges load index rows into DuckDB through CSV files: every value arrives unchanged.

The lines are formatted by SQLite (``quote()``) or, for rows it cannot format and
for indexes of other kinds, by Python; DuckDB reads them with every column's type
given. These tests send awkward values through both and compare what DuckDB holds
with what the index holds, and attack the files the merge writes.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

import consist
from consist.store import csvload
from consist.store.columns import ARTIFACT_COLUMNS, HOST, LINK_COLUMNS, RUN_COLUMNS
from consist.store.duck import DuckStore
from consist.store.index import RunIndex
from consist.store.sqlite import SQLiteIndex

AWKWARD = [
    "", "NULL", "null", "\\N", "'", "''", '"', "a,b", "line\nbreak", "cr\rlf\r\n", "tab\tbed", "back\\slash",
    "é ü ß 漢字 🚀", "x" * 5000, "nul\x00inside", "\x00", "ends with quote'", "'starts", " spaced ",
]  # fmt: skip
TIMES = [0.0, 1.0, -1.0, -0.5, 1e9 + 0.5e-6, 1e9 + 1.5e-6, 1e9 + 2.5e-6, 1700000000.123456, 543338112.7153881,
         -86400.25, 4102444800.999999, 1e9 + 0.9999995]  # fmt: skip


def naive_utc(value: float | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromtimestamp(value, dt.UTC).replace(tzinfo=None)


def run_row(run_id: str, **kw: object) -> dict:
    row: dict = {c: None for c in RUN_COLUMNS}
    row.update(id=run_id, name=run_id, model="m", status="completed", cache_hit=0, started_at=1e9, ended_at=1e9 + 1)
    row.update(kw)
    return row


def art_row(art_id: str, **kw: object) -> dict:
    row: dict = {c: None for c in ARTIFACT_COLUMNS}
    row.update(id=art_id, key="k", uri=f"/d/{art_id}", hash="sha256:h", size=1, kind="file", created_at=1e9)
    row.update(kw)
    return row


def fill(ix: SQLiteIndex, rng: random.Random, n: int) -> tuple[list[dict], list[dict], list[dict]]:
    """n runs, artifacts and links of awkward text, JSON, numbers, NULLs and times."""
    runs, arts, links = [], [], []
    with ix.write():
        for i in range(n):
            text = rng.choice(AWKWARD)
            config = json.dumps({"k": text, "n": [1, 2.5, None]}, indent=rng.choice([None, 2]))
            run = run_row(
                f"r{i}", name=text, model=rng.choice(AWKWARD), error=rng.choice([None, text]), config=config,
                identity=json.dumps({"code": text}), meta=rng.choice([None, json.dumps({"why": text})]),
                tags=json.dumps([text]), cache_hit=rng.choice([0, 1, None]), year=rng.choice([None, 2030, -5]),
                iteration=rng.choice([None, 0, 2**31 - 1]), pid=rng.choice([None, 1, 4194304]),
                started_at=rng.choice([*TIMES, rng.uniform(-1e9, 4e9)]), ended_at=rng.choice([None, *TIMES]),
            )  # fmt: skip
            art = art_row(f"a{i}", key=text, uri=f"/d/{text}", size=rng.choice([None, 0, 2**40 + 1]),
                          meta=rng.choice([None, json.dumps({"m": text})]), created_at=rng.choice(TIMES),
                          location=rng.choice([None, text]), run_id=f"r{i}")  # fmt: skip
            link = {"run_id": f"r{i}", "artifact_id": f"a{i}", "direction": "output", "key": text}
            ix.claim_run_id(run["id"], run)
            ix.add_artifact(art)
            ix.link(link["run_id"], link["artifact_id"], link["direction"], link["key"])
            runs.append(run)
            arts.append(art)
            links.append(link)
    return runs, arts, links


def duck_rows(path: Path, table: str, cols: tuple[str, ...]) -> dict[str, tuple]:
    select = ", ".join(f"CAST({c} AS VARCHAR)" if c in ("config", "identity", "meta", "tags") else c for c in cols)
    con = duckdb.connect(str(path), read_only=True)
    try:
        got = con.execute(f"SELECT {select} FROM {table}").fetchall()
    finally:
        con.close()
    key = 0 if table != "run_artifact" else 1
    return {r[key]: r for r in got}


def expected(row: dict, cols: tuple[str, ...]) -> tuple:
    out = []
    for c in cols:
        v = row.get(c)
        if c in ("started_at", "ended_at", "created_at"):
            v = naive_utc(v)
        elif c == "cache_hit":
            v = bool(v)
        out.append(v)
    return tuple(out)


@pytest.mark.parametrize("lines", ["sqlite", "python"])
def test_awkward_values_reach_duckdb_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lines: str) -> None:
    """Quotes, separators, line breaks, NUL characters, long and non-ASCII text, NULL beside the text
    'NULL', pretty-printed JSON, large sizes and times on half-microsecond ties or before 1970."""
    ix = SQLiteIndex(tmp_path / "ix" / "index.sqlite")
    runs, arts, links = fill(ix, random.Random(11), 400)
    if lines == "python":  # as an index of another kind formats them
        monkeypatch.setattr(ix, "merge_lines", lambda a, u: RunIndex.merge_lines(ix, a, u))
    assert DuckStore(tmp_path / "prov.duckdb", ix).sync() == 1200
    got = duck_rows(tmp_path / "prov.duckdb", "run", RUN_COLUMNS)
    assert got == {r["id"]: expected(r, RUN_COLUMNS) for r in runs}
    got = duck_rows(tmp_path / "prov.duckdb", "artifact", ARTIFACT_COLUMNS)
    assert got == {a["id"]: expected(a, ARTIFACT_COLUMNS) for a in arts}
    got = duck_rows(tmp_path / "prov.duckdb", "run_artifact", LINK_COLUMNS)
    assert got == {k["artifact_id"]: expected(k, LINK_COLUMNS) for k in links}
    assert [n for n in os.listdir(tmp_path / "ix") if n.endswith(".csv")] == []
    ix.close()


def test_rows_sqlite_cannot_quote_are_written_by_python(tmp_path: Path) -> None:
    ix = SQLiteIndex(tmp_path / "ix" / "index.sqlite")
    ix.claim_run_id("nul", run_row("nul", error="before\x00after", name="plain"))
    ix.claim_run_id("plain", run_row("plain", error="no nul"))
    lines = ix.merge_lines(-1, ix.max_seq())["run"]
    assert len(lines) == 2 and lines[1] == csvload.lines_of("run", [ix.run("nul")])[0]
    assert "before\x00after" in lines[1]
    ix.close()


def test_times_convert_exactly_as_python_does(tmp_path: Path) -> None:
    rng = random.Random(5)
    values = TIMES + [rng.uniform(-3e9, 5e9) for _ in range(3000)] + [k + 0.5e-6 for k in range(-50, 50)]
    ix = SQLiteIndex(tmp_path / "ix" / "index.sqlite")
    with ix.write():
        for i, v in enumerate(values):
            ix.add_artifact(art_row(f"a{i}", created_at=v))
    DuckStore(tmp_path / "prov.duckdb", ix).sync()
    got = duck_rows(tmp_path / "prov.duckdb", "artifact", ("id", "created_at"))
    assert {k: v[1] for k, v in got.items()} == {f"a{i}": naive_utc(v) for i, v in enumerate(values)}
    ix.close()


def test_a_link_planted_at_a_merge_file_is_never_written_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ix = SQLiteIndex(tmp_path / "ix" / "index.sqlite")
    ix.claim_run_id("r", run_row("r"))
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    monkeypatch.setattr(csvload, "_counter", itertools.count(7))
    (tmp_path / "ix" / f".merge-{HOST}-{os.getpid()}-7-run.csv").symlink_to(victim)
    duck = DuckStore(tmp_path / "prov.duckdb", ix)
    with pytest.raises(consist.StoreError, match="Cannot write the merge file") as err:
        duck.sync()
    assert "remove it" in str(err.value)
    assert victim.read_text() == "keep me"
    assert duck.sync() == 1  # the next merge writes a file of another name
    ix.close()


def test_merge_files_of_ended_processes_are_removed(tmp_path: Path) -> None:
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(ended.stdout)
    names = {
        "dead": f".merge-{HOST}-{dead}-0-run.csv",
        "mine": f".merge-{HOST}-{os.getpid()}-0-run.csv",
        "other host": f".merge-{HOST}x-{dead}-0-run.csv",
        "not a merge file": "index.sqlite",
    }
    for name in names.values():
        (tmp_path / name).write_text("x")
    old = tmp_path / f".merge-{HOST}-{os.getpid()}-1-run.csv"
    old.write_text("x")
    os.utime(old, (0, 0))  # a day old: its pid may be another process's by now
    csvload.remove_stale(tmp_path)
    assert sorted(os.listdir(tmp_path)) == sorted(n for k, n in names.items() if k != "dead")


def test_a_tracker_left_open_merges_its_runs_as_the_interpreter_exits(tmp_path: Path) -> None:
    """The merge at exit (DuckDB loaded, the tracker never closed) brings every run, many rows at once."""
    script = (
        "import duckdb\n"
        "from pathlib import Path\n"
        "from consist import Tracker\n"
        "t = Tracker('runs', code_version='v')\n"
        "def step(i):\n"
        "    p = Path('out') / f'{i}.txt'; p.parent.mkdir(exist_ok=True); p.write_text(str(i)); return p\n"
        "for i in range(300):\n"
        "    t.run(step, name='s', config={'i': i}, outputs=['o'])\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True, capture_output=True)
    con = duckdb.connect(str(tmp_path / "runs" / "provenance.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT count(*), count(DISTINCT config) FROM run").fetchone() == (300, 300)
        assert con.execute("SELECT count(*) FROM run_artifact WHERE direction = 'output'").fetchone() == (300,)
    finally:
        con.close()
