"""One execution per identical run: a miss claims its signature, identical runs wait for it.

When several processes (on one node or many) start the same step with the same
signature at the same time, the first to claim the signature in the run index
executes; the others poll until its outputs are recorded and then take a cache
hit. The claim carries a heartbeat (see :mod:`consist.store.index`): when its
holder's process ends (on this host) or its heartbeats stop for the expiry time
(on another host), a waiter takes the claim over and executes itself. A holder
that fails releases the claim, and the next waiter executes.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import logs
from .planning import _Active, _Plan

log = logging.getLogger("consist")

Found = tuple[dict[str, Any], dict[str, dict[str, Any]]]


class InflightMixin:
    """Mixed into :class:`consist.tracker.Tracker`."""

    def _reuse_or_claim(
        self,
        plan: _Plan,
        dests: Mapping[str, Path] | None,
        required: Sequence[str] | None,
    ) -> tuple[Found | str, str | None, str | None]:
        """A usable earlier run, else the right to execute.

        Returns ``(found, claim, waited_for)``: ``found`` is the producer and its
        restored outputs, or why there is none; ``claim`` is the token under which
        this process holds the signature (None when it holds none: overwrite and
        readonly modes, or a hit); ``waited_for`` is the run that was executing the
        same step while this one waited.
        """
        if plan.cache_mode == "overwrite":
            return "no_match", None, None
        found = self._try_reuse(plan, dests, required)
        if not isinstance(found, str) or plan.cache_mode != "reuse":
            return found, None, None
        token = f"claim-{uuid.uuid4().hex}"
        waited_for: str | None = None
        delay = 0.02
        while True:
            claimed, holder = self._index.try_claim(plan.signature, token)
            if claimed:
                if holder is not None:
                    log.warning(
                        "consist: %s (on %s, process %s) stopped before finishing %s; executing it here",
                        holder["run_id"], holder["host"], holder["pid"], plan.name,
                    )  # fmt: skip
                    # Its run is marked interrupted now, not only when the next tracker opens.
                    self._index.reap_interrupted()
                if waited_for is not None:
                    # The holder ended while we waited: it may have recorded its outputs just now.
                    found = self._try_reuse(plan, dests, required)
                    if not isinstance(found, str):
                        self._index.release_claim(plan.signature, token)
                        return found, None, waited_for
                return found, token, waited_for
            assert holder is not None
            if waited_for is None:
                log.info(
                    "consist: %s is executing on %s (process %s); waiting for its outputs",
                    holder["run_id"], holder["host"], holder["pid"],
                )  # fmt: skip
            waited_for = holder["run_id"]
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)
            found = self._try_reuse(plan, dests, required)
            if not isinstance(found, str):
                return found, None, waited_for

    def _open_miss(
        self,
        plan: _Plan,
        why: str,
        label: str,
        run_id: str | None,
        parent: str | None,
        tags: Sequence[str] | None,
        claim: str | None,
        extra_meta: Mapping[str, Any] | None = None,
    ) -> tuple[_Active, dict[str, Any]]:
        """Open the run of a miss, its explanation recorded and logged; the claim is given back if that fails."""
        try:
            meta = {"cache_miss_explanation": self._explain(plan, why), **(extra_meta or {})}
            logs.decision(label, plan.signature, why=meta["cache_miss_explanation"], components=plan.components)
            return self._open(plan, run_id, parent, tags, meta=meta, claim=claim), meta
        except BaseException:
            if claim:
                self._index.release_claim(plan.signature, claim)
            raise
