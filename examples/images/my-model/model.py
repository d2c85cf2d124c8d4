"""Stand-in HPC model: copies /inputs/data.csv to /outputs with a parameter column."""

import argparse
import os

ap = argparse.ArgumentParser()
ap.add_argument("--param", default="value")
args = ap.parse_args()
os.makedirs("/outputs", exist_ok=True)
with open("/inputs/data.csv") as f, open("/outputs/model_output.csv", "w") as out:
    lines = f.read().splitlines()
    out.write(lines[0] + ",param\n")
    for line in lines[1:]:
        out.write(f"{line},{args.param}\n")
print("model done")
