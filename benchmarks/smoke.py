"""Run every benchmark at tiny sizes, so none of them rots; speed is not checked.

    .venv/bin/python benchmarks/smoke.py [--only NAME ...] [--keep DIR]

Each benchmark script runs as a process of its own with its smallest sizes, writes
its results file into a temporary folder (never benchmarks/results/), and the file
is rendered by benchmarks/render.py as BENCHMARKS.md would render it. A script
that fails, writes no results file, or whose file cannot be rendered fails the
smoke run, naming it. The test command runs this (tests/test_benchmarks_smoke.py).
Benchmarks that compare with the original consist run without it here (its
virtual environment takes minutes to install).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: name -> arguments that make the benchmark tiny.
SMOKE: dict[str, list[str]] = {
    "calls": ["--quick"],
    "cli": ["--quick"],
    "cluster": ["--quick"],
    "containers": ["--n", "1", "--no-upstream"],
    "core": ["--quick", "--no-upstream"],
    "dirs": ["--files", "200", "--rounds", "1"],
    "growth": ["--quick"],
    "lookups": ["--runs", "2000"],
    "merge": ["--runs", "500"],
    "miss": ["--quick"],
    "restore": ["--n", "1", "--size-mib", "2", "--files", "20"],
    "sweep": ["--quick"],
}


def run_one(name: str, args: list[str], out_dir: Path, timeout: float) -> tuple[bool, str]:
    out = out_dir / f"{name}.json"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(HERE / f"bench_{name}.py"), *args, "--out", str(out)],
        capture_output=True, text=True, timeout=timeout, cwd=HERE.parent,
    )  # fmt: skip
    took = time.monotonic() - started
    if proc.returncode != 0:
        return False, f"exit {proc.returncode} after {took:.0f} s\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    if not out.is_file():
        return False, "wrote no results file"
    result = json.loads(out.read_text())
    if result.get("benchmark") != name:
        return False, f"the results file names benchmark {result.get('benchmark')!r}"
    render = subprocess.run(
        [sys.executable, str(HERE / "render.py"), str(out)], capture_output=True, text=True, timeout=120
    )
    if render.returncode != 0 or "|" not in render.stdout:
        return False, f"its results file does not render:\n{render.stderr[-2000:]}"
    return True, f"ok in {took:.0f} s"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=sorted(SMOKE), help="these benchmarks only")
    ap.add_argument("--keep", help="write the results files here (default: a temporary folder, removed)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per benchmark")
    args = ap.parse_args()
    names = args.only or sorted(SMOKE)
    missing = sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py")) != sorted(SMOKE)
    if missing:
        print("smoke.py does not know every benchmarks/bench_*.py: add it to SMOKE", file=sys.stderr)
        return 1
    failed = []
    with tempfile.TemporaryDirectory(prefix="bench-smoke-") as tmp:
        out_dir = Path(args.keep) if args.keep else Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in names:
            ok, detail = run_one(name, SMOKE[name], out_dir, args.timeout)
            print(f"{name:<12} {detail if ok else 'FAILED: ' + detail}", flush=True)
            if not ok:
                failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
