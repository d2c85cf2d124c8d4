"""consist: provenance and caching for scientific workflows.

Records which code, configuration and input data produced every output, skips
work whose inputs have not changed, and restores the cached outputs instead.

Heavy modules (DuckDB, SQLModel, pandas) load on first use, so ``import consist``
stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .context import current_tracker, use_tracker
from .errors import (
    ArtifactNotFoundError,
    BackendUnavailableError,
    ConfigError,
    ConsistError,
    ConsistWarning,
    ContainerError,
    ContainerExecutionError,
    ContainerTimeoutError,
    CouplerKeyError,
    ImageNotFoundError,
    InputNotFoundError,
    IntegrityError,
    InvalidNameError,
    InvalidOptionError,
    MetadataError,
    OutputError,
    PathNotAllowedError,
    RunLookupError,
    RunNotFoundError,
    RunStateError,
    StoreError,
    StoreLockedError,
    UnknownBackendError,
)
from .logs import configure_from_environment as _configure_logging

if TYPE_CHECKING:
    import os
    from pathlib import Path

    import pandas as pd

    from .active import RunRecord
    from .models import Artifact, Run, RunArtifactLink
    from .noop import NoopTracker
    from .results import RunArtifacts, RunResult
    from .scenarios import Coupler, ScenarioContext, TraceStep
    from .tracker import Tracker


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("consist")
    except PackageNotFoundError:  # a source tree that was not installed
        return "0+unknown"


_configure_logging()

_LAZY = {
    "Tracker": ".tracker",
    "RunResult": ".results",
    "RunArtifacts": ".results",
    "Run": ".models",
    "Artifact": ".models",
    "RunArtifactLink": ".models",
    "ScenarioContext": ".scenarios",
    "Coupler": ".scenarios",
    "TraceStep": ".scenarios",
    "NoopTracker": ".noop",
    "RunRecord": ".active",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":  # the installed version: pyproject.toml is the one place it is written
        globals()["__version__"] = value = _version()  # read on first use (importlib.metadata is slow)
        return value
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'consist' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(mod, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


def run(fn: Any, **kwargs: Any) -> RunResult:
    """:meth:`Tracker.run` on the current tracker (see :func:`use_tracker`)."""
    tracker = current_tracker()
    assert tracker is not None
    return tracker.run(fn, **kwargs)


def log_artifact(
    path: str | os.PathLike[str], key: str | None = None, direction: str = "output", **meta: Any
) -> Artifact:
    """:meth:`Tracker.log_artifact` on the current tracker's active run (keywords: its metadata)."""
    tracker = current_tracker()
    assert tracker is not None
    return tracker.log_artifact(path, key, direction, **meta)


def log_input(path: str | os.PathLike[str], key: str | None = None, **meta: Any) -> Artifact:
    """Record an input of the current run."""
    return log_artifact(path, key, "input", **meta)


def log_output(path: str | os.PathLike[str], key: str | None = None, **meta: Any) -> Artifact:
    """Record an output of the current run."""
    return log_artifact(path, key, "output", **meta)


def log_meta(**meta: Any) -> dict[str, Any]:
    """:meth:`Tracker.log_meta` on the current tracker's active run."""
    tracker = current_tracker()
    assert tracker is not None
    return tracker.log_meta(**meta)


def current_consist() -> RunRecord | None:
    """The current tracker's open run (:attr:`Tracker.current_consist`), or None."""
    tracker = current_tracker(required=False)
    return tracker.current_consist if tracker is not None else None


def output_dir() -> Path:
    """The current run's own folder, ``run_dir/<run_id>/`` (created)."""
    tracker = current_tracker()
    assert tracker is not None
    return tracker.output_dir()


def output_path(key: str, ext: str | None = None) -> Path:
    """Where the current run conventionally writes output ``key``: ``run_dir/<run_id>/<key>[.<ext>]``."""
    tracker = current_tracker()
    assert tracker is not None
    return tracker.output_path(key, ext)


def scenario(name: str, tracker: Tracker | None = None, *, config: Any = None, tags: Any = None) -> ScenarioContext:
    """Open a multi-step scenario on ``tracker`` (default: the current one); use with ``with``."""
    from .scenarios import scenario as _scenario

    return _scenario(name, tracker, config=config, tags=tags)


def load_df(artifact_or_path: Any, **kwargs: Any) -> pd.DataFrame:
    """Load a CSV/Parquet/JSON artifact or path (or a directory of CSV/Parquet) as a DataFrame."""
    from .loaders import load_df as _load_df

    return _load_df(artifact_or_path, **kwargs)


__all__ = [
    # tracking
    "Tracker",
    "run",
    "use_tracker",
    "current_tracker",
    "log_artifact",
    "log_input",
    "log_output",
    "log_meta",
    "current_consist",
    "output_dir",
    "output_path",
    "NoopTracker",
    "RunRecord",
    "load_df",
    "scenario",
    "ScenarioContext",
    "Coupler",
    "TraceStep",
    # records
    "Run",
    "Artifact",
    "RunArtifactLink",
    "RunResult",
    "RunArtifacts",
    # errors
    "ConsistError",
    "ConsistWarning",
    "ConfigError",
    "InputNotFoundError",
    "InvalidNameError",
    "InvalidOptionError",
    "MetadataError",
    "UnknownBackendError",
    "OutputError",
    "RunStateError",
    "RunNotFoundError",
    "RunLookupError",
    "ArtifactNotFoundError",
    "StoreError",
    "StoreLockedError",
    "IntegrityError",
    "PathNotAllowedError",
    "CouplerKeyError",
    "ContainerError",
    "BackendUnavailableError",
    "ImageNotFoundError",
    "ContainerExecutionError",
    "ContainerTimeoutError",
    "__version__",
]
