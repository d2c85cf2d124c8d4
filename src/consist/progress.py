"""A progress bar that only appears when work takes longer than about a second.

Hashing or copying a few kilobytes must not pay for importing rich, so the bar
is created lazily: callers report bytes as they go and the bar shows up once
the operation has been running for ``DELAY_S`` seconds
(``CONSIST_PROGRESS_DELAY`` overrides it). Set ``CONSIST_PROGRESS=0`` to silence
it or ``CONSIST_PROGRESS=1`` to show it even when stderr is not a terminal.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from types import TracebackType
from typing import Any

DELAY_S = 1.0


def _delay() -> float:
    try:
        return float(os.environ.get("CONSIST_PROGRESS_DELAY", DELAY_S))
    except ValueError:
        return DELAY_S


def _mode() -> str:
    """``off``, ``forced`` (even without a terminal) or ``auto`` (only on a terminal)."""
    flag = os.environ.get("CONSIST_PROGRESS", "").strip().lower()
    if flag in {"0", "false", "no", "off"}:
        return "off"
    if flag in {"1", "true", "yes", "on", "always"}:
        return "forced"
    return "auto" if sys.stderr.isatty() else "off"


class _Delayed:
    """What the displays share: they appear after ``DELAY_S`` (if enabled) and stop on exit."""

    def __init__(self, enabled: bool = True) -> None:
        self._start = time.monotonic()
        self._mode = _mode() if enabled else "off"
        self._delay = _delay() if self._mode != "off" else DELAY_S
        self._bar: Any = None  # a rich Progress or Status once shown; both have stop()
        self.shown = False

    @property
    def active(self) -> bool:
        """Whether anything may be shown at all (on a terminal, or forced)."""
        return self._mode != "off"

    def _due(self) -> bool:
        """Whether the display should appear now (it is not shown yet)."""
        return self._mode != "off" and time.monotonic() - self._start >= self._delay

    def _console(self) -> Any:
        from rich.console import Console

        return Console(stderr=True, force_terminal=True if self._mode == "forced" else None)

    def __enter__(self) -> Any:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


class ByteProgress(_Delayed):
    """Context manager reporting bytes processed; shows a rich bar after ``DELAY_S``."""

    def __init__(self, description: str, total: int | None) -> None:
        super().__init__()
        self.description = description
        self.total = total
        self.done = 0
        self._task: Any = None
        self._lock = threading.Lock()

    def advance(self, nbytes: int) -> None:
        with self._lock:  # several threads may copy the files of one directory
            self.done += nbytes
            if self._bar is None:
                if not self._due():
                    return
                self._open()
            self._bar.update(self._task, completed=self.done)

    def _open(self) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self._console(),
            transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task(self.description, total=self.total, completed=self.done)
        self.shown = True


class SweepProgress(_Delayed):
    """Counts the rows of a sweep as they end (executed, cached, failed); a rich bar after ``DELAY_S``."""

    def __init__(self, description: str, total: int) -> None:
        super().__init__()
        self.description = description
        self.total = total
        self.counts = {"executed": 0, "cached": 0, "failed": 0}
        self._task: Any = None

    def _text(self) -> str:
        c = self.counts
        return f"{self.description}: {c['executed']} executed, {c['cached']} cached, {c['failed']} failed"

    def advance(self, outcome: str, n: int = 1) -> None:
        self.counts[outcome] += n
        if self._bar is None:
            if not self._due():
                return
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                console=self._console(), transient=True,
            )  # fmt: skip
            self._bar.start()
            self._task = self._bar.add_task(self._text(), total=self.total)
            self.shown = True
        self._bar.update(self._task, completed=sum(self.counts.values()), description=self._text())


class ContainerStatus(_Delayed):
    """While a container runs quietly: a spinner with the elapsed time and its last log line.

    Appears after ``DELAY_S`` on a terminal (``CONSIST_PROGRESS=1``: always), and
    not at all when the output is streamed (``stream_logs=True``).
    """

    def __init__(self, description: str, enabled: bool = True) -> None:
        super().__init__(enabled)
        self.description = description
        self.last = ""

    def line(self, text: str) -> None:
        """A line the container wrote (called from the threads that read its output)."""
        if text.strip():
            self.last = text.strip()[:200]
        self.tick()

    def tick(self) -> None:
        if self._bar is None:
            if not self._due():
                return
            self._bar = self._console().status("", spinner="dots")
            self._bar.start()
            self.shown = True
        self._bar.update(f"{self.description} {time.monotonic() - self._start:.0f} s  {self.last}")
