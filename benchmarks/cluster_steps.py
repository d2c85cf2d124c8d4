"""The trivial step of bench_cluster.py, in a module of its own so that Dask workers can import it."""

from __future__ import annotations


def trivial(i: int, sweep: int = 0) -> None:
    """Does nothing: what is measured is what recording (or scheduling) a step costs."""
    return None
