"""The restore half of a cache hit: find the newest usable producer and put its outputs back."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import (
    IntegrityError,
    warn_caller,
)
from .hashing import FileHasher, dumps
from .locations import UnresolvableLocation
from .objects import (
    ObjectStore,
    holds,
    place,
    restore_all,
)
from .planning import _Plan
from .recording import _member_rows

log = logging.getLogger("consist")


class RestoreMixin:
    """Decides whether an earlier run's outputs can be reused, and restores them.

    Mixed into :class:`consist.tracker.Tracker`.
    """

    def _store_for(self, digest: str) -> ObjectStore:
        if self._objects.has(digest):
            return self._objects
        for root in self._index.object_stores(digest):
            store = ObjectStore(Path(root), memo=self._index)
            if store.has(digest):
                return store
        return self._objects  # verify() then reports the object as missing

    def _try_reuse(
        self,
        plan: _Plan,
        dests: Mapping[str, Path] | None,
        required: Sequence[str] | None,
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]] | str:
        """Restore the outputs of the newest usable producer; else say why not."""
        producers = self._index.producers(plan.signature)
        if not producers:
            return "no_match"
        reason = "no_match"
        for prod in producers:
            outs = {o["link_key"]: o for o in self._index.outputs_of(prod["id"])}
            if required and not set(required) <= set(outs):
                reason = "outputs_not_recorded"
                continue
            restored: dict[str, dict[str, Any]] = {}
            try:
                plan_dest = {
                    k: Path(dests[k]) if dests and k in dests else self._restore_path(o) for k, o in outs.items()
                }
                needed = {k: o for k, o in outs.items() if not _holds(o, plan_dest[k], plan.hasher)}
                self._index.lease_restoring((o["hash"], o["kind"]) for o in needed.values())  # see prune_store
                to_write = {}
                for k, o in needed.items():  # check every object before writing anything
                    store = self._store_for(o["hash"])
                    to_write[k] = (store, store.check(o["kind"], o["hash"], o["size"], o.get("meta")))
                # Every copy is hashed beside its destination; none is published unless all matched.
                restore_all((store, checked, plan_dest[k]) for k, (store, checked) in to_write.items())
                for k, o in outs.items():
                    dest = plan_dest[k]
                    members = self._index.members_of(prod["id"], o["id"]) if o["kind"] == "dir" else []
                    at = place(dest)  # a restored link is recorded where it is, not where it points
                    if Path(o["uri"]) != at:
                        o = {
                            **o,
                            "id": uuid.uuid4().hex,
                            "uri": str(at),
                            "location": self.roots.locate(at) or str(at),
                            "created_at": time.time(),
                            "meta": dumps({"restored_from": o["id"]}),
                        }
                        o["_new"] = True
                        members = _member_rows(o, [[m["link_key"], m["hash"], m["size"]] for m in members])
                        for m in members:
                            m["run_id"] = o["run_id"]
                    if members:
                        o["_members"] = members
                    restored[k] = o
            except (IntegrityError, OSError, UnresolvableLocation) as exc:
                missing = getattr(exc, "missing_digest", None)
                if missing and not self._index.object_stores(missing):
                    reason = "outputs_pruned"  # removed on purpose by prune_store(): no warning
                    continue
                warn_caller(f"Cached outputs of run {prod['id']!r} cannot be restored ({exc}); running the step again.")
                reason = "outputs_unavailable"
                continue
            return prod, restored
        return reason

    def _restore_path(self, row: Mapping[str, Any]) -> Path:
        """Where a recorded output goes in *this* workspace (see :mod:`consist.locations`)."""
        return self.roots.resolve(row.get("location") or row["uri"])


def _holds(row: dict[str, Any], dest: Path, hasher: FileHasher) -> bool:
    """True when dest already is the artifact: kind, content and modes (no copy needed; never through a link)."""
    return holds(row["kind"], row["hash"], row.get("size"), row.get("meta"), dest, hasher)
