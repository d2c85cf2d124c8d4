"""A worker process for test_concurrency: runs steps against a shared database."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from consist import Tracker


def produce(worker: int, n: int, out: str) -> Path:
    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(f"worker={worker} n={n}\n" * 50)
    return p


def main() -> None:
    db, run_dir, worker, phase, owner = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
    results = []
    with Tracker(run_dir, db_path=db, code_version="mp") as t:
        for n in range(25):
            out = f"{Path(db).parent}/out/w{owner}_n{n}.txt"
            if phase == "b":
                # Force a restore from the producer's object store (another run_dir).
                Path(out).unlink(missing_ok=True)
            r = t.run(
                produce,
                name="produce",
                run_id=f"p{phase}_w{worker}_n{n}",
                config={"worker": owner, "n": n, "out": out},
                outputs=["data"],
            )
            assert Path(out).read_text().startswith(f"worker={owner} n={n}")
            results.append({"id": r.run_id, "hit": r.cache_hit, "source": r.cache_source})
            if n % 5 == 4:
                t.sync()  # contend for the DuckDB file while the others keep writing
    print(json.dumps(results))


if __name__ == "__main__":
    main()
