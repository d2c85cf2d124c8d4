"""The restore half of a cache hit: find the newest usable producer and put its outputs back."""

from __future__ import annotations

import logging
import os
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
from .locations import UnresolvableLocation, is_inside
from .names import fit
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
            store = ObjectStore(Path(root), memo=self._index, durable=self._objects.durable)
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
                if plan.validate == "eager":
                    self._index.lease_restoring((o["hash"], o["kind"]) for o in outs.values())
                    for o in outs.values():
                        self._verify_output(prod["id"], o)
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

    def _verify_output(self, producer: str, row: Mapping[str, Any]) -> None:
        """Re-hash every stored object of an output (``validate_cached_outputs="eager"``).

        Raises IntegrityError when any object is missing or differs from its hash.
        """
        store = self._store_for(row["hash"])
        store.check(row["kind"], row["hash"], row.get("size"), row.get("meta"))
        if row["kind"] == "file":
            store.verify(row["hash"], row.get("size"))
        elif row["kind"] == "dir":
            for m in self._index.members_of(producer, row["id"]):
                self._store_for(m["hash"]).verify(m["hash"], m.get("size"))

    def _materialize_inputs(self, plan: _Plan) -> None:
        """Put back the inputs given as recorded artifacts whose file is gone, from the object store.

        Only a step that executes needs them; each goes where the artifact was recorded.
        """
        if not plan.missing_inputs:
            return
        dests = {k: Path(p) for k, p, _h in plan.inputs if k in plan.missing_inputs}
        hasher = FileHasher(self._index, "full")
        gone = {k: row for k, row in plan.missing_inputs.items() if not _holds(row, dests[k], hasher)}
        self._put_back([(row, dests[k]) for k, row in gone.items()])
        for key in gone:
            log.info("consist: input %r was not at %s; restored it from the object store", key, dests[key])

    def hydrate_run_outputs(
        self,
        run_id: str,
        target_root: str | os.PathLike[str] | None = None,
        keys: Sequence[str] | None = None,
    ) -> dict[str, Path]:
        """Put the outputs of a recorded run back from the object store; returns key -> path.

        Without ``target_root`` each output goes where it belongs in this workspace
        (its recorded location, resolved against this tracker's roots), for restarting
        a pipeline from an archived run, on another machine too when the database and
        the object store travel with it. With ``target_root`` each goes into that
        directory under its key (``<target_root>/<key>``, keeping the recorded file
        name's extension when the key has none). Every object is checked before
        anything is written, and nothing is published unless all match their hashes;
        an output already in place with the right content is left alone.
        """
        from .errors import OutputError, RunNotFoundError

        self._writable(f"hydrate the outputs of {run_id!r}")
        if self._index.run(run_id) is None:
            raise RunNotFoundError(
                f"No run with id {run_id!r} in {self._index.location}",
                "the id is misspelled, or the run was recorded in another database",
                "list runs with tracker.find_runs() or `consist runs`",
            )
        outs = {o["link_key"]: o for o in self._index.outputs_of(run_id)}
        wanted = list(keys) if keys is not None else list(outs)
        unknown = [k for k in wanted if k not in outs]
        if unknown:
            raise OutputError(
                f"Run {run_id!r} recorded no output {', '.join(map(repr, unknown))}",
                f"its outputs are {', '.join(map(repr, outs)) or 'none'}",
                "pass keys= from that list",
            )
        dests: dict[str, Path] = {}
        for k in wanted:
            if target_root is None:
                dests[k] = self._restore_path(outs[k])
            else:
                name = k if Path(k).suffix or outs[k]["kind"] == "dir" else k + Path(outs[k]["uri"]).suffix
                dests[k] = Path(target_root).absolute() / fit(name)  # a key never names a place outside
                self._check_destination(dests[k], within=Path(target_root).absolute())
        by_place: dict[Path, list[str]] = {}
        for k, d in dests.items():
            by_place.setdefault(d, []).append(k)
        clash = {str(d): sorted(keys) for d, keys in by_place.items() if len(keys) > 1}
        if clash:
            raise OutputError(
                f"Outputs of {run_id!r} would be hydrated to the same place: {clash}",
                "their keys differ only in characters a file name cannot hold, or they were recorded at one place",
                "hydrate them one at a time with keys=[...] into different target_root folders",
            )
        hasher = FileHasher(self._index, "full")
        needed = {k: outs[k] for k in wanted if not _holds(outs[k], dests[k], hasher)}
        self._put_back([(row, dests[k]) for k, row in needed.items()])
        return dests

    def _put_back(self, items: Sequence[tuple[Mapping[str, Any], Path]]) -> None:
        """Restore recorded artifacts (row, destination) from the object stores, leased meanwhile.

        Every object is checked before anything is written, and nothing is published unless all
        match their hashes (see :func:`consist.objects.restore_all`).
        """
        if not items:
            return
        self._index.lease_restoring((row["hash"], row["kind"]) for row, _dest in items)
        try:
            checked = []
            for row, dest in items:
                store = self._store_for(row["hash"])
                checked.append((store, store.check(row["kind"], row["hash"], row.get("size"), row.get("meta")), dest))
            restore_all(checked)
        finally:
            self._index.end_restore_lease()

    def _restore_path(self, row: Mapping[str, Any]) -> Path:
        """Where a recorded output goes in *this* workspace (see :mod:`consist.locations`)."""
        dest = self.roots.resolve(row.get("location") or row["uri"])
        self._check_destination(dest)
        return dest

    def _check_destination(self, dest: Path, within: Path | None = None) -> None:
        """Refuse to restore to a root itself, into consist's own files, or through a link that leaves the roots.

        ``within``: the destination must lie in that folder (a ``target_root``) instead of the roots.
        Raises UnresolvableLocation, which a hit treats as outputs it cannot restore (the step runs).
        """
        real = dest.parent.resolve() / dest.name  # links among the parents are followed
        text = str(real)  # paths compared as normalised strings (see Roots.locate)
        index_dir = self.db_path.parent / f".{self.db_path.name}.consist"
        for own in (self.store_dir, index_dir, self.db_path):
            own_text = str(own)
            if text == own_text or is_inside(text, own_text) or is_inside(own_text, text):
                raise UnresolvableLocation(
                    f"A restore to {dest} would write into consist's own files ({own})",
                    "the record of the run is damaged or was made to point there",
                    "check the run's outputs with `consist show RUN`",
                )
        if within is None and text in self.roots.root_strings:  # whatever allow_external_paths says
            raise UnresolvableLocation(
                f"A restore to {dest} would replace the root {real} itself",
                "a folder on the way is a symbolic link to a root (for example one restored from the same record)",
                "remove the link, or check the run's outputs with `consist show RUN`",
            )
        if within is not None:
            inside = is_inside(text, str(within.resolve()))
        else:
            inside = self.roots.locate(real) is not None
        if not inside and not (within is None and self.roots.allow_external):
            raise UnresolvableLocation(
                f"A restore to {dest} would write to {real}, outside "
                + (f"{within}" if within is not None else "the tracker's roots"),
                "a folder on the way is a symbolic link (for example one restored from the same record)",
                "remove the link, or check the run's outputs with `consist show RUN`",
            )


def _holds(row: dict[str, Any], dest: Path, hasher: FileHasher) -> bool:
    """True when dest already is the artifact: kind, content and modes (no copy needed; never through a link)."""
    return holds(row["kind"], row["hash"], row.get("size"), row.get("meta"), dest, hasher)
