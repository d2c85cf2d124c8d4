"""An object store on a shared file system: several processes store the same content at once."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from consist import Tracker

WRITER = """
import sys
from pathlib import Path
from consist import Tracker
run_dir, store, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
import time
out = Path(run_dir) / "big.bin"
out.parent.mkdir(parents=True, exist_ok=True)
out.write_bytes(bytes(range(256)) * 40_000)  # 10 MB, the same bytes in every process
while time.time() < start:
    time.sleep(0.001)
with Tracker(run_dir, db_path=Path(store).parent / "prov.duckdb", store_dir=store, code_version="v") as t:
    r = t.run(lambda: out, name="big", config={"node": run_dir}, outputs=["big"], cache_mode="overwrite")
    print(r.run_id)
"""


def test_processes_storing_the_same_object_at_once_all_succeed(tmp_path: Path) -> None:
    import time

    store = tmp_path / "shared" / "objects"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    start = time.time() + 3.0
    procs = [
        subprocess.Popen([sys.executable, str(script), str(tmp_path / f"node{i}"), str(store), str(start)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(4)
    ]  # fmt: skip
    for p in procs:
        _out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    expected = "sha256:" + hashlib.sha256(bytes(range(256)) * 40_000).hexdigest()
    objects = [p for p in store.rglob("*") if p.is_file() and p.parent.parent.name == "sha256"]
    assert len(objects) == 1 and hashlib.sha256(objects[0].read_bytes()).hexdigest() == expected.split(":")[1]
    assert not any((store / "tmp").iterdir())  # no temporary left behind
    # Every node's output is restorable from the shared store.
    (tmp_path / "node2" / "big.bin").unlink()
    with Tracker(tmp_path / "node2", db_path=tmp_path / "shared" / "prov.duckdb", store_dir=store,
                 code_version="v") as t:  # fmt: skip
        hit = t.run(lambda: None, name="big", config={"node": str(tmp_path / "node2")}, outputs=["big"])
        assert hit.cache_hit
        assert hashlib.sha256(hit.output_path("big").read_bytes()).hexdigest() == expected.split(":")[1]
