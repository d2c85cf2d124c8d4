"""Several processes sharing one database: nothing lost, hits across processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb

WORKER = Path(__file__).with_name("mp_worker.py")


def _phase(tmp_path: Path, phase: str, owners: list[int]) -> list[list[dict]]:
    db = tmp_path / "shared.duckdb"
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(db), str(tmp_path / f"runs_w{w}"), str(w), phase, str(owners[w])],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(4)
    ]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr
        out.append(json.loads(stdout))
    return out


def test_four_processes_share_one_database(tmp_path: Path) -> None:
    first = _phase(tmp_path, "a", owners=[0, 1, 2, 3])
    assert all(not r["hit"] for rs in first for r in rs)

    # Each process now asks for what another process produced: all hits, from the producer.
    second = _phase(tmp_path, "b", owners=[1, 2, 3, 0])
    for w, rs in enumerate(second):
        owner = [1, 2, 3, 0][w]
        assert all(r["hit"] for r in rs)
        assert [r["source"] for r in rs] == [f"pa_w{owner}_n{n}" for n in range(25)]

    con = duckdb.connect(str(tmp_path / "shared.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM run").fetchone() == (200,)
        assert con.execute("SELECT count(*) FROM run WHERE status = 'completed'").fetchone() == (200,)
        assert con.execute("SELECT count(*) FROM run WHERE cache_hit").fetchone() == (100,)
        assert con.execute("SELECT count(*) FROM run_artifact WHERE direction = 'output'").fetchone() == (200,)
        ids = {r[0] for r in con.execute("SELECT id FROM run").fetchall()}
    finally:
        con.close()
    assert ids == {f"p{ph}_w{w}_n{n}" for ph in "ab" for w in range(4) for n in range(25)}
