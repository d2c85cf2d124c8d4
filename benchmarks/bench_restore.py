"""Restoring cached outputs on a hit: this consist (every copy verified), the code before
verified restores, and plain `cp` of the same bytes.

    .venv/bin/python benchmarks/bench_restore.py [--n 11] [--size-mib 1024] [--files 10000]
                                                 [--previous REV] [--out FILE]

On each file system available (the root disk, ext4 here; and, when run as root
with xfsprogs installed, an XFS file system with reflink on a loop device), a
tracker run produces one large file and, separately, a directory of many small
files. Each timed call deletes the output and calls the run again, so the hit
restores every byte from the object store. Three arms take turns, in rotating
order, round by round:

- this consist, whose restore reads every copy back and hashes it before it is
  published (in a worker process that imports ``src/`` of this checkout);
- the code of ``--previous`` (default: the last commit before verified restores),
  whose restore trusted the hash memo for an object whose stat was unchanged
  (in a worker process that imports that commit's ``src/``, extracted with
  ``git archive``), with its own workspace on the same file system;
- `cp --reflink=auto` (coreutils' default) of the same stored object into the
  same place.

Each worker times its own hit, after deleting the output and syncing. Writes every
sample to benchmarks/results/restore-<date>-<time>.json and prints the Markdown
table that benchmarks/render.py makes from that file: one row per file system,
code and output, each against the `cp` samples of the same rounds.
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
from _common import (
    ROOT,
    Worker,
    compare,
    fs_type,
    interleaved,
    make_big_file,
    new_result,
    print_block,
    serve,
    write_result,
)

SMALL = 4096
PREVIOUS = "0bca8d4bfe3afe1f8a3b05e4c5f79713f1af6393"  # the last commit whose restores trusted the hash memo
CASES = (("big_file", "big.bin"), ("small_files", "tree"))


def _xfs_mount(base: Path, size_mib: int) -> Path | None:
    if os.geteuid() != 0 or not shutil.which("mkfs.xfs"):
        return None
    image, mnt = base / "xfs.img", base / "xfs"
    mnt.mkdir()
    with open(image, "wb") as f:
        # Sparse: the source, one real copy per workspace, clones for objects and restores.
        f.truncate(max(size_mib * 4 + 1024, 1024) << 20)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True, capture_output=True)
    if subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], capture_output=True).returncode != 0:
        return None
    return mnt


def _drop(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


# ---------------------------------------------------------------------------- worker side


def worker(src: str, work: str) -> None:
    """Serve hits from the consist found in ``src``, in the workspace ``work``."""
    sys.path.insert(0, src)
    from consist import Tracker

    workdir = Path(work)
    workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(workdir)
    tracker = Tracker(workdir / "runs", project_root=workdir)
    steps = {}

    def prepare(source: str, tree: str) -> dict:
        def big_file() -> Path:
            shutil.copyfile(source, "big.bin")
            return Path("big.bin")

        def small_files() -> Path:
            shutil.copytree(tree, "tree")
            return Path("tree")

        stored = {}
        for name, fn in (("big_file", big_file), ("small_files", small_files)):
            steps[name] = fn
            first = tracker.run(fn, name=name, outputs=[name])
            assert not first.cache_hit
            stored[name] = str(tracker._objects.path_of(first.outputs[name].hash))
        return {"stored": stored, "consist": sys.modules["consist"].__file__}

    def hit(name: str, target: str) -> dict:
        _drop(workdir / target)
        os.sync()
        s = time.perf_counter()
        r = tracker.run(steps[name], name=name, outputs=[name])
        elapsed = time.perf_counter() - s
        assert r.cache_hit
        return {"s": elapsed}

    def close() -> dict:
        for _, target in CASES:
            _drop(workdir / target)
        tracker.close()
        return {}

    serve({"prepare": prepare, "hit": hit, "close": close})


# ---------------------------------------------------------------------------- driver side


def measure(fs: Path, n: int, size_mib: int, files: int, sources: dict[str, Path]) -> dict:
    src = fs / "source.bin"
    make_big_file(src, size_mib << 20)
    tree_src = fs / "source_tree"
    if not tree_src.exists():
        tree_src.mkdir()
        for i in range(files):
            (tree_src / f"part-{i:05d}.csv").write_bytes(os.urandom(SMALL))
    workers = {arm: Worker(sys.executable, Path(__file__), "--worker", str(code), str(fs / arm)) for arm, code in
               sources.items()}  # fmt: skip
    try:
        for arm, w in workers.items():
            got = w.call("prepare", source=str(src), tree=str(tree_src))
            if not got["consist"].startswith(str(sources[arm])):
                raise RuntimeError(f"the {arm} worker imported {got['consist']}, not the code in {sources[arm]}")
        cp_dir = fs / "cp"
        cp_dir.mkdir(exist_ok=True)
        out = {}
        for name, target in CASES:
            dest = cp_dir / target

            def copy(_: int, name: str = name, dest: Path = dest) -> float:
                _drop(dest)
                os.sync()
                s = time.perf_counter()
                if name == "big_file":
                    subprocess.run(["cp", "--reflink=auto", str(src), str(dest)], check=True)
                else:  # the same files, from the source tree (the store keeps them by content)
                    subprocess.run(["cp", "-r", "--reflink=auto", str(tree_src), str(dest)], check=True)
                return time.perf_counter() - s

            arms = {arm: (lambda _i, w=w, name=name, target=target: w.seconds("hit", name=name, target=target))
                    for arm, w in workers.items()}  # fmt: skip
            out[name] = interleaved({**arms, "cp_reflink_auto": copy}, n)
            _drop(dest)
        for w in workers.values():
            w.call("close")
        return out
    finally:
        for w in workers.values():
            w.close()


def rows(label: str, measured: dict, previous: str) -> dict:
    """One table row per code and output: its hits against the `cp` samples of the same rounds."""
    out: dict = {}
    for arm, code in (("verified", "this code, every copy verified"),
                      ("previous", f"code of {previous[:7]}, memo trusted")):  # fmt: skip
        cases = {}
        for name, r in measured.items():
            ours, cp = r["arms"][arm], r["arms"]["cp_reflink_auto"]
            c = compare(cp, ours)  # consist / cp
            cases[name] = {"rounds": r["rounds"], "first": r["first"], "consist_hit": ours, "cp_reflink_auto": cp,
                           "ratio": c["ratio_of_medians"], "paired_ratio_median": c["median_paired_ratio"]}  # fmt: skip
        out[f"{label}, {code}"] = cases
    return out


def extract(rev: str, into: Path) -> Path:
    """The src/ folder of commit ``rev``, extracted with git archive."""
    into.mkdir()
    archive = subprocess.run(["git", "archive", rev, "src"], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=11, help="rounds per case (odd: a well-defined median)")
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--previous", default=PREVIOUS, help="the commit whose restore to compare with")
    ap.add_argument("--out", help="results file (default: benchmarks/results/restore-<date>-<time>.json)")
    ap.add_argument("--worker", nargs=2, metavar=("SRC", "WORKDIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("CONSIST_PROGRESS", "0")
    if args.worker:
        worker(*args.worker)
        return
    previous = subprocess.run(["git", "rev-parse", args.previous], cwd=ROOT, check=True, capture_output=True,
                              text=True).stdout.strip()  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="consist-bench-restore-", dir="/var/tmp") as base:
        base_path = Path(base)
        sources = {"verified": ROOT / "src", "previous": extract(previous, base_path / "previous")}
        ext = base_path / "rootfs"
        ext.mkdir()
        params = {"n": args.n, "size_mib": args.size_mib, "size_gib": args.size_mib / 1024, "files": args.files,
                  "small_file_bytes": SMALL, "small_file_kib": SMALL / 1024, "previous": previous}  # fmt: skip
        results = new_result("restore", ext, params)
        fsys: dict = {}
        results["file_systems"] = fsys
        fsys.update(rows(f"root disk ({fs_type(ext)})", measure(ext, args.n, args.size_mib, args.files, sources),
                         previous))  # fmt: skip
        xfs = _xfs_mount(base_path, args.size_mib)
        try:
            if xfs is not None:
                got = measure(xfs, args.n, args.size_mib, args.files, sources)
                fsys.update(rows("XFS with reflink (loop)", got, previous))
            else:
                print("XFS not measured: needs root and mkfs.xfs", file=sys.stderr)
        finally:
            os.chdir(ROOT)
            if xfs is not None:
                subprocess.run(["umount", str(xfs)], check=False)
    path = write_result(results, args.out)
    print(f"wrote {path}", file=sys.stderr)
    print_block(results, path)


if __name__ == "__main__":
    main()
