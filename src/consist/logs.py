"""The ``consist`` logger: cache decisions, and ``CONSIST_LOG`` to see them without code.

Every step logs its cache decision on the ``consist`` logger: at INFO whether it
was a hit (and of which run) or executes (and why), at DEBUG its signature and
identity components. Python shows only warnings unless told otherwise;
``CONSIST_LOG=info`` (or ``debug``) attaches a handler to stderr when consist is
imported, so a script's decisions can be watched without changing it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger("consist")


def configure_from_environment() -> None:
    level = os.environ.get("CONSIST_LOG", "").strip().upper()
    if not level:
        return
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        level = "INFO"
    if not any(getattr(h, "_consist", False) for h in log.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        handler._consist = True  # type: ignore[attr-defined]
        log.addHandler(handler)
    log.setLevel(level)


def decision(name: str, signature: str, *, hit_of: str | None = None, why: dict[str, Any] | None = None,
             components: dict[str, Any] | None = None) -> None:  # fmt: skip
    """Log one step's cache decision."""
    if not log.isEnabledFor(logging.INFO):
        return
    if hit_of is not None:
        log.info("%s: cache hit, reusing the outputs of %s", name, hit_of)
    else:
        why = why or {}
        changed = ", ".join(why.get("changed") or []) or "-"
        log.info("%s: executes (%s; changed: %s; nearest earlier run: %s)", name, why.get("reason", "no_match"),
                 changed, why.get("nearest_run") or "none")  # fmt: skip
    log.debug("%s: signature %s, components %s", name, signature, components)
