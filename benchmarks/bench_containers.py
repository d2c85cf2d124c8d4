"""run_container overhead: against a bare `docker run`, and against the original consist 0.3.5.

    python benchmarks/bench_containers.py [--n 15] [--no-upstream]

Needs a Docker daemon and the busybox test image (scripts/setup-containers.sh).
Measures medians of: a bare `docker run --rm` of the command; a run_container miss
of the same command (the environment varies per call so every call misses);
a run_container hit with a small output (and checks that no container started);
the same miss and hit with consist 0.3.5 in its own virtual environment, on the
same engine; and hits on Podman and Apptainer.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, UPSTREAM_VENV, UPSTREAM_VERSION, timed

IMAGE = os.environ.get("BENCH_IMAGE", "local/busybox:test")
SIF = os.environ.get("BENCH_SIF", "/tmp/ci-containers/busybox.sif")
CMD = ["sh", "-c", "echo $STEP >> /counter/n; echo $STEP > /out/result.txt"]


def bare_call(work: Path):
    (work / "out").mkdir(exist_ok=True)
    (work / "counter").mkdir(exist_ok=True)

    def call(i: int) -> None:
        subprocess.run(
            ["docker", "run", "--rm", "--mount", f"type=bind,source={work}/out,target=/out",
             "--mount", f"type=bind,source={work}/counter,target=/counter", "--env", f"STEP={i}", IMAGE, *CMD],
            check=True, capture_output=True,
        )  # fmt: skip

    call(-1)
    return call


def ours(work: Path, n: int, engine: str, image: str, bare: object = None) -> dict:
    from consist import Tracker
    from consist.integrations.containers import run_container

    os.chdir(work)
    Path("counter").mkdir(exist_ok=True)
    t = Tracker(work / "runs", db_path=work / "prov.duckdb", project_root=work)

    def call(step: str) -> object:
        return run_container(
            t, "bench", image, CMD, {"./out": "/out", "./counter": "/counter"}, [], ["./out/result.txt"],
            environment={"STEP": step}, backend_type=engine,
        )  # fmt: skip

    call("warm")  # imports the engine SDK, starts nothing new afterwards
    res = {}
    if bare is not None:
        # Interleave bare runs and misses so drift on a shared machine hits both alike.
        bare_t, miss_t = [], []
        for i in range(n):
            s = time.perf_counter()
            bare(i)  # type: ignore[operator]
            bare_t.append(time.perf_counter() - s)
            s = time.perf_counter()
            call(f"miss{i}")
            miss_t.append(time.perf_counter() - s)
        res["bare"] = {"n": n, "median_ms": 1000 * statistics.median(bare_t)}
        res["miss"] = {"n": n, "median_ms": 1000 * statistics.median(miss_t)}
        res["miss_overhead_pct_paired"] = 100 * (statistics.median(m / b for m, b in zip(miss_t, bare_t)) - 1)
    before = len(Path("counter/n").read_text().splitlines())
    res["hit"] = timed(lambda i: call("warm"), max(n, 20))
    res["container_starts_during_hits"] = len(Path("counter/n").read_text().splitlines()) - before
    t.close()
    return res


UPSTREAM_DRIVER = r"""
import json, os, statistics, subprocess, sys, time, logging
from pathlib import Path
logging.disable(logging.WARNING)
from consist import Tracker
from consist.integrations.containers import run_container
work, n, image = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
os.chdir(work)
subprocess.run(["git", "init", "-q"], check=True)
subprocess.run(["git", "-c", "user.email=b@b", "-c", "user.name=b", "commit", "-q", "--allow-empty", "-m", "x"],
               check=True)
Path("runs/out").mkdir(parents=True, exist_ok=True)
Path("runs/counter").mkdir(parents=True, exist_ok=True)
t = Tracker(run_dir=work / "runs", db_path=work / "prov.duckdb", mounts={"work": str(work)})
CMD = ["sh", "-c", "echo $STEP >> /counter/n; echo $STEP > /out/result.txt"]
def call(step):
    vols = {str(work / "runs/out"): "/out", str(work / "runs/counter"): "/counter"}
    return run_container(t, "bench", image, CMD, vols, [], [str(work / "runs/out/result.txt")],
                         environment={"STEP": step})
