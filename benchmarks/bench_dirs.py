"""Directory outputs of many small files: storing and restoring them against ``cp -r``.

    .venv/bin/python benchmarks/bench_dirs.py [--files N] [--kib K] [--rounds R] [--quick] [--out FILE]

On the root disk (under /var/tmp) and on tmpfs (/dev/shm), each round makes a new
directory of N files of K KiB in 100 subfolders, with bytes never seen before
(untimed), then times three arms in rotating order:

- ``cp -r`` of that directory to a new place;
- a ``tracker.run`` miss whose step only renames a prepared copy of the directory
  into place (one rename): what the call adds is storing the directory (reading,
  hashing and writing every file into the object store, flushed to disk) and
  recording the run with one member artifact per file;
- a ``tracker.run`` hit whose directory output was deleted: the hit checks every
  object and copies it back, verified, into a folder renamed into place.

Before each timed arm the page cache is written back (``sync``, untimed), so that
no arm pays for the disk writes of an earlier one. ``cp -r`` neither hashes nor
flushes anything to disk. Ratios are consist / ``cp -r``,
as a ratio of medians and as the median of the per-round ratios.
Writes benchmarks/results/dirs-<date>-<time>.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import finish, fs_type, new_result, rotation, summary  # noqa: E402

PARAMS = {"files": 10_000, "kib": 4, "rounds": 11}
QUICK = {"files": 500, "kib": 4, "rounds": 3}
TARGETS = {"store_ratio": 2.0, "restore_ratio": 1.2}
PLACES = {"root disk": "/var/tmp", "tmpfs": "/dev/shm"}


def make_dir(root: Path, files: int, size: int) -> None:
    for i in range(files):
        sub = root / f"d{i % 100:02d}"
        if i < 100:
            sub.mkdir(parents=True)
        (sub / f"f{i:06d}.bin").write_bytes(os.urandom(size))


def measure(base: Path, files: int, size: int, rounds: int) -> dict[str, Any]:
    from consist import Tracker

    work = Path(tempfile.mkdtemp(prefix="bench-dirs-", dir=base))
    try:
        tracker = Tracker(work / "runs", code_version="v")

        def step(r: int) -> Path:
            out = work / "runs" / f"out_{r}"
            os.replace(work / f"prepared_{r}", out)  # the step's own work: one rename
            return out

        def call(r: int) -> Any:
            return tracker.run(step, name="dirs", config={"r": r}, outputs=["tables"])

        # The directory every restore arm puts back (its round -1 is stored once, untimed).
        make_dir(work / "prepared_-1", files, size)
        assert not call(-1).cache_hit
        got: dict[str, list[float]] = {"cp -r": [], "store": [], "restore": []}
        first = []
        for r in range(rounds):
            src = work / f"src_{r}"
            make_dir(src, files, size)
            subprocess.run(["cp", "-r", str(src), str(work / f"prepared_{r}")], check=True)
            shutil.rmtree(work / "runs" / "out_-1")

            def cp(r: int = r, src: Path = src) -> float:
                s = time.perf_counter()
                subprocess.run(["cp", "-r", str(src), str(work / f"copy_{r}")], check=True)
                return time.perf_counter() - s

            def store(r: int = r) -> float:
                s = time.perf_counter()
                result = call(r)
                elapsed = time.perf_counter() - s
                assert not result.cache_hit
                return elapsed

            def restore() -> float:
                s = time.perf_counter()
                result = call(-1)
                elapsed = time.perf_counter() - s
                assert result.cache_hit and (work / "runs" / "out_-1" / "d00").is_dir()
                return elapsed

            arms = {"cp -r": cp, "store": store, "restore": restore}
            order = rotation(list(arms), r)
            first.append(order[0])
            for name in order:
                os.sync()  # untimed: no arm pays for writing back what an earlier one left in memory
                got[name].append(arms[name]())
            for p in (src, work / f"copy_{r}", work / "runs" / f"out_{r}"):
                shutil.rmtree(p)
        restored = sorted(p.relative_to(work / "runs" / "out_-1") for p in (work / "runs" / "out_-1").rglob("*.bin"))
        tracker.close()
        out: dict[str, Any] = {"file_system": fs_type(work), "first": first,
                               "arms": {k: summary(v) for k, v in got.items()},
                               "files_restored_last_round": len(restored)}  # fmt: skip
        for arm in ("store", "restore"):
            ours, cp_s = got[arm], got["cp -r"]
            out[f"{arm}_ratio_of_medians"] = statistics.median(ours) / statistics.median(cp_s)
            out[f"{arm}_median_paired_ratio"] = statistics.median(o / c for o, c in zip(ours, cp_s, strict=True))
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, help="files per directory")
    ap.add_argument("--kib", type=int, help="size of each file in KiB")
    ap.add_argument("--rounds", type=int, help="rounds per file system")
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not for publication")
    ap.add_argument("--out", help="results file (default: benchmarks/results/dirs-<date>-<time>.json)")
    args = ap.parse_args()
    params: dict[str, Any] = {**(QUICK if args.quick else PARAMS), "quick": args.quick}
    for key in ("files", "kib", "rounds"):
        if getattr(args, key):
            params[key] = getattr(args, key)
    result = new_result("dirs", Path(PLACES["root disk"]), params)
    result["targets"] = TARGETS
    result["places"] = {}
    for label, where in PLACES.items():
        if not Path(where).is_dir():
            continue
        r = measure(Path(where), params["files"], params["kib"] * 1024, params["rounds"])
        result["places"][label] = r
        print(f"{label} ({r['file_system']}): store {r['store_ratio_of_medians']:.2f}x cp -r, "
              f"restore {r['restore_ratio_of_medians']:.2f}x cp -r", flush=True)  # fmt: skip
    finish(result, args.out)


if __name__ == "__main__":
    main()
