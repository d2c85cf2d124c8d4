"""What every container backend provides, and the one place that starts processes."""

from __future__ import annotations

import abc
import dataclasses
import os
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO


@dataclasses.dataclass(frozen=True)
class Mount:
    """A bind mount: ``host`` (absolute) appears at ``container`` inside."""

    host: Path
    container: str


@dataclasses.dataclass(frozen=True)
class ImageRef:
    """An image as asked for and the content digest it resolved to.

    ``digest`` is what cache keys use: a registry manifest digest, a local image
    ID, or the SHA-256 of a SIF file. ``run_ref`` is what the engine is told to run.
    """

    requested: str
    digest: str
    run_ref: str
    source: str  # "registry", "local-id", "pinned", "sif-file"


@dataclasses.dataclass(frozen=True)
class ContainerSpec:
    """Everything needed to start one container."""

    image: ImageRef
    command: tuple[str, ...]
    mounts: tuple[Mount, ...]
    environment: Mapping[str, str]
    working_dir: str | None = None
    user: str | None = None  # "uid:gid", or None for the engine's default


@dataclasses.dataclass
class ExecResult:
    """How a container run ended."""

    exit_code: int
    stderr_tail: str
    log_path: Path


class Backend(abc.ABC):
    """A container engine."""

    name: str

    @abc.abstractmethod
    def resolve(self, image: str, *, pull_latest: bool = False) -> ImageRef:
        """Resolve ``image`` to its content digest; pull first with ``pull_latest``.

        Raises BackendUnavailableError or ImageNotFoundError with a fix.
        """

    @abc.abstractmethod
    def argv(self, spec: ContainerSpec) -> list[str]:
        """The command line that runs ``spec`` (pure: no side effects)."""

    def child_env(self, spec: ContainerSpec) -> dict[str, str]:
        """The engine process's environment. Values reach the container from here,
        never from the command line, so they do not show in ``ps`` or in logs."""
        env = dict(os.environ)
        env.update(spec.environment)
        return env

    def run(self, spec: ContainerSpec, log_path: Path, *, stream: bool = False) -> ExecResult:
        """Run the container, teeing its output to ``log_path``."""
        return run_process(self.argv(spec), self.child_env(spec), log_path, stream=stream)


def run_process(argv: Sequence[str], env: Mapping[str, str], log_path: Path, *, stream: bool = False) -> ExecResult:
    """Run argv; stdout and stderr go to log_path (prefixed) and, with stream, to ours."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: deque[str] = deque(maxlen=30)
    lock = threading.Lock()
    with open(log_path, "w", encoding="utf-8", errors="replace") as log:
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(env)
        )

        def pump(pipe: IO[bytes], label: str, echo: IO[str], keep: bool) -> None:
            for raw in iter(pipe.readline, b""):
                line = raw.decode("utf-8", errors="replace")
                with lock:
                    log.write(f"{label} {line}" if line.endswith("\n") else f"{label} {line}\n")
                    if keep:
                        tail.append(line.rstrip("\n"))
                    if stream:
                        echo.write(line)
                        echo.flush()
            pipe.close()

        assert proc.stdout is not None and proc.stderr is not None
        threads = [
            threading.Thread(target=pump, args=(proc.stdout, "[stdout]", sys.stdout, False), daemon=True),
            threading.Thread(target=pump, args=(proc.stderr, "[stderr]", sys.stderr, True), daemon=True),
        ]
        for t in threads:
            t.start()
        try:
            code = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            for t in threads:
                t.join()
    return ExecResult(exit_code=code, stderr_tail="\n".join(tail), log_path=log_path)
