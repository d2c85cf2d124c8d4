"""The container workload, run by bench_containers.py in one process per library and engine.

    python container_worker.py ours|upstream

Both libraries run the same command in the same image with two bind mounts and
one small output, under a new run id per call (the original consist needs one:
it does not reuse a run whose id is being written). Each call is timed here, in
the worker; the counter file that the command appends to counts container starts.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import serve

logging.disable(logging.WARNING)

CMD = ["sh", "-c", "echo $STEP >> /counter/n; echo $STEP > /out/result.txt"]


class Ours:
    """This consist: host paths relative to the project root."""

    def setup(self, work: Path, engine: str) -> Any:
        import consist.integrations.containers  # noqa: F401  (imported before any timing)
        from consist import Tracker

        for d in ("out", "counter"):
            (work / d).mkdir(exist_ok=True)
        return Tracker(work / "runs", db_path=work / "prov.duckdb", project_root=work)

    def counter(self, work: Path) -> Path:
        return work / "counter" / "n"

    def call(self, t: Any, work: Path, run_id: str, image: str, engine: str, step: str) -> bool:
        from consist.integrations.containers import run_container

        return run_container(
            t, run_id, image, CMD, {"./out": "/out", "./counter": "/counter"}, [], ["./out/result.txt"],
            environment={"STEP": step}, backend_type=engine,
        ).cache_hit  # fmt: skip

    def close(self, t: Any) -> None:
        t.close()


class Upstream:
    """The original consist 0.3.5: outputs under run_dir, host paths under a named mount, a git checkout."""

    def setup(self, work: Path, engine: str) -> Any:
        import consist.integrations.containers  # noqa: F401
        from consist import Tracker

        if not (work / ".git").exists():
            subprocess.run(["git", "init", "-q"], cwd=work, check=True)
            (work / ".gitignore").write_text("/*\n!.gitignore\n")
            subprocess.run(["git", "add", ".gitignore"], cwd=work, check=True)
            subprocess.run(["git", "-c", "user.email=b@b", "-c", "user.name=b", "commit", "-q", "-m", "x"],
                           cwd=work, check=True)  # fmt: skip
        for d in ("runs/out", "runs/counter"):
            (work / d).mkdir(parents=True, exist_ok=True)
        return Tracker(run_dir=work / "runs", db_path=work / "prov.duckdb", mounts={"work": str(work)})

    def counter(self, work: Path) -> Path:
        return work / "runs" / "counter" / "n"

    def call(self, t: Any, work: Path, run_id: str, image: str, engine: str, step: str) -> bool:
        from consist.integrations.containers import run_container

        vols = {str(work / "runs/out"): "/out", str(work / "runs/counter"): "/counter"}
        return run_container(
            t, run_id, image, CMD, vols, [], [str(work / "runs/out/result.txt")],
            environment={"STEP": step}, backend_type=engine,
        ).cache_hit  # fmt: skip

    def close(self, t: Any) -> None:
        engine = getattr(t, "engine", None)
        if engine is not None:
            engine.dispose()


class Workload:
    def __init__(self, api: Any) -> None:
        self.api = api
        self.t: Any = None
        self.k = 0
        self.work = Path.cwd()
        self.image = self.engine = ""

    def _call(self, step: str) -> tuple[float, bool]:
        self.k += 1
        run_id = f"bench-{os.getpid()}-{self.k}"
        s = time.perf_counter()
        hit = self.api.call(self.t, self.work, run_id, self.image, self.engine, step)
        return time.perf_counter() - s, hit

    def setup(self, work: str, engine: str, image: str, warm: bool = True) -> dict[str, Any]:
        import consist

        self.work, self.engine, self.image = Path(work), engine, image
        os.chdir(self.work)
        self.t = self.api.setup(self.work, engine)
        if warm:
            _, hit = self._call("warm")  # a miss; every hit below reuses it
            assert not hit
        return {"version": consist.__version__}

    def starts(self) -> dict[str, Any]:
        c = self.api.counter(self.work)
        return {"starts": len(c.read_text().splitlines()) if c.exists() else 0}

    def miss(self, i: int) -> dict[str, Any]:
        s, hit = self._call(f"miss{i}")
        assert not hit
        return {"s": s}

    def hit(self) -> dict[str, Any]:
        s, hit = self._call("warm")
        assert hit
        return {"s": s}

    def close(self) -> dict[str, Any]:
        self.api.close(self.t)
        return {}


def main() -> None:
    w = Workload({"ours": Ours, "upstream": Upstream}[sys.argv[1]]())
    serve({op: getattr(w, op) for op in ("setup", "starts", "miss", "hit", "close")})


if __name__ == "__main__":
    main()
