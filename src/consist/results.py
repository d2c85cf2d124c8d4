"""Result objects returned by runs and queries.

They hold plain index rows and build the SQLModel ``Run``/``Artifact`` objects
on first access, so a cache hit does not pay for importing SQLModel.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .models import Artifact, Run


@dataclasses.dataclass
class RunResult:
    """What :meth:`Tracker.run` returns.

    Attributes
    ----------
    run_id:
        The id the run was recorded under (``name~2`` when the requested id was taken).
    cache_hit:
        True when the function did not execute and the outputs were restored.
    cache_source:
        On a hit, the id of the run that really produced the outputs.
    waited_for:
        The run this one waited for because it was executing the same step at the
        same time (its outputs were then a hit), or None.
    """

    run_id: str
    cache_hit: bool
    cache_source: str | None
    _run_row: dict[str, Any] = dataclasses.field(repr=False)
    _output_rows: dict[str, dict[str, Any]] = dataclasses.field(repr=False)
    _run: Any = dataclasses.field(default=None, repr=False)
    _outputs: Any = dataclasses.field(default=None, repr=False)
    waited_for: str | None = None

    @property
    def run(self) -> Run:
        """The recorded :class:`~consist.Run`."""
        if self._run is None:
            from .models import run_from_row

            self._run = run_from_row(self._run_row)
        return self._run

    @property
    def outputs(self) -> dict[str, Artifact]:
        """Output artifacts by key; their ``path`` is where the bytes are now."""
        if self._outputs is None:
            from .models import artifact_from_row

            self._outputs = {k: artifact_from_row(r) for k, r in self._output_rows.items()}
        return self._outputs

    @property
    def output(self) -> Artifact | None:
        """The first output artifact, or None when the run has none."""
        return next(iter(self.outputs.values()), None)

    def output_path(self, key: str) -> Path:
        """The host path of output ``key``."""
        return Path(self._output_rows[key]["uri"])


@dataclasses.dataclass
class RunArtifacts:
    """The artifacts of one run, by key: what it read, what it wrote, and its logs."""

    inputs: dict[str, Artifact]
    outputs: dict[str, Artifact]
    logs: dict[str, Artifact] = dataclasses.field(default_factory=dict)
