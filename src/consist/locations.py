"""Where outputs live, written so that another workspace can find its own copy.

An output is recorded by its *location* relative to a named root of the tracker
that produced it: ``run_dir://tables/trips.csv``, ``project://data/clean.csv``,
or ``<mount name>://...`` for a mount (``Tracker(mounts={"scratch": ...})``).
A cache hit resolves the location against the roots of the tracker that asks,
so a second checkout sharing the database restores into *its* workspace and
never writes into the first one's. Only with ``allow_external_paths`` may an
output lie outside every root; its location is then its absolute path, and a
hit restores there only for a tracker that allows external paths too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from .errors import ConsistError, OutputError

RESERVED = ("run_dir", "project")
_NAME = re.compile(r"^[a-z][a-z0-9_.+-]*$")


def check_mount_name(name: str) -> str:
    if not _NAME.match(name) or name in RESERVED:
        raise ConsistError(
            f"Mount name {name!r} cannot be used",
            f"mount names become location prefixes ({name}://...): lower-case letters, digits and _ . + -, "
            f"starting with a letter, and not {' or '.join(RESERVED)}",
            'use e.g. mounts={"scratch": "/scratch/data"}',
        )
    return name


class UnresolvableLocation(ConsistError):
    """A recorded location has no place in this workspace (a mount it lacks, or an external path)."""


class Roots:
    """The named roots of one tracker, most specific first."""

    def __init__(
        self, run_dir: Path, project_root: Path, mounts: Mapping[str, Path], *, allow_external: bool = False
    ) -> None:
        named = {"run_dir": run_dir, "project": project_root, **{check_mount_name(k): v for k, v in mounts.items()}}
        self.named = named
        # Longest root first, so run_dir (usually inside the project) wins over the project.
        order = sorted(named.items(), key=lambda kv: len(kv[1].parts), reverse=True)
        # Compared as strings: a hit looks up its output's place in every root, and Path comparisons
        # cost more than the rest of the hit. Path strings are normalised, so this is the same test.
        self._order = [(name, str(root), under_prefix(str(root))) for name, root in order]
        self.root_strings = frozenset(str(root) for root in named.values())
        self.allow_external = allow_external

    def locate(self, path: Path) -> str | None:
        """The location of an absolute path, or None when it lies outside every root."""
        text = str(path)
        for name, root, prefix in self._order:
            if text == root:
                return f"{name}://"
            if text.startswith(prefix):
                return f"{name}://{text[len(prefix) :]}"
        return None

    def location_for_output(self, path: Path, key: str) -> str:
        """The location to record for an output; outside every root only with allow_external_paths."""
        found = self.locate(path)
        if found is not None:
            return found
        if self.allow_external:
            return str(path)
        roots = ", ".join(f"{n}={p}" for n, p in self.named.items())
        raise OutputError(
            f"Output {key!r} at {path} lies outside the tracker's roots ({roots})",
            "outputs are recorded relative to a root so that another workspace can restore its own copy",
            "write it under run_dir or the project, add its folder to Tracker(mounts=...), "
            "or allow it with allow_external_paths=True (or CONSIST_ALLOW_EXTERNAL_PATHS=1)",
        )

    def resolve(self, location: str) -> Path:
        """The path a location names in this workspace."""
        scheme, sep, rel = location.partition("://")
        if not sep:
            path = Path(location)
            if not path.is_absolute():
                raise UnresolvableLocation(f"Recorded location {location!r} is not absolute", None, None)
            if path in self.named.values():
                raise UnresolvableLocation(f"Recorded location {location!r} names a root itself", "a damaged record")
            if self.locate(path) is not None or self.allow_external:
                return path
            raise UnresolvableLocation(
                f"The output was recorded outside every root, at {location}",
                "restoring there could overwrite a file of another workspace",
                "pass allow_external_paths=True to restore it there anyway",
            )
        root = self.named.get(scheme)
        if root is None:
            raise UnresolvableLocation(
                f"The output was recorded under the mount {scheme!r}, which this tracker does not have",
                "the producing tracker had Tracker(mounts={...}) with that name",
                f'add it: Tracker(..., mounts={{"{scheme}": "/path/to/it"}})',
            )
        parts = PurePosixPath(rel).parts
        if rel.startswith("/") or any(p in ("..", "") for p in parts) or "\\" in rel or "\0" in rel:
            raise UnresolvableLocation(f"Recorded location {location!r} leaves its root", "a damaged record", None)
        if not parts:  # restoring there would replace the whole root (the workspace, the project)
            raise UnresolvableLocation(f"Recorded location {location!r} names a root itself", "a damaged record")
        return root.joinpath(*parts)


def under_prefix(root: str) -> str:
    """What every path strictly inside the normalised absolute path ``root`` starts with."""
    return root if root.endswith("/") else root + "/"


def is_inside(path: str, root: str) -> bool:
    """Whether the normalised absolute path ``path`` lies strictly inside ``root`` (compared as text)."""
    return path.startswith(under_prefix(root))


def is_portable(location: str | None) -> bool:
    return bool(location) and "://" in (location or "")


__all__ = ["Roots", "UnresolvableLocation", "check_mount_name", "is_inside", "is_portable", "under_prefix"]
