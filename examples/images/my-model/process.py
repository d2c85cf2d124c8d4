"""Stand-in model: reads x,y rows and writes them with their sum to /outputs/result.csv."""

import argparse
import csv
import os

ap = argparse.ArgumentParser()
ap.add_argument("--input", required=True)
ap.add_argument("--output", default="/outputs/result.csv")
args = ap.parse_args()
with open(args.input) as f:
    rows = list(csv.DictReader(f))
os.makedirs(os.path.dirname(args.output), exist_ok=True)
with open(args.output, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["x", "y", "total"])
    for r in rows:
        w.writerow([r["x"], r["y"], int(r["x"]) + int(r["y"])])
print(f"processed {len(rows)} rows")
