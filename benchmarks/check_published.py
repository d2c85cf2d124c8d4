"""Check that the figures published in BENCHMARKS.md are those of the results files they cite.

    .venv/bin/python benchmarks/check_published.py [--strict] [MARKDOWN]

MARKDOWN defaults to BENCHMARKS.md at the repository root. Checked:

- every table of the document lies in a generated block, and each block cites a
  results file that exists and is committed;
- every number in those tables (medians, ratios, percentages, sample sizes,
  targets, sizes) is a value recorded in the cited file, at the precision shown;
- each block is exactly what benchmarks/render.py makes of its file, so the
  commands, dates and machine facts above the tables agree too;
- within each file, every summary agrees with its raw samples (count, median,
  mean, min, max) and every ratio with the medians it divides.

Results files that no block cites are listed; with --strict they are an error.
Exits non-zero on any disagreement.
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from render import BLOCK, ROOT, load, render

NUMBER = re.compile(r"(?<![\w.])[+-]?\d[\d,]*(?:\.\d+)*")
SKIP_KEYS = {"samples_ms", "first", "inner_first"}  # raw samples and orders: never a published figure


def file_values(obj: Any, nums: list[float], texts: list[str]) -> None:
    """The numbers (and strings) of a results file, leaving out the raw samples."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k not in SKIP_KEYS:
                file_values(v, nums, texts)
    elif isinstance(obj, list):
        for v in obj:
            file_values(v, nums, texts)
    elif isinstance(obj, bool):
        return
    elif isinstance(obj, int | float):
        nums.append(float(obj))
    elif isinstance(obj, str):
        texts.append(obj)
        for tok in NUMBER.findall(obj):
            if tok.count(".") <= 1:
                nums.append(float(tok.replace(",", "")))


def shown_in(token: str, nums: list[float], texts: list[str]) -> bool:
    """Whether a number as printed in a table is one of the file's values at that precision."""
    token = token.rstrip(",")
    if token.count(".") > 1:  # a version such as 0.3.5
        return any(token in t for t in texts)
    plain = token.replace(",", "").lstrip("+")
    decimals = len(plain.split(".")[1]) if "." in plain else 0
    want = f"{float(plain):.{decimals}f}"
    return any(f"{x:.{decimals}f}" == want for x in nums)


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def consistent(obj: Any, where: str, errors: list[str]) -> None:
    """Summaries against their samples, ratios against their medians, all through the file."""
    if isinstance(obj, list):
        for i, v in enumerate(obj):
            consistent(v, f"{where}[{i}]", errors)
        return
    if not isinstance(obj, dict):
        return
    if "samples_ms" in obj:
        s = obj["samples_ms"]
        expect = {"n": len(s), "median_ms": statistics.median(s), "mean_ms": statistics.fmean(s),
                  "min_ms": min(s), "max_ms": max(s)}  # fmt: skip
        for k, v in expect.items():
            if k in obj and not close(obj[k], v):
                errors.append(f"{where}.{k} is {obj[k]} but its samples give {v}")
    pairs = [("consist", "upstream"), ("cp_reflink_auto", "consist_hit"), ("embedded", "postgresql"),
             ("bare_dask", "map_runs")]  # fmt: skip
    for base, other in pairs:
        a, b = obj.get(base), obj.get(other)
        if isinstance(a, dict) and isinstance(b, dict) and "median_ms" in a and "median_ms" in b:
            key = "ratio_of_medians" if "ratio_of_medians" in obj else "ratio"
            if key in obj and not close(obj[key], b["median_ms"] / a["median_ms"]):
                errors.append(f"{where}.{key} is {obj[key]}, not {other}/{base} of the medians")
            if "rounds" in obj and (a["n"] != obj["rounds"] or b["n"] != obj["rounds"]):
                errors.append(f"{where}: {obj['rounds']} rounds but {a['n']} and {b['n']} samples")
    derived = []  # (name, recorded value, value from the medians)
    if "added_ms" in obj:
        derived.append(("added_ms", obj["added_ms"], obj["import"]["median_ms"] - obj["empty"]["median_ms"]))
    if "pct_of_hashlib" in obj:
        derived.append(("pct_of_hashlib", obj["pct_of_hashlib"],
                        100 * obj["hashlib"]["median_ms"] / obj["library"]["median_ms"]))  # fmt: skip
    for side, pct in obj.get("overhead_pct", {}).items():
        derived.append((f"overhead_pct.{side}", pct["ratio_of_medians"],
                        100 * (obj[side]["median_ms"] / obj["bare"]["median_ms"] - 1)))  # fmt: skip
    if "big_added" in obj and "big_rerun" in obj:
        for side, d in obj["big_added"].items():
            derived.append((f"big_added.{side}", d["ms"],
                            obj["big_rerun"][side]["median_ms"] - obj["hit_again"][side]["median_ms"]))  # fmt: skip
    for name, got, want in derived:
        if not close(got, want):
            errors.append(f"{where}.{name} is {got}, but the medians give {want}")
    for k, v in obj.items():
        consistent(v, f"{where}.{k}", errors)


