"""Quickstart: a two-step pipeline, run twice. The second time nothing executes.

Run it with ``python examples/quickstart.py`` (or ``bash scripts/demo.sh``).
It works in ``examples/work/quickstart`` and prints what was cached.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from consist import Tracker

WORK = Path(__file__).resolve().parent / "work" / "quickstart"


def clean(raw: Path, min_trips: int) -> Path:
    """Keep households with at least ``min_trips`` trips."""
    rows = [line.split(",") for line in raw.read_text().splitlines()[1:]]
    out = Path("data/clean.csv")
    out.write_text("household,trips\n" + "".join(f"{h},{t}\n" for h, t in rows if int(t) >= min_trips))
    return out


def summarize(clean: Path) -> Path:
    """Total trips of the kept households."""
    trips = [int(line.split(",")[1]) for line in clean.read_text().splitlines()[1:]]
    out = Path("data/summary.csv")
    out.write_text(f"households,trips\n{len(trips)},{sum(trips)}\n")
    return out


def pipeline(tracker: Tracker, min_trips: int) -> None:
    cleaned = tracker.run(clean, inputs={"raw": "data/raw.csv"}, config={"min_trips": min_trips}, outputs=["clean"])
    summary = tracker.run(summarize, inputs={"clean": cleaned.outputs["clean"]}, outputs=["summary"])
    for name, result in (("clean", cleaned), ("summarize", summary)):
        if result.cache_hit:
            print(f"  {name:<10} cached   (outputs restored from run {result.cache_source})")
        else:
            why = result.run.cache_miss_explanation or {}
            print(f"  {name:<10} executed (reason: {why.get('reason')}, changed: {why.get('changed')})")
    print(f"  summary: {summary.outputs['summary'].path.read_text().splitlines()[1]}")


def main() -> None:
    shutil.rmtree(WORK, ignore_errors=True)
    (WORK / "data").mkdir(parents=True)
    import os

    os.chdir(WORK)
    Path("data/raw.csv").write_text("household,trips\n1,3\n2,0\n3,5\n4,1\n")

    with Tracker(run_dir="runs", db_path="provenance.duckdb", project_root=WORK) as tracker:
        print("First run:")
        pipeline(tracker, min_trips=1)
        print("Second run, nothing changed:")
        Path("data/summary.csv").unlink()  # even a deleted output comes back from the store
        pipeline(tracker, min_trips=1)
        print("Third run, config changed (min_trips=2):")
        pipeline(tracker, min_trips=2)
        print("\nHistory:")
        print(tracker.history(10)[["id", "model", "status", "cache_hit", "cache_source"]].to_string(index=False))


if __name__ == "__main__":
    main()
