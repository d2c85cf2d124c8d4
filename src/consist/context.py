"""The current tracker, so module-level calls (``consist.run``, ``consist.log_artifact``) find it."""

from __future__ import annotations

from contextvars import ContextVar, Token
from types import TracebackType
from typing import TYPE_CHECKING

from .errors import RunStateError

if TYPE_CHECKING:
    from .tracker import Tracker

_CURRENT: ContextVar[Tracker | None] = ContextVar("consist_current_tracker", default=None)


class use_tracker:
    """Make ``tracker`` the current tracker.

    It takes effect at once and, used as a context manager, the previous current
    tracker comes back when the block ends::

        with consist.use_tracker(tracker):
            consist.run(step, ...)
    """

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self._token: Token[Tracker | None] | None = _CURRENT.set(tracker)

    def __enter__(self) -> Tracker:
        return self.tracker

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            _CURRENT.reset(self._token)
            self._token = None


def set_current(tracker: Tracker | None) -> Token[Tracker | None]:
    return _CURRENT.set(tracker)


def reset_current(token: Token[Tracker | None]) -> None:
    _CURRENT.reset(token)


def current_tracker(required: bool = True) -> Tracker | None:
    """The current tracker; raises a clear error when there is none and one is required."""
    tracker = _CURRENT.get()
    if tracker is None and required:
        raise RunStateError(
            "No current tracker",
            "module-level consist functions need a tracker to work on",
            "wrap the code in `with consist.use_tracker(tracker):` or call the method on the tracker",
        )
    return tracker
