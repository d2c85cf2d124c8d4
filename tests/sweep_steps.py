"""Steps for the sweep tests, importable by worker processes (and pickled by value for Dask)."""

from __future__ import annotations

import os
from pathlib import Path


def square(x: int, out_dir: str) -> Path:
    """Writes x² to a file; row 13 always fails."""
    if x == 13:
        raise ValueError("thirteen is refused")
    p = Path(out_dir) / f"square_{x}.txt"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(f"{x * x}\n")
    with open(Path(out_dir) / "executions.log", "a") as log:
        log.write(f"{x} {os.getpid()}\n")
    return p


def container_step(zone: int, out_dir: str, engine: str, image: str) -> Path:
    """One container run per row: the model writes its zone's result into out_dir."""
    from consist.context import current_tracker
    from consist.integrations.containers import run_container

    tracker = current_tracker()
    out = Path(out_dir) / f"zone_{zone}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = run_container(
        tracker, f"zone_{zone}", image, ["sh", "-c", f"echo zone {zone} > /out/zone_{zone}.txt"],
        {str(out.parent): "/out"}, None, {"zone": str(out)}, backend_type=engine, model=f"zone_{zone}",
    )  # fmt: skip
    with open(Path(out_dir) / "executions.log", "a") as log:
        log.write(f"{zone} {os.environ.get('SLURM_JOB_ID', '-')} hit={result.cache_hit}\n")
    return out


def sleeper(seconds: int, engine: str, image: str, name: str) -> None:
    """A container that sleeps (for cancelling the job that runs it)."""
    from consist.context import current_tracker
    from consist.integrations.containers import run_container

    run_container(current_tracker(), name, image, ["sleep", str(seconds)], None, None, None, backend_type=engine)
