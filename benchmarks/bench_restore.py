"""Restoring cached outputs on a hit: consist against plain `cp` of the same bytes.

    python benchmarks/bench_restore.py [--n 5] [--size-mib 1024] [--files 10000]

On each file system available (the root disk, ext4 here; and, when run as root
with xfsprogs installed, an XFS file system with reflink on a loop device), a
tracker run produces one large file and, separately, a directory of many small
files. Each timed call deletes the output and calls the run again, so the hit
restores every byte from the object store; the baseline copies the same stored
object with `cp --reflink=auto` (coreutils' default) into the same place.
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
from _common import ROOT, dump, make_big_file

SMALL = 4096


def _xfs_mount(base: Path, size_mib: int) -> Path | None:
    if os.geteuid() != 0 or not shutil.which("mkfs.xfs"):
        return None
    image, mnt = base / "xfs.img", base / "xfs"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(max(size_mib * 3, 1024) << 20)  # sparse: object + clones share extents
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True, capture_output=True)
    if subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], capture_output=True).returncode != 0:
        return None
    return mnt


def _drop(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def measure(fs: Path, n: int, size_mib: int, files: int) -> dict:
    from consist import Tracker

    os.chdir(fs)
    src = fs / "source.bin"
    make_big_file(src, size_mib << 20)
    tree_src = fs / "source_tree"
    if not tree_src.exists():
        tree_src.mkdir()
        for i in range(files):
            (tree_src / f"part-{i:05d}.csv").write_bytes(os.urandom(SMALL))
    out = {}
    with Tracker(fs / "runs", project_root=fs) as t:

        def big() -> Path:
            shutil.copyfile(src, "big.bin")
            return Path("big.bin")

        def tree() -> Path:
            shutil.copytree(tree_src, "tree")
            return Path("tree")

        for name, fn, target in (("big_file", big, Path("big.bin")), ("small_files", tree, Path("tree"))):
            _drop(target)
            first = t.run(fn, name=name, outputs=[name])
            assert not first.cache_hit
            stored = t._objects.path_of(first.outputs[name].hash)

            def hit(_: int, fn=fn, name=name, target=target) -> None:
                r = t.run(fn, name=name, outputs=[name])
                assert r.cache_hit

            def before(target: Path = target) -> None:
                _drop(target)
                os.sync()

            def copy(_: int, target: Path = target, stored: Path = stored, name: str = name) -> None:
                if name == "big_file":
                    subprocess.run(["cp", "--reflink=auto", str(stored), str(target)], check=True)
                else:  # the same files, from the source tree (the store keeps them by content)
                    subprocess.run(["cp", "-r", "--reflink=auto", str(tree_src), str(target)], check=True)

            out[name] = _paired(before, hit, copy, n)
            _drop(target)
    return out


def _paired(setup, ours, baseline, n: int) -> dict:
    """n interleaved pairs (drift on a shared disk hits both alike), each call after setup()."""
    a, b = [], []
    for i in range(n):
        for fn, ts in ((ours, a), (baseline, b)):
            setup()
            s = time.perf_counter()
            fn(i)
            ts.append(time.perf_counter() - s)

    def summary(ts: list[float]) -> dict:
        return {"n": n, "median_ms": 1000 * statistics.median(ts), "all_ms": [round(1000 * x, 2) for x in ts]}

    return {
        "consist_hit": summary(a),
        "cp_reflink_auto": summary(b),
        "ratio": statistics.median(a) / statistics.median(b),
        "paired_ratio_median": statistics.median(x / y for x, y in zip(a, b)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--files", type=int, default=10_000)
    args = ap.parse_args()
    os.environ.setdefault("CONSIST_PROGRESS", "0")
    results: dict = {"n": args.n, "size_mib": args.size_mib, "files": args.files, "file_systems": {}}
    with tempfile.TemporaryDirectory(prefix="consist-bench-restore-", dir="/var/tmp") as base:
        base_path = Path(base)
        ext = base_path / "rootfs"
        ext.mkdir()
        found = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", str(ext)], capture_output=True, text=True)
        fs_type = found.stdout.strip() or "unknown file system"
        results["file_systems"][f"root disk ({fs_type})"] = measure(ext, args.n, args.size_mib, args.files)
        xfs = _xfs_mount(base_path, args.size_mib)
        try:
            if xfs is not None:
                results["file_systems"]["XFS with reflink (loop)"] = measure(xfs, args.n, args.size_mib, args.files)
            else:
                print("XFS not measured: needs root and mkfs.xfs", file=sys.stderr)
        finally:
            os.chdir(ROOT)
            if xfs is not None:
                subprocess.run(["umount", str(xfs)], check=False)
    dump(results)
    stamp = time.strftime("%Y-%m-%d")
    path = ROOT / "benchmarks" / "results" / f"restore-{stamp}.json"
    path.write_text(json.dumps(results, indent=1))
    print(f"wrote {path}")
    print("| file system | output | consist hit (restore) | `cp --reflink=auto` | ratio of medians | paired ratio |")
    print("|---|---|---|---|---|---|")
    for fs, rows in results["file_systems"].items():
        for name, row in rows.items():
            label = f"1 file of {args.size_mib} MiB" if name == "big_file" else f"{args.files:,} files of 4 KiB"
            print(
                f"| {fs} | {label} | {row['consist_hit']['median_ms']:.1f} ms "
                f"| {row['cp_reflink_auto']['median_ms']:.1f} ms | {row['ratio']:.2f} "
                f"| {row['paired_ratio_median']:.2f} |"
            )


if __name__ == "__main__":
    main()
