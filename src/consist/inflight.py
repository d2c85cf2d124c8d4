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

    def _reuse_or_open(
        self,
        plan: _Plan,
        dests: Mapping[str, Path] | None,
        required: Sequence[str] | None,
        label: str,
        run_id: str | None,
        parent: str | None,
        tags: Sequence[str] | None,
        extra_meta: Mapping[str, Any] | None = None,
    ) -> tuple[Found | tuple[_Active, dict[str, Any]], str | None]:
        """A usable earlier run, else the opened run of a miss (claiming its signature first).

        Returns ``(found, waited_for)``: ``found`` is the producer and its restored
        outputs, or the run opened to execute and its recorded meta (with the miss's
        explanation); ``waited_for`` is the run that was executing the same step while
        this one waited.
        """
        if plan.cache_mode == "overwrite":
            return self._open_miss(plan, "no_match", label, run_id, parent, tags, None, extra_meta), None
        found = self._try_reuse(plan, dests, required)
        if not isinstance(found, str):
            return found, None
        if plan.cache_mode != "reuse":
            return self._open_miss(plan, found, label, run_id, parent, tags, None, extra_meta), None
        # The usual miss: the signature is claimed and the run recorded in one transaction.
        meta = self._miss_meta(plan, found, extra_meta)
        token = f"claim-{uuid.uuid4().hex}"
        seen: dict[str, Any] = {}

        def claim() -> bool:
            seen["claimed"], seen["holder"] = self._index.try_claim(plan.signature, token)
            return bool(seen["claimed"])

        try:
            active = self._open_if(claim, plan, run_id, parent, tags, meta=meta, claim=token)
        except BaseException:
            self._index._stop_beating_if_idle(token)  # the claim was rolled back with the run
            raise
        if active is not None:
            if seen["holder"] is not None:
                self._took_over(plan, seen["holder"])
            logs.decision(label, plan.signature, why=meta["cache_miss_explanation"], components=plan.components)
            return (active, meta), None
        # Another process is executing the same step: wait for its outputs, or for its claim.
        waited_for = seen["holder"]["run_id"]
        log.info(
            "consist: %s is executing on %s (process %s); waiting for its outputs",
            waited_for, seen["holder"]["host"], seen["holder"]["pid"],
        )  # fmt: skip
        found, held = self._wait_for_claim(plan, dests, required, token)
        if not isinstance(found, str):
            return found, waited_for
        return self._open_miss(plan, found, label, run_id, parent, tags, held, extra_meta), waited_for

    def _wait_for_claim(
        self,
        plan: _Plan,
        dests: Mapping[str, Path] | None,
        required: Sequence[str] | None,
        token: str,
    ) -> tuple[Found | str, str | None]:
        """Poll until the holder's outputs can be reused, or until its claim is taken here.

        Returns ``(found, claim)``: a usable run and None, or why there is none and the
        token under which the claim is now held.
        """
        delay = 0.02
        while True:
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)
            found = self._try_reuse(plan, dests, required)
            if not isinstance(found, str):
                return found, None
            claimed, holder = self._index.try_claim(plan.signature, token)
            if claimed:
                if holder is not None:
                    self._took_over(plan, holder)
                # The holder ended while we waited: it may have recorded its outputs just now.
                found = self._try_reuse(plan, dests, required)
                if not isinstance(found, str):
                    self._index.release_claim(plan.signature, token)
                    return found, None
                return found, token

    def _took_over(self, plan: _Plan, holder: Mapping[str, Any]) -> None:
        log.warning(
            "consist: %s (on %s, process %s) stopped before finishing %s; executing it here",
            holder["run_id"], holder["host"], holder["pid"], plan.name,
        )  # fmt: skip
        # Its run is marked interrupted now, not only when the next tracker opens.
        self._index.reap_interrupted()

    def _miss_meta(self, plan: _Plan, why: str, extra_meta: Mapping[str, Any] | None) -> dict[str, Any]:
        return {"cache_miss_explanation": self._explain(plan, why), **(extra_meta or {})}

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
            meta = self._miss_meta(plan, why, extra_meta)
            logs.decision(label, plan.signature, why=meta["cache_miss_explanation"], components=plan.components)
            return self._open(plan, run_id, parent, tags, meta=meta, claim=claim), meta
        except BaseException:
            if claim:
                self._index.release_claim(plan.signature, claim)
            raise
