"""Exceptions raised by consist.

Every exception derives from :class:`ConsistError`, so ``except ConsistError``
catches anything the library raises on purpose. Messages follow one shape:
the problem, its likely cause, and what to do about it.

::

    ConsistError
    ├── ConfigError               a config value cannot be hashed canonically
    ├── InvalidOptionError        an option value that is not one of its choices (also ValueError)
    ├── MetadataError             metadata that is not JSON, too large, or uses a reserved name (also ValueError)
    ├── InputNotFoundError        an input path does not exist (also FileNotFoundError)
    ├── OutputError               a declared output was not produced or is unusable
    ├── RunStateError             begin/end/log in the wrong order, or a closed Tracker
    ├── RunNotFoundError          no run with that id (also KeyError)
    ├── RunLookupError            find_run() matched no run, or several (also LookupError)
    ├── ArtifactNotFoundError     a run has no artifact under that key (also KeyError)
    ├── StoreError                the provenance database cannot be used
    │   └── StoreLockedError      another program holds the DuckDB file
    ├── IntegrityError            stored bytes no longer match their hash
    ├── PathNotAllowedError       a host path lies outside the allowed roots
    ├── CouplerKeyError           a scenario coupler has no such key (also KeyError)
    └── ContainerError            container engine problems
        ├── BackendUnavailableError   engine not installed or daemon not reachable
        ├── UnknownBackendError       backend_type names no engine (also InvalidOptionError)
        ├── ImageNotFoundError        image missing locally and not pullable
        └── ContainerExecutionError   the container exited non-zero (also RuntimeError)
"""

from __future__ import annotations

from collections.abc import Sequence


def _message(problem: str, cause: str | None = None, fix: str | None = None) -> str:
    parts = [problem.rstrip(".") + "."]
    if cause:
        parts.append(f"Likely cause: {cause.rstrip('.')}.")
    if fix:
        parts.append(f"Fix: {fix.rstrip('.')}.")
    return " ".join(parts)


class ConsistError(Exception):
    """Root of every exception raised on purpose by consist."""

    def __init__(self, problem: str, cause: str | None = None, fix: str | None = None) -> None:
        self.message = _message(problem, cause, fix)
        super().__init__(self.message)
        self.problem = problem
        self.cause = cause
        self.fix = fix

    def __str__(self) -> str:  # OSError and KeyError subclasses would format args their own way
        return self.message


class ConfigError(ConsistError, TypeError):
    """A config value cannot be turned into a canonical, hashable form."""


class InvalidOptionError(ConsistError, ValueError):
    """An option got a value that is not one of its choices (``cache_mode="resue"``)."""


def check_option(name: str, value: object, choices: Sequence[object]) -> None:
    """Raise :class:`InvalidOptionError` naming the choices unless ``value`` is one of them."""
    if value not in choices:
        raise InvalidOptionError(
            f"Unknown {name} {value!r}",
            None,
            f"use one of {', '.join(repr(c) for c in choices)}",
        )


class MetadataError(ConsistError, ValueError):
    """Metadata that cannot be recorded: not JSON, too large, or a name consist itself uses."""


class InputNotFoundError(ConsistError, FileNotFoundError):
    """An input path given to a run does not exist."""

    def __init__(self, path: object, name: str | None = None) -> None:
        label = f"input {name!r}" if name else "input"
        super().__init__(
            f"The {label} path does not exist: {path}",
            "a typo in the path, a relative path resolved against another working directory, "
            "or an upstream step that did not write its output",
            "check the path (relative paths resolve against the current directory) "
            "or run the step that produces it first",
        )
        self.path = path
        self.filename = str(path)


class OutputError(ConsistError):
    """A declared output was not produced, or the function returned something unusable."""


class RunStateError(ConsistError, RuntimeError):
    """A run lifecycle call came in the wrong order (for example end_run with no active run)."""


class RunNotFoundError(ConsistError, KeyError):
    """No run with the requested id exists in the database."""


class RunLookupError(ConsistError, LookupError):
    """A lookup that needs exactly one run (``find_run``) matched none, or several.

    ``count`` is how many runs matched and ``run_ids`` the newest of them (at most five).
    """

    def __init__(
        self, problem: str, cause: str | None = None, fix: str | None = None, *, count: int = 0,
        run_ids: Sequence[str] = (),
    ) -> None:  # fmt: skip
        super().__init__(problem, cause, fix)
        self.count = count
        self.run_ids = list(run_ids)


