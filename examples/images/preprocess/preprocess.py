"""Stand-in preprocessing: every CSV under /data becomes a cleaned CSV under /preprocessed."""

import glob
import os

out = os.environ.get("PREPROCESSED_DIR", "/preprocessed")
os.makedirs(out, exist_ok=True)
for path in sorted(glob.glob("/data/*.csv")):
    with open(path) as f:
        lines = [ln for ln in f.read().splitlines() if ln.strip()]
    with open(os.path.join(out, os.path.basename(path)), "w") as f:
        f.write("\n".join(ln.lower() for ln in lines) + "\n")
print("preprocessed", len(glob.glob("/data/*.csv")), "files")
