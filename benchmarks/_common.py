"""Helpers shared by the benchmark scripts and their workers.

This module must import under the original consist's virtual environment too:
it uses the standard library only and never imports consist.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
UPSTREAM_VENV = Path(os.environ.get("CONSIST_UPSTREAM_VENV", "/tmp/consist-upstream-venv"))
UPSTREAM_VERSION = "0.3.5"
UPSTREAM_EXTRAS = "docker,git"
SCHEMA = 1


# ---------------------------------------------------------------------------- samples


def summary(seconds: Sequence[float]) -> dict[str, Any]:
    """Every sample (in milliseconds, in the order taken) with its count, median, mean, min and max."""
    ms = [1000.0 * s for s in seconds]
    return {
        "n": len(ms),
        "median_ms": statistics.median(ms),
        "mean_ms": statistics.fmean(ms),
        "min_ms": min(ms),
        "max_ms": max(ms),
        "samples_ms": ms,
    }


def timed(fn: Callable[[int], Any], n: int) -> dict[str, Any]:
    """Run fn(i) n times in a row; a summary of the wall times."""
    ts = []
    for i in range(n):
        s = time.perf_counter()
        fn(i)
        ts.append(time.perf_counter() - s)
    return summary(ts)


def rotation(arms: Sequence[str], i: int) -> list[str]:
    """The order of the arms in round i: rotated by one each round.

    With two arms this alternates which runs first (AB, BA, AB, ...); with k arms,
    each arm takes each position once in every k rounds.
    """
    k = i % len(arms)
    return [*arms[k:], *arms[:k]]


def interleaved(arms: dict[str, Callable[[int], float]], n: int) -> dict[str, Any]:
    """n rounds; in each, every arm runs once (fn(i) returns its own elapsed seconds), in rotating order.

    Returns {"rounds": n, "first": [arm that ran first in each round], "arms": {name: summary}}.
    """
    names = list(arms)
    got: dict[str, list[float]] = {a: [] for a in names}
    first = []
    for i in range(n):
        order = rotation(names, i)
        first.append(order[0])
        for a in order:
            got[a].append(arms[a](i))
    return {"rounds": n, "first": first, "arms": {a: summary(got[a]) for a in names}}


def compare(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float]:
    """theirs / ours: ratio of medians, and the median of the per-round ratios."""
    pairs = zip(theirs["samples_ms"], ours["samples_ms"], strict=True)
    return {
        "ratio_of_medians": theirs["median_ms"] / ours["median_ms"],
        "median_paired_ratio": statistics.median(t / o for t, o in pairs),
    }


def stopwatch(fn: Callable[[], Any]) -> float:
    s = time.perf_counter()
    fn()
    return time.perf_counter() - s


# ---------------------------------------------------------------------------- workers


class Worker:
    """A benchmark worker in another interpreter, driven by JSON lines.

    The worker (see serve()) times each operation itself and answers with the
    elapsed seconds, so the pipe adds nothing to a measurement.
    """

    def __init__(self, python: Path | str, script: Path, *args: str, cwd: Path | None = None) -> None:
        self.log = tempfile.NamedTemporaryFile("w+", prefix="consist-bench-worker-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [str(python), str(script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            cwd=cwd,
        )
        self.ready = self._reply()

    def _reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("REPLY "):
                msg = json.loads(line[6:])
                if not msg.get("ok"):
                    raise RuntimeError(f"worker failed: {msg.get('error')}")
                return msg
        self.log.seek(0)
        raise RuntimeError("worker ended without answering:\n" + self.log.read()[-4000:])

    def send(self, op: str, **args: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, "args": args}) + "\n")
        self.proc.stdin.flush()

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        self.send(op, **args)
        return self._reply()

    def receive(self) -> dict[str, Any]:
        """The answer to an operation sent with send()."""
        return self._reply()

    def seconds(self, op: str, **args: Any) -> float:
        return float(self.call(op, **args)["s"])

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)


def serve(handlers: dict[str, Callable[..., dict[str, Any]]]) -> None:
    """The worker side: answer READY, then one JSON line per operation read from stdin."""
    # Replies go to a private copy of stdout; file descriptor 1 (and sys.stdout) become stderr,
    # so whatever the library or its subprocesses print stays off the reply channel.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def reply(msg: dict[str, Any]) -> None:
        out.write("REPLY " + json.dumps(msg) + "\n")
        out.flush()

    reply({"ok": True, "pid": os.getpid()})
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        try:
            res = handlers[req["op"]](**req["args"])
            reply({"ok": True, **res})
        except Exception:
            reply({"ok": False, "error": traceback.format_exc()})


# ---------------------------------------------------------------------------- the original consist


def upstream_python() -> Path:
    """The interpreter of a virtual environment holding the original consist (created on first use)."""
    py = UPSTREAM_VENV / "bin" / "python"
    probe = [str(py), "-c", f"import consist, sys; sys.exit(consist.__version__ != {UPSTREAM_VERSION!r})"]
    if py.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return py
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(UPSTREAM_VENV)], check=True)
    spec = f"consist[{UPSTREAM_EXTRAS}]=={UPSTREAM_VERSION}"
    subprocess.run([str(py), "-m", "pip", "install", "-q", spec], check=True)
    return py


# ---------------------------------------------------------------------------- files


def make_big_file(path: Path, size: int) -> None:
    """Random bytes, aged 10 s so neither tool treats it as just written."""
    if not path.exists() or path.stat().st_size != size:
        chunk = os.urandom(1 << 20)
        with open(path, "wb") as f:
            for _ in range(size >> 20):
                f.write(chunk)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, time.time_ns() - 10**10))


def fs_type(path: Path) -> str:
    found = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", str(path)], capture_output=True, text=True)
    return (found.stdout.split() or ["unknown"])[-1]  # the innermost of stacked mounts


# ---------------------------------------------------------------------------- results files


def command_line() -> str:
    """The command that ran this script, with paths inside the repository made relative to it."""

    def rel(arg: str) -> str:
        p = Path(arg)
        if p.is_absolute():
            try:
                return str(p.relative_to(ROOT))
            except ValueError:
                return arg
        return arg

    exe = sys.executable
    if os.environ.get("VIRTUAL_ENV") and not exe.startswith(os.environ["VIRTUAL_ENV"]):
        exe = str(Path(os.environ["VIRTUAL_ENV"]) / "bin" / "python")
    script = Path(sys.argv[0]).resolve()
    return shlex.join([rel(exe), rel(str(script)), *sys.argv[1:]])


def _first_line(path: str, prefix: str) -> str:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip() if ":" in line else line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "unknown"


def machine(work: Path) -> dict[str, Any]:
    """Facts about the machine a run was measured on."""
    mem_kib = _first_line("/proc/meminfo", "MemTotal")
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _first_line("/proc/cpuinfo", "model name"),
        "memory_gib": round(int(mem_kib.split()[0]) / 2**20, 1) if mem_kib != "unknown" else None,
        "os": _first_line("/etc/os-release", "PRETTY_NAME="),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "file_system": fs_type(work),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    import hashlib

    diff = git("diff", "HEAD", "--", "src")
    return {
        "commit": git("rev-parse", "HEAD"),
        "src_dirty": bool(diff),  # the measured library had changes not yet committed
        "src_diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None,
    }


def new_result(benchmark: str, work: Path, parameters: dict[str, Any]) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    return {
        "benchmark": benchmark,
        "schema": SCHEMA,
        "date": now.strftime("%Y-%m-%d"),
        "started_at": now.isoformat(timespec="seconds"),
        "command": command_line(),
        "machine": machine(work),
        "code": git_state(),
        "parameters": parameters,
    }


def write_result(result: dict[str, Any], out: str | None = None) -> Path:
    """Write the results file (benchmarks/results/<benchmark>-<date>-<HHMM>.json unless out is given)."""
    now = dt.datetime.now(dt.UTC)
    result["finished_at"] = now.isoformat(timespec="seconds")
    result.setdefault("duration_s", round((now - dt.datetime.fromisoformat(result["started_at"])).total_seconds()))
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if out:
        path = Path(out)
    else:
        RESULTS.mkdir(parents=True, exist_ok=True)
        quick = "-quick" if result["parameters"].get("quick") else ""
        path = RESULTS / f"{result['benchmark']}-{now.strftime('%Y-%m-%d-%H%M')}{quick}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path


def print_block(result: dict[str, Any], path: Path) -> None:
    """Print the BENCHMARKS.md block that benchmarks/render.py makes of a results file just written."""
    from render import render

    root = Path(__file__).resolve().parent.parent
    print(render(result, str(path.relative_to(root)) if path.is_relative_to(root) else str(path)))


def finish(result: dict[str, Any], out: str | None = None) -> Path:
    """Write the results file, print its BENCHMARKS.md block and where it went; returns its path."""
    path = write_result(result, out)
    print_block(result, path)
    print(f"results: {path}")
    return path
