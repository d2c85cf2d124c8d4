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


class ByteProgress:
    """Context manager reporting bytes processed; shows a rich bar after ``DELAY_S``."""

    def __init__(self, description: str, total: int | None) -> None:
        self.description = description
        self.total = total
        self.done = 0
        self._start = time.monotonic()
        self._bar: Any = None
        self._task: Any = None
        self._mode = _mode()
        self._enabled = self._mode != "off"
        self._delay = _delay() if self._enabled else DELAY_S
        self.shown = False

    def __enter__(self) -> ByteProgress:
        return self

    def advance(self, nbytes: int) -> None:
        self.done += nbytes
        if self._bar is None:
            if not self._enabled or time.monotonic() - self._start < self._delay:
                return
            self._open()
        self._bar.update(self._task, completed=self.done)

    def _open(self) -> None:
        from rich.console import Console
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
            console=Console(stderr=True, force_terminal=True if self._mode == "forced" else None),
            transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task(self.description, total=self.total, completed=self.done)
        self.shown = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


class SweepProgress:
    """Counts the rows of a sweep as they end (executed, cached, failed); a rich bar after ``DELAY_S``."""

    def __init__(self, description: str, total: int) -> None:
        self.description = description
        self.total = total
        self.counts = {"executed": 0, "cached": 0, "failed": 0}
        self._start = time.monotonic()
        self._bar: Any = None
        self._task: Any = None
        self._mode = _mode()
        self._delay = _delay() if self._mode != "off" else DELAY_S
        self.shown = False

    def __enter__(self) -> SweepProgress:
        return self

    def _text(self) -> str:
        c = self.counts
        return f"{self.description}: {c['executed']} executed, {c['cached']} cached, {c['failed']} failed"

    def advance(self, outcome: str, n: int = 1) -> None:
        self.counts[outcome] += n
        if self._bar is None:
            if self._mode == "off" or time.monotonic() - self._start < self._delay:
                return
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                console=Console(stderr=True, force_terminal=True if self._mode == "forced" else None),
                transient=True,
            )  # fmt: skip
            self._bar.start()
            self._task = self._bar.add_task(self._text(), total=self.total)
            self.shown = True
        self._bar.update(self._task, completed=sum(self.counts.values()), description=self._text())

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


class ContainerStatus:
    """While a container runs quietly: a spinner with the elapsed time and its last log line.

    Appears after ``DELAY_S`` on a terminal (``CONSIST_PROGRESS=1``: always), and
    not at all when the output is streamed (``stream_logs=True``).
    """

    def __init__(self, description: str, enabled: bool = True) -> None:
        self.description = description
        self.last = ""
        self._start = time.monotonic()
        self._mode = _mode() if enabled else "off"
        self._delay = _delay() if self._mode != "off" else DELAY_S
        self._status: Any = None
        self.shown = False

    def __enter__(self) -> ContainerStatus:
        return self

    @property
    def active(self) -> bool:
        """Whether a status may be shown at all (on a terminal, or forced)."""
        return self._mode != "off"

    def line(self, text: str) -> None:
        """A line the container wrote (called from the threads that read its output)."""
        if text.strip():
            self.last = text.strip()[:200]
        self.tick()

    def tick(self) -> None:
        if self._mode == "off":
            return
        elapsed = time.monotonic() - self._start
        if self._status is None:
            if elapsed < self._delay:
                return
            from rich.console import Console

            console = Console(stderr=True, force_terminal=True if self._mode == "forced" else None)
            self._status = console.status("", spinner="dots")
            self._status.start()
            self.shown = True
        self._status.update(f"{self.description} {elapsed:.0f} s  {self.last}")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
