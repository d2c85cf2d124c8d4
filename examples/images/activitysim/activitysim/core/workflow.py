"""Stand-in for `python -m activitysim.core.workflow -c CONFIGS -o OUTPUT`.

Reads settings.yaml (flat `key: value` lines) and mode_choice_coefficients.csv
from the config directory and writes trip and summary tables to the output
directory. It is not ActivitySim: it only behaves like a model run for the
examples (config in, tables out, deterministic).
"""

import argparse
import csv
import os
import random

ap = argparse.ArgumentParser()
ap.add_argument("-c", dest="configs", default="/configs")
ap.add_argument("-o", dest="output", default="/outputs")
args = ap.parse_args()

settings = {}
with open(os.path.join(args.configs, "settings.yaml")) as f:
    for line in f:
        if ":" in line and not line.lstrip().startswith("#"):
            k, v = line.split(":", 1)
            settings[k.strip()] = v.strip()
coef = {}
coef_path = os.path.join(args.configs, "mode_choice_coefficients.csv")
if os.path.exists(coef_path):
    with open(coef_path) as f:
        for row in csv.DictReader(f):
            coef[row["mode"]] = float(row["coefficient"])

households = int(settings.get("households_sample_size", 100))
income_scale = float(settings.get("income_scale", 1.0))
rng = random.Random(int(settings.get("rng_base_seed", 0)))
modes = sorted(coef) or ["walk", "bike", "transit", "car"]
os.makedirs(args.output, exist_ok=True)
counts = {m: 0 for m in modes}
with open(os.path.join(args.output, "final_trips.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["trip_id", "household_id", "mode"])
    tid = 0
    for hh in range(households):
        for _ in range(rng.randint(1, 4)):
            weights = [max(0.01, coef.get(m, 1.0) * (income_scale if m == "car" else 1.0)) for m in modes]
            mode = rng.choices(modes, weights)[0]
            counts[mode] += 1
            w.writerow([tid, hh, mode])
            tid += 1
with open(os.path.join(args.output, "trips_summary.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["mode", "trips"])
    for m in modes:
        w.writerow([m, counts[m]])
chunk = os.environ.get("ACTIVITYSIM_CHUNK_SIZE")
print(f"simulated {households} households, {tid} trips (ACTIVITYSIM_CHUNK_SIZE={chunk})")
