"""Two steps of a small travel model, for the tests of the command line and the web view."""

from __future__ import annotations

from pathlib import Path


def prepare(zones: int, out: str) -> Path:
    """Households per zone: 100 times the zone number."""
    p = Path(out)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("zone,households\n" + "".join(f"{z},{100 * z}\n" for z in range(zones)))
    return p


def simulate(households: Path, rate: float, out: str) -> Path:
    """Trips per zone: households times rate."""
    rows = households.read_text().splitlines()[1:]
    p = Path(out)
    p.write_text("zone,trips\n" + "".join(f"{r.split(',')[0]},{int(int(r.split(',')[1]) * rate)}\n" for r in rows))
    return p
