"""run_container overhead: against a bare `docker run`, and against the original consist 0.3.5.

    .venv/bin/python benchmarks/bench_containers.py [--n 30] [--no-upstream] [--out FILE]

Needs a Docker daemon and the busybox test image (scripts/setup-containers.sh);
Podman and Apptainer are measured when present. Each library runs in a worker
process of its own (benchmarks/container_worker.py). Measured: misses (the
environment changes per call) of this consist and of the original, against a
bare `docker run --rm` of the same command, the three interleaved in rotating
order; hits with one small output of both libraries, alternating which goes
first, counting container starts; hits on Podman (also the first hit in a new
process) and Apptainer, this consist only.

Writes every sample to benchmarks/results/containers-<date>-<time>.json and
prints the Markdown table that benchmarks/render.py makes from that file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import ROOT, Worker, compare, interleaved, new_result, print_block, summary, upstream_python, write_result  # noqa: E402

IMAGE = os.environ.get("BENCH_IMAGE", "local/busybox:test")
SIF = os.environ.get("BENCH_SIF", "/tmp/ci-containers/busybox.sif")
CMD = ["sh", "-c", "echo $STEP >> /counter/n; echo $STEP > /out/result.txt"]
TARGETS = {"miss_overhead": {"max_pct": 5}, "hit": {"max_ms": 15, "starts": 0}}
FIRST_HIT_PROCESSES = 5


def say(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, file=sys.stderr, flush=True)


def bare_call(work: Path):
    (work / "out").mkdir(parents=True, exist_ok=True)
    (work / "counter").mkdir(exist_ok=True)

    def call(i: int) -> float:
        s = time.perf_counter()
        subprocess.run(
            ["docker", "run", "--rm", "--mount", f"type=bind,source={work}/out,target=/out",
             "--mount", f"type=bind,source={work}/counter,target=/counter", "--env", f"STEP={i}", IMAGE, *CMD],
            check=True, capture_output=True,
        )  # fmt: skip
        return time.perf_counter() - s

    call(-1)
    return call


def worker(side: str, work: Path, engine: str, image: str, warm: bool = True) -> tuple[Worker, str]:
    py = sys.executable if side == "consist" else str(upstream_python())
    work.mkdir(exist_ok=True)
    w = Worker(py, HERE / "container_worker.py", "ours" if side == "consist" else "upstream")
    version = w.call("setup", work=str(work), engine=engine, image=image, warm=warm)["version"]
    return w, version


def hits_only(w: Worker, n: int) -> dict[str, Any]:
    before = w.call("starts")["starts"]
    samples = [w.seconds("hit") for _ in range(n)]
    return {"consist": summary(samples), "starts": {"consist": w.call("starts")["starts"] - before}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=30, help="rounds (and hits per engine)")
    ap.add_argument("--no-upstream", action="store_true")
    ap.add_argument("--out", help="results file (default: benchmarks/results/containers-<date>-<time>.json)")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="consist_cbench_"))
    params = {"n": args.n, "image": IMAGE, "sif": SIF, "command": CMD, "first_hit_processes": FIRST_HIT_PROCESSES,
              "upstream": not args.no_upstream}  # fmt: skip
    result = new_result("containers", base, params)
    result["targets"] = TARGETS
    m: dict[str, Any] = {}
    result["measurements"] = m
    result["versions"] = {}
    workers: dict[str, Worker] = {}
    try:
        sides = ["consist"] if args.no_upstream else ["consist", "upstream"]
        for side in sides:
            workers[side], result["versions"][side] = worker(side, base / side, "docker", IMAGE)
        bare = bare_call(base / "bare")
        say(f"docker misses: {args.n} rounds of bare run, consist, consist 0.3.5")
        arms = {"bare": bare}
        for side, w in workers.items():
            arms[side] = lambda i, w=w: w.seconds("miss", i=i)
        r = interleaved(arms, args.n)
        miss: dict[str, Any] = {"rounds": args.n, "first": r["first"], **r["arms"], "overhead_pct": {}}
        for side in workers:
            c = compare(miss["bare"], miss[side])
            miss["overhead_pct"][side] = {k: 100 * (v - 1) for k, v in c.items()}
        if "upstream" in workers:
            miss["upstream_vs_consist"] = compare(miss["consist"], miss["upstream"])
        m["miss"] = miss
        say(f"docker hits: {args.n} rounds")
        before = {side: w.call("starts")["starts"] for side, w in workers.items()}
        r = interleaved({side: (lambda i, w=w: w.seconds("hit")) for side, w in workers.items()}, args.n)
        hit: dict[str, Any] = {"rounds": args.n, "first": r["first"], **r["arms"]}
        hit["starts"] = {side: w.call("starts")["starts"] - before[side] for side, w in workers.items()}
        if "upstream" in workers:
            hit.update(compare(hit["consist"], hit["upstream"]))
        m["hit"] = hit
        for w in workers.values():
            w.call("close")
            w.close()
        workers.clear()
        if shutil.which("podman"):
            say("podman hits")
            w, _ = worker("consist", base / "podman", "podman", IMAGE)
            m["podman_hit"] = hits_only(w, args.n)
            w.call("close")
            w.close()
            firsts = []
            for _ in range(FIRST_HIT_PROCESSES):  # a new process: the image resolution is not cached yet
                w, _ = worker("consist", base / "podman", "podman", IMAGE, warm=False)
                firsts.append(w.seconds("hit"))
                w.call("close")
                w.close()
            m["podman_first_hit"] = {"consist": summary(firsts)}
        if shutil.which("apptainer") and Path(SIF).exists():
            say("apptainer hits")
            w, _ = worker("consist", base / "apptainer", "apptainer", SIF)
            m["apptainer_hit"] = hits_only(w, args.n)
            w.call("close")
            w.close()
    finally:
        for w in workers.values():
            w.close()
        os.chdir(ROOT)
        shutil.rmtree(base, ignore_errors=True)
    path = write_result(result, args.out)
    say(f"wrote {path}")
    print_block(result, path)


if __name__ == "__main__":
    main()
