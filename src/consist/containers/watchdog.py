"""A watchdog that removes a daemon-run container when the process that started it dies.

A Docker or Podman container belongs to the engine, not to the ``run`` client:
when a batch scheduler cancels a job (``scancel`` sends SIGTERM, then SIGKILL,
to the job's processes) or a Dask worker is killed, the client dies and the
container keeps running, holding CPUs and writing into the workspace. ``--rm``
does not help: it removes a container that has exited.

So before each daemon-run container starts, a small shell process is started
outside the caller's process tree (``setsid -f``: reparented to init, so job
clean-up does not take it along). It reads one pipe whose other end only this
process holds. When the run ends normally, the caller writes ``done`` and the
watchdog exits; when the caller dies in any way, the kernel closes the pipe,
the watchdog reads end-of-file and removes the container by name.
"""

from __future__ import annotations

import os
import shutil
import subprocess

_SCRIPT = 'IFS= read -r line; [ "$line" = done ] && exit 0; exec "$0" rm --force "$1" >/dev/null 2>&1'


class Watchdog:
    """Removes container ``name`` with ``engine rm --force`` unless :meth:`release` is called first."""

    def __init__(self, engine: str, name: str) -> None:
        self._write: int | None = None
        self._setsid: subprocess.Popen[bytes] | None = None
        setsid = shutil.which("setsid")
        if setsid is None:  # pragma: no cover - util-linux is part of every Debian system
            return
        read, write = os.pipe()  # both ends close-on-exec: no other child inherits the write end
        try:
            # Not waited for here: the container may start at once. Whenever `setsid` gets to start
            # the watchdog, its pipe reads end-of-file if this process has died by then, and the
            # container is removed all the same. release() reaps `setsid`, which exits at once.
            self._setsid = subprocess.Popen(
                [setsid, "-f", "sh", "-c", _SCRIPT, engine, name],
                stdin=read, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True,
            )  # fmt: skip
        except BaseException:
            os.close(write)
            raise
        finally:
            os.close(read)
        self._write = write

    def release(self) -> None:
        """The run ended here: the watchdog exits without touching the container."""
        if self._write is not None:
            if self._setsid is not None:
                self._setsid.wait(timeout=30)  # the watchdog reads the pipe from now on
                self._setsid = None
            try:
                os.write(self._write, b"done\n")
            except OSError:
                pass
            os.close(self._write)
            self._write = None