def committed(path: Path) -> bool:
    return (
        subprocess.run(["git", "ls-files", "--error-unmatch", str(path)], cwd=ROOT, capture_output=True).returncode == 0
    )


def check(doc_path: Path, strict: bool = False) -> list[str]:
    doc = doc_path.read_text()
    errors: list[str] = []
    spans = [(m.start(), m.end()) for m in BLOCK.finditer(doc)]
    pos = 0
    for n, line in enumerate(doc.splitlines(keepends=True), 1):
        if line.startswith("|") and not any(a <= pos < b for a, b in spans):
            errors.append(f"{doc_path.name}:{n}: a table row outside a generated block: {line.strip()[:60]}")
        pos += len(line)
    cited = set()
    for m in BLOCK.finditer(doc):
        rel = m["path"]
        path = ROOT / rel
        cited.add(path.resolve())
        if not path.exists():
            errors.append(f"{rel}: cited by {doc_path.name} but missing")
            continue
        if not committed(path):
            errors.append(f"{rel}: cited by {doc_path.name} but not committed")
        result = load(rel)
        if result.get("parameters", {}).get("quick"):
            errors.append(f"{rel}: a --quick run, not for publication")
        nums: list[float] = []
        texts: list[str] = []
        file_values(result, nums, texts)
        for line in m["body"].splitlines():
            if not line.startswith("|") or set(line) <= set("|- "):
                continue
            for tok in NUMBER.findall(line):
                if not shown_in(tok, nums, texts):
                    errors.append(f"{rel}: {tok!r} in the row {line[:70]!r}... is not a value of the file")
        consistent(result, rel, errors)
        if m["body"] != render(result, rel):
            errors.append(f"{rel}: the block in {doc_path.name} differs from what benchmarks/render.py makes of it")
    results_dir = ROOT / "benchmarks" / "results"
    for f in sorted(results_dir.glob("*.json")):
        if f.resolve() not in cited:
            msg = f"{f.relative_to(ROOT)}: no block of {doc_path.name} cites it"
            if strict:
                errors.append(msg)
            else:
                print(f"note: {msg}", file=sys.stderr)
    return errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("markdown", nargs="?", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("--strict", action="store_true", help="results files that nothing cites are an error too")
    args = ap.parse_args()
    doc = Path(args.markdown)
    errors = check(doc, args.strict)
    for e in errors:
        print(e, file=sys.stderr)
    blocks = len(BLOCK.findall(doc.read_text()))
    if errors:
        print(f"{len(errors)} disagreement(s) between {doc.name} and its results files", file=sys.stderr)
        sys.exit(1)
    print(f"{doc.name}: {blocks} generated blocks agree with their results files")


if __name__ == "__main__":
    main()
