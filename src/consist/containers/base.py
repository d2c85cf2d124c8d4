"""What every container backend provides, and the one place that starts processes."""

from __future__ import annotations

import abc
import dataclasses
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

from ..errors import ContainerError
from .mounts import Mount
from .watchdog import Watchdog

# Bound on the short engine commands (inspect, info, kill): a daemon that does not
# answer must turn into an error, never into a process that waits forever.
ENGINE_CALL_TIMEOUT_S = 120.0


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
    workdir: str | None = None  # the image's working directory, where the engine does not apply it itself


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
    def launch(self, spec: ContainerSpec) -> Launch:
        """How to start ``spec``: the command line, the engine's environment and any
        data handed over on an inherited pipe (pure until :meth:`Launch.start`)."""

    def argv(self, spec: ContainerSpec) -> list[str]:
        """The command line that runs ``spec``."""
        launch = self.launch(spec)
        launch.close()
        return launch.argv

    def stop(self, spec: ContainerSpec) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Stop a container whose engine process was killed (timeout, Ctrl-C).

        Killing the process group is enough where the container is a child of the
        engine command (Apptainer); a daemon-run container (Docker, Podman) outlives
        its client and is stopped here by name.
        """

    def run(
        self,
        spec: ContainerSpec,
        log_path: Path,
        *,
        stream: bool = False,
        timeout: float | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> ExecResult:
        """Run the container, teeing its output to ``log_path``.

        After ``timeout`` seconds (None: no limit), or when the caller is
        interrupted, the engine process group is killed and :meth:`stop` removes
        the container.
        """
        launch = self.launch(spec)
        watchdog = self.watchdog(spec)
        try:
            return run_process(
                launch.argv,
                launch.env,
                log_path,
                stream=stream,
                timeout=timeout,
                on_abort=lambda: self.stop(spec),
                launch=launch,
                on_line=on_line,
            )
        finally:
            launch.close()
            if watchdog is not None:
                watchdog.release()

    def rerun_script(self, spec: ContainerSpec) -> str:
        """A shell script that runs exactly this engine command again (``command.sh`` of a failed run).

        Environment values are never written into it: the script takes each from
        the caller's environment by name, so it can be shared and kept.
        """
        names = sorted(spec.environment)
        lines = [
            "#!/bin/sh",
            f"# Runs the container of {spec.name or 'this run'} again, with the same engine command.",
            "# It is not recorded by consist. Environment values are read from your environment by name:",
            f"#   {' '.join(names) if names else '(none)'}",
            "set -e",
        ]
        for name in names:
            lines.append(f': "${{{name}?set {name} in your environment first}}"')
        lines += self._rerun_prelude(names)
        lines.append("exec " + shlex.join(self._rerun_argv(spec, names)))
        return "\n".join(lines) + "\n"

    def _rerun_prelude(self, names: list[str]) -> list[str]:
        return []

    def _rerun_argv(self, spec: ContainerSpec, names: list[str]) -> list[str]:
        return self.argv(spec)

    def watchdog(self, spec: ContainerSpec) -> Watchdog | None:
        """For a daemon-run container: what removes it if this process dies mid-run (None: not needed)."""
        return None


ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_environment(env: Mapping[str, str]) -> None:
    """Names an engine accepts, values an environment file can carry."""
    for key, value in env.items():
        if not ENV_NAME.match(key):
            raise ContainerError(
                f"Environment variable name {key!r} is not valid",
                "names may hold only letters, digits and '_', and may not start with a digit",
                "rename the variable",
            )
        if "\n" in value or "\r" in value or "\0" in value:
            raise ContainerError(
                f"The value of environment variable {key!r} holds a line break",
                "values reach the container through the engine's environment file, one variable per line",
                "pass multi-line settings in a mounted file instead",
            )


class Launch:
    """A prepared engine command: argv, the engine's own environment, and data the
    engine reads from an inherited pipe (``/dev/fd/N``), so that values meant for
    the container reach neither a command line, nor the engine's environment,
    nor the disk."""

    def __init__(self, argv: list[str], env: Mapping[str, str] | None = None) -> None:
        self.argv = argv
        self.env = dict(os.environ if env is None else env)
        self._feeds: list[tuple[int, int, bytes]] = []  # (read end, write end, data)

    def pipe(self, data: bytes) -> str:
        """A path the engine can open to read ``data`` once (``/dev/fd/N``)."""
        r, w = os.pipe()
        self._feeds.append((r, w, data))
        return f"/dev/fd/{r}"

    @property
    def pass_fds(self) -> tuple[int, ...]:
        return tuple(r for r, _w, _d in self._feeds)

    def started(self) -> None:
        """The child holds its copies now: write the data and close our ends."""
        feeds, self._feeds = self._feeds, []
        for r, w, data in feeds:
            os.close(r)
            if len(data) <= _PIPE_FITS:  # an empty pipe takes it at once: no thread to start
                _feed(w, data)
            else:
                threading.Thread(target=_feed, args=(w, data), daemon=True).start()

    def close(self) -> None:
        feeds, self._feeds = self._feeds, []
        for r, w, _data in feeds:
            os.close(r)
            os.close(w)


#: What an empty pipe always holds without blocking the writer (Linux pipes hold 64 KiB unless shrunk).
_PIPE_FITS = 4096


def _feed(fd: int, data: bytes) -> None:
    """Write to a pipe in the background (more than the pipe's buffer would block)."""
    try:
        with open(fd, "wb", closefd=True) as f:
            f.write(data)
    except OSError:  # the engine exited without reading it all
        pass


def run_process(
    argv: Sequence[str],
    env: Mapping[str, str],
    log_path: Path,
    *,
    stream: bool = False,
    timeout: float | None = None,
    on_abort: Callable[[], None] | None = None,
    launch: Launch | None = None,
    on_line: Callable[[str], None] | None = None,
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
            pass_fds=launch.pass_fds if launch else (),
        )
        if launch is not None:
            launch.started()

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
                if on_line is not None:
                    on_line(line)
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
            code = _wait(proc, timeout, on_line)
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


def _wait(proc: subprocess.Popen[bytes], timeout: float | None, on_line: Callable[[str], None] | None) -> int:
    """Wait for the engine command; with ``on_line``, wake each second so a status can show the time."""
    if on_line is None:
        return proc.wait(timeout=timeout)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        step = 1.0 if deadline is None else max(0.0, min(1.0, deadline - time.monotonic()))
        try:
            return proc.wait(timeout=step)
        except subprocess.TimeoutExpired:
            if deadline is not None and time.monotonic() >= deadline:
                raise
            on_line("")


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
