"""Looking runs and artifacts up by their recorded fields: the run index answers, through its indexes."""

from __future__ import annotations


class LookupMixin:
    """Lookups of runs and artifacts. Mixed into :class:`consist.tracker.Tracker`."""
