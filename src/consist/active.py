"""A view of a run while it is open (``tracker.current_consist``) or just after (``tracker.last_run``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .hashing import loads
from .planning import _Active

if TYPE_CHECKING:
    from .models import Artifact, Run
    from .tracker import Tracker


class RunRecord:
    """The run a step body is part of: what it read and wrote so far, its config, and its cache state.

    ``tracker.current_consist`` (alias ``tracker.active_run``) gives the open run;
    ``tracker.last_run`` the run that finished last (a hit included). The view is
    live while the run is open: outputs logged later appear in ``outputs``.
    """

    def __init__(self, tracker: Tracker, active: _Active) -> None:
        self._tracker = tracker
        self._active = active

    def __repr__(self) -> str:
        state = "hit" if self.is_cached else self._active.row.get("status")
        return f"RunRecord({self.run_id!r}, {state})"

    @property
    def run_id(self) -> str:
        return self._active.id

    @property
    def run(self) -> Run:
        """The run as it is recorded now (``status`` ``running`` while it is open)."""
        from .models import run_from_row

        return run_from_row(self._active.row)

    @property
    def config(self) -> Any:
        """The run's config, in the canonical form it was hashed in."""
        return self._active.plan.config

    @property
    def meta(self) -> dict[str, Any]:
        """``Run.meta``: description, stage, phase, your metadata, and why a miss executed."""
        return loads(self._active.row.get("meta")) or {}

    @property
    def is_cached(self) -> bool:
        """True when an identical run completed before and its outputs were restored."""
        return bool(self._active.row.get("cache_hit"))

    @property
    def cached_run(self) -> Run | None:
        """On a hit, the run that produced the restored outputs; None otherwise."""
        source = self._active.row.get("cache_source")
        if not source:
            return None
        from .models import run_from_row

        row = self._tracker._index.run(source)
        return run_from_row(row) if row else None

    @property
    def inputs(self) -> dict[str, Artifact]:
        """The inputs by key: declared ones and those logged so far."""
        from .models import artifact_from_row

        rows: dict[str, dict[str, Any]] = {}
        if self._active.persist:
            rows = {r["link_key"]: r for r in self._tracker._index.links_of(self.run_id, "input")}
        for key, path, digest in self._active.plan.inputs:
            rows.setdefault(key, {"id": "", "key": key, "uri": str(path.resolve()), "hash": digest, "kind": "file"})
            if key in self._active.plan.missing_inputs:  # its bytes were put back in the workspace's own folder
                rows[key] = {**rows[key], "uri": str(path)}
        return {k: artifact_from_row(r) for k, r in rows.items()}

    @property
    def outputs(self) -> dict[str, Artifact]:
        """The outputs by key: on a hit the restored ones, then any logged in the body."""
        from .models import artifact_from_row

        a = self._active
        rows = {**a.cached_outputs, **a.outputs} if a.row.get("cache_hit") else a.outputs
        return {k: artifact_from_row(r) for k, r in rows.items()}

    def cached_output(self, key: str | None = None) -> Artifact | None:
        """On a hit, the restored output ``key`` (the first one when None); None on a miss or an unknown key."""
        from .models import artifact_from_row

        if not self.is_cached:
            return None
        rows = self._active.cached_outputs
        if key is None:
            row = next(iter(rows.values()), None)
        else:
            row = rows.get(key)
        return artifact_from_row(row) if row is not None else None
