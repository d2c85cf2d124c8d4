"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM_VENV = Path(os.environ.get("CONSIST_UPSTREAM_VENV", "/tmp/consist-upstream-venv"))
UPSTREAM_VERSION = "0.3.5"


def timed(fn: Callable[[int], Any], n: int) -> dict[str, float]:
    """Run fn(i) n times; median/mean/p95 in milliseconds."""
    ts = []
    for i in range(n):
        s = time.perf_counter()
        fn(i)
        ts.append(time.perf_counter() - s)
    ts.sort()
    return {
        "n": n,
        "median_ms": 1000 * statistics.median(ts),
        "mean_ms": 1000 * statistics.fmean(ts),
        "p95_ms": 1000 * ts[max(0, int(0.95 * n) - 1)],
    }


def upstream_python() -> Path:
    """The interpreter of a venv holding the original consist (created on first use)."""
    py = UPSTREAM_VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(UPSTREAM_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", f"consist=={UPSTREAM_VERSION}"], check=True)
    return py


def make_big_file(path: Path, size: int) -> None:
    """Random bytes, aged 10 s so neither tool treats it as just written."""
    if not path.exists() or path.stat().st_size != size:
        chunk = os.urandom(1 << 20)
        with open(path, "wb") as f:
            for _ in range(size >> 20):
                f.write(chunk)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, time.time_ns() - 10**10))


def dump(obj: Any) -> None:
    print("RESULT " + json.dumps(obj), flush=True)