class ArtifactNotFoundError(ConsistError, KeyError):
    """A run has no artifact under the requested key."""


class StoreError(ConsistError):
    """The provenance database cannot be opened or written."""


class StoreLockedError(StoreError):
    """Another program keeps the DuckDB file open for writing."""


class IntegrityError(ConsistError):
    """Stored bytes no longer match the hash they were stored under."""

    missing_digest: str | None = None


class PathNotAllowedError(ConsistError, PermissionError):
    """A host path lies outside the roots the tracker allows."""


class InvalidNameError(ConsistError, ValueError):
    """A run id or step name that cannot be used: it would name a folder outside its place."""


class CouplerKeyError(ConsistError, KeyError):
    """A scenario coupler has no artifact under the requested key."""

    def __init__(self, key: str, available: Sequence[str]) -> None:
        have = ", ".join(sorted(available)) or "none yet"
        super().__init__(
            f"The coupler has no artifact named {key!r} (available: {have})",
            "the step that produces it has not run yet in this scenario, or it used another key",
            "run that step first, or call coupler.set(key, artifact) yourself",
        )
        self.key = key
        self.available = list(available)


class ContainerError(ConsistError):
    """Base class for container engine problems."""


class BackendUnavailableError(ContainerError):
    """The container engine is not installed, or its daemon does not answer."""


class UnknownBackendError(ContainerError, InvalidOptionError):
    """``backend_type`` names no container engine consist knows."""


class ImageNotFoundError(ContainerError):
    """The image is not available locally and could not be pulled."""


class ContainerExecutionError(ContainerError, RuntimeError):
    """The container ran and exited with a non-zero status."""

    def __init__(
        self,
        *,
        exit_code: int,
        command: Sequence[str],
        image: str,
        stderr_tail: str = "",
        run_id: str | None = None,
    ) -> None:
        tail = stderr_tail.strip()
        problem = f"Container {image!r} exited with status {exit_code} running {list(command)!r}"
        if run_id:
            problem += f" (run {run_id!r})"
        super().__init__(
            problem,
            "the command failed inside the container: a wrong argument, a missing input "
            "under a container mount path, or an output directory it cannot write",
            "read the stderr lines below and the run's container.log, "
            "and check that volumes map the paths the command uses",
        )
        if tail:
            self.message += "\nLast lines of stderr:\n" + "\n".join("    " + ln for ln in tail.splitlines())
        self.exit_code = exit_code
        self.command = list(command)
        self.image = image
        self.stderr_tail = tail
        self.run_id = run_id


class ContainerTimeoutError(ContainerError, TimeoutError):
    """The container ran longer than its time limit and was stopped."""

    def __init__(self, *, seconds: float, command: Sequence[str], image: str, run_id: str | None = None) -> None:
        problem = f"Container {image!r} was stopped after {seconds:g} s running {list(command)!r}"
        if run_id:
            problem += f" (run {run_id!r})"
        super().__init__(
            problem,
            "the command hangs, waits for input, or needs longer than the time limit",
            "raise timeout= (or CONSIST_CONTAINER_TIMEOUT, in seconds), or read the run's container.log",
        )
        self.seconds = seconds
        self.command = list(command)
        self.image = image
        self.run_id = run_id


__all__ = [
    "ArtifactNotFoundError",
    "BackendUnavailableError",
    "ConfigError",
    "ConsistError",
    "ContainerError",
    "ContainerExecutionError",
    "ContainerTimeoutError",
    "CouplerKeyError",
    "ImageNotFoundError",
    "InputNotFoundError",
    "InvalidNameError",
    "IntegrityError",
    "OutputError",
    "PathNotAllowedError",
    "RunLookupError",
    "RunNotFoundError",
    "RunStateError",
    "StoreError",
    "StoreLockedError",
]


class ConsistWarning(UserWarning):
    """Something went wrong but consist recovered (for example a damaged cache entry)."""


def warn_caller(message: str, category: type[Warning] = ConsistWarning) -> None:
    """Warn at the first frame outside consist: the user's line, however deep the call."""
    import os
    import sys
    import warnings

    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(1), 2  # stacklevel 2 is the caller of this function
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


__all__ += ["ConsistWarning"]
