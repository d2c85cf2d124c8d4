"""Put the web view's front-end libraries into the package, from the npm registry, checked.

    .venv/bin/python scripts/vendor-ui.py

Each library is a pinned npm package whose tarball is downloaded from
registry.npmjs.org, checked against its published sha512 integrity, and whose one
distributed file is written to src/consist/ui/static/vendor/. Nothing is fetched
when the web view runs. The set-up scripts call this; it does nothing when the
files are there and match.
"""

from __future__ import annotations

import base64
import hashlib
import io
import sys
import tarfile
import urllib.request
from pathlib import Path

VENDOR = Path(__file__).resolve().parent.parent / "src" / "consist" / "ui" / "static" / "vendor"
# name, version, sha512 integrity (npm view NAME@VERSION dist.integrity), file in the package, file here
LIBRARIES = [
    ("cytoscape", "3.34.4",
     "sha512-msY99tMY8iWTg+sIPGfSqDcPNOt4xcj+v/K/7qUFaCUxxlqnMkUYLBjRUzn9W5CU/R2hrmtJa5+UtovrEM2ctg==",
     "package/dist/cytoscape.min.js", "cytoscape.min.js"),
    ("chart.js", "4.6.1",
     "sha512-hJyniucsFmq//EvXYvJ6c6mahPoI3kaxdjVH8awTaJ/fDNWeSqqqArixMJWkWNN6fcYvPU3HneSANFNYtRi61g==",
     "package/dist/chart.umd.min.js", "chart.umd.min.js"),
]  # fmt: skip


def fetch(name: str, version: str, integrity: str) -> bytes:
    url = f"https://registry.npmjs.org/{name}/-/{name.split('/')[-1]}-{version}.tgz"
    with urllib.request.urlopen(url, timeout=120) as resp:
        data = resp.read()
    algo, _, expected = integrity.partition("-")
    got = base64.b64encode(hashlib.new(algo, data).digest()).decode()
    if got != expected:
        raise SystemExit(f"vendor-ui: {url} does not match its integrity {integrity} (got {algo}-{got})")
    return data


def main() -> int:
    VENDOR.mkdir(parents=True, exist_ok=True)
    stamp_path = VENDOR / "VERSIONS"
    wanted = "".join(f"{n}@{v} {i}\n" for n, v, i, _m, _o in LIBRARIES)
    if stamp_path.exists() and stamp_path.read_text() == wanted and all((VENDOR / o).is_file() for *_, o in LIBRARIES):
        return 0
    for name, version, integrity, member, out in LIBRARIES:
        data = fetch(name, version, integrity)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            f = tar.extractfile(member)
            if f is None:
                raise SystemExit(f"vendor-ui: {member} is not in {name}@{version}")
            tmp = VENDOR / f".{out}.tmp"
            tmp.write_bytes(f.read())
            tmp.replace(VENDOR / out)
        print(f"vendor-ui: {name}@{version} -> {VENDOR / out}", file=sys.stderr)
    stamp_path.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
