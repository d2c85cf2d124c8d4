"""What every container backend provides, and the one place that starts processes."""

from __future__ import annotations

import abc
import dataclasses
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

# Bound on the short engine commands (inspect, info, kill): a daemon that does not
# answer must turn into an error, never into a process that waits forever.
ENGINE_CALL_TIMEOUT_S = 120.0


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
    name: str | None = None  # the container's name, so it can be stopped if we are interrupted


@dataclasses.dataclass
class ExecResult:
    """How a container run ended."""

    exit_code: int
    stderr_tail: str
    log_path: Path
    timed_out: bool = False


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

    def stop(self, spec: ContainerSpec) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Stop a container whose engine process was killed (timeout, Ctrl-C).

        Killing the process group is enough where the container is a child of the
        engine command (Apptainer); a daemon-run container (Docker, Podman) outlives
        its client and is stopped here by name.
        """

    def run(
        self, spec: ContainerSpec, log_path: Path, *, stream: bool = False, timeout: float | None = None
    ) -> ExecResult:
        """Run the container, teeing its output to ``log_path``.

        After ``timeout`` seconds (None: no limit), or when the caller is
        interrupted, the engine process group is killed and :meth:`stop` removes
        the container.
        """
        return run_process(
            self.argv(spec),
            self.child_env(spec),
            log_path,
            stream=stream,
            timeout=timeout,
            on_abort=lambda: self.stop(spec),
        )


def run_process(
    argv: Sequence[str],
    env: Mapping[str, str],
    log_path: Path,
    *,
    stream: bool = False,
    timeout: float | None = None,
    on_abort: Callable[[], None] | None = None,
) -> ExecResult:
    """Run argv; stdout and stderr go to log_path (prefixed) and, with stream, to ours.

    The process runs in its own process group, so a timeout or an interrupt
    kills the engine command and everything it started; ``on_abort`` then
    cleans up what lives outside that group (a daemon's container).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: deque[str] = deque(maxlen=30)
    lock = threading.Lock()
    with open(log_path, "w", encoding="utf-8", errors="replace") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env),
            start_new_session=True,
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
        timed_out = False
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            _abort(proc, on_abort)
            code = proc.returncode
        except BaseException:
            _abort(proc, on_abort)
            raise
        finally:
            for t in threads:
                t.join(timeout=30)
    return ExecResult(exit_code=code, stderr_tail="\n".join(tail), log_path=log_path, timed_out=timed_out)


def _abort(proc: subprocess.Popen[bytes], on_abort: Callable[[], None] | None) -> None:
    """Kill the engine command's process group, then let the backend stop the container."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    try:
        proc.wait(timeout=ENGINE_CALL_TIMEOUT_S)
    except subprocess.TimeoutExpired:  # pragma: no cover - a process that survives SIGKILL
        pass
    if on_abort is not None:
        try:
            on_abort()
        except Exception:  # best effort: the original error is what the caller needs to see
            pass