def timed(fn, k):
    ts = []
    for i in range(k):
        s = time.perf_counter(); fn(i); ts.append(time.perf_counter() - s)
    return {"n": k, "median_ms": 1000 * statistics.median(ts)}
call("warm")
res = {"miss": timed(lambda i: call(f"miss{i}"), n)}
before = len(Path("runs/counter/n").read_text().splitlines())
res["hit"] = timed(lambda i: call("warm"), n)
res["container_starts_during_hits"] = len(Path("runs/counter/n").read_text().splitlines()) - before
print("RESULT " + json.dumps(res))
"""


def upstream(work: Path, n: int) -> dict:
    py = UPSTREAM_VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(UPSTREAM_VENV)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", f"consist[docker,git]=={UPSTREAM_VERSION}"], check=True)
    drv = work / "driver.py"
    drv.write_text(UPSTREAM_DRIVER)
    out = subprocess.run([str(py), str(drv), str(work), str(n), IMAGE], capture_output=True, text=True, cwd=work)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    return json.loads([x for x in out.stdout.splitlines() if x.startswith("RESULT ")][-1][7:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--no-upstream", action="store_true")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="consist_cbench_"))
    res: dict = {"image": IMAGE}
    try:
        for name in ("bare", "ours", "upstream", "podman", "apptainer"):
            (base / name).mkdir()
        res["ours_docker"] = ours(base / "ours", args.n, "docker", IMAGE, bare_call(base / "bare"))
        res["bare_docker_run"] = res["ours_docker"].pop("bare")
        if shutil.which("podman"):
            res["ours_podman"] = ours(base / "podman", args.n, "podman", IMAGE)
        if shutil.which("apptainer") and Path(SIF).exists():
            res["ours_apptainer"] = ours(base / "apptainer", args.n, "apptainer", SIF)
        if not args.no_upstream:
            res["upstream_docker"] = upstream(base / "upstream", args.n)
    finally:
        os.chdir(ROOT)
        shutil.rmtree(base, ignore_errors=True)
    o, b, u = res["ours_docker"], res["bare_docker_run"], res.get("upstream_docker", {})
    res["miss_overhead_pct"] = 100 * (o["miss"]["median_ms"] / b["median_ms"] - 1)
    print(json.dumps(res, indent=1))
    rows = [
        ("bare `docker run --rm` (same command)", f"{b['median_ms']:.0f} ms", "", ""),
        ("`run_container` miss (Docker)", f"{o['miss']['median_ms']:.0f} ms",
         f"{u['miss']['median_ms']:.0f} ms" if "miss" in u else u.get("error", "n/a"),
         f"overhead over bare run {res['miss_overhead_pct']:+.1f}% of medians, "
         f"{o['miss_overhead_pct_paired']:+.1f}% median of paired ratios (target ≤ 10%)"),
        ("`run_container` hit, small output (Docker)", f"{o['hit']['median_ms']:.1f} ms",
         f"{u['hit']['median_ms']:.0f} ms" if "hit" in u else "n/a",
         f"{o['container_starts_during_hits']} starts in {o['hit']['n']} hits (target ≤ 15 ms, 0 starts)"),
    ]  # fmt: skip
    if "hit" in u:
        rows.append(
            ("… speed-up of the hit over 0.3.5", f"{u['hit']['median_ms'] / o['hit']['median_ms']:.0f}x", "", "")
        )
    for eng in ("podman", "apptainer"):
        if f"ours_{eng}" in res:
            r = res[f"ours_{eng}"]
            rows.append((f"`run_container` hit ({eng})", f"{r['hit']['median_ms']:.1f} ms", "not measured",
                         f"{r['container_starts_during_hits']} container starts"))  # fmt: skip
    print("| measurement (median) | consist (this) | consist 0.3.5 | note |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
