"""Restoring cached outputs on a hit: consist against plain `cp` of the same bytes.

    .venv/bin/python benchmarks/bench_restore.py [--n 11] [--size-mib 1024] [--files 10000] [--out FILE]

On each file system available (the root disk, ext4 here; and, when run as root
with xfsprogs installed, an XFS file system with reflink on a loop device), a
tracker run produces one large file and, separately, a directory of many small
files. Each timed call deletes the output and calls the run again, so the hit
restores every byte from the object store; the baseline copies the same stored
object with `cp --reflink=auto` (coreutils' default) into the same place.
The two alternate pair by pair, each going first in every other pair.

Writes every sample to benchmarks/results/restore-<date>-<time>.json and prints
the Markdown table that benchmarks/render.py makes from that file.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, compare, fs_type, interleaved, make_big_file, new_result, write_result

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
    """n pairs, alternating which goes first (drift on a shared disk hits both alike), each call after setup()."""

    def arm(fn):
        def call(i: int) -> float:
            setup()
            s = time.perf_counter()
            fn(i)
            return time.perf_counter() - s

        return call

    r = interleaved({"consist_hit": arm(ours), "cp_reflink_auto": arm(baseline)}, n)
    c = compare(r["arms"]["cp_reflink_auto"], r["arms"]["consist_hit"])  # consist / cp
    return {"rounds": n, "first": r["first"], **r["arms"], "ratio": c["ratio_of_medians"],
            "paired_ratio_median": c["median_paired_ratio"]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=11, help="pairs per case (odd: a well-defined median)")
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--out", help="results file (default: benchmarks/results/restore-<date>-<time>.json)")
    args = ap.parse_args()
    os.environ.setdefault("CONSIST_PROGRESS", "0")
    with tempfile.TemporaryDirectory(prefix="consist-bench-restore-", dir="/var/tmp") as base:
        base_path = Path(base)
        ext = base_path / "rootfs"
        ext.mkdir()
        params = {"n": args.n, "size_mib": args.size_mib, "size_gib": args.size_mib / 1024, "files": args.files,
                  "small_file_bytes": SMALL, "small_file_kib": SMALL / 1024}  # fmt: skip
        results = new_result("restore", ext, params)
        fsys: dict = {}
        results["file_systems"] = fsys
        fsys[f"root disk ({fs_type(ext)})"] = measure(ext, args.n, args.size_mib, args.files)
        xfs = _xfs_mount(base_path, args.size_mib)
        try:
            if xfs is not None:
                fsys["XFS with reflink (loop)"] = measure(xfs, args.n, args.size_mib, args.files)
            else:
                print("XFS not measured: needs root and mkfs.xfs", file=sys.stderr)
        finally:
            os.chdir(ROOT)
            if xfs is not None:
                subprocess.run(["umount", str(xfs)], check=False)
    path = write_result(results, args.out)
    print(f"wrote {path}", file=sys.stderr)
    from render import render

    print(render(results, str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)))


if __name__ == "__main__":
    main()
