"""The one error of this concern, rooted at ``MonitorError``."""

from __future__ import annotations

from monitor.errors import MonitorError


class HistoryError(MonitorError):
    """A backfill or comparison cannot run as asked; the message names the fix."""
