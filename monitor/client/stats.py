"""What a publisher did with the events it was given: counts, and the bound on what it holds.

Every event handed to ``publish`` ends in exactly one outcome: ``dropped`` at once (buffer full,
or publisher closed), or accepted and later ``delivered`` (the broker acknowledged it) or
``failed`` (Kafka refused it, it timed out, or it was still buffered when ``close`` gave up).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter

OUTCOMES: Final = ("accepted", "delivered", "dropped", "failed")


@dataclass(frozen=True)
class PublisherStats:
    """Counts since the publisher was created; ``pending`` is accepted but not yet settled."""

    accepted: int
    delivered: int
    dropped: int
    failed: int

    @property
    def pending(self) -> int:
        return self.accepted - self.delivered - self.failed


@dataclass(frozen=True)
class PublisherMetrics:
    """The publisher's Prometheus counter, one child per outcome."""

    events: Counter


def publisher_metrics(registry: CollectorRegistry) -> PublisherMetrics:
    """Create the publisher's metrics in ``registry`` (one publisher per registry)."""
    from prometheus_client import Counter

    events = Counter(
        "llm_monitor_client_events",
        "Events handed to the publisher, by outcome: accepted, then delivered or failed; "
        "or dropped at once (buffer full, publisher closed)",
        ["outcome"],
        registry=registry,
    )
    for outcome in OUTCOMES:
        events.labels(outcome=outcome)
    return PublisherMetrics(events=events)


class Tally:
    """Thread-safe outcome counts that bound how many events are pending at once."""

    def __init__(self, max_pending: int, metrics: PublisherMetrics | None = None) -> None:
        self.max_pending = max_pending
        self._metrics = metrics
        self._idle = threading.Condition()
        self._accepted = self._delivered = self._dropped = self._failed = 0
        self._abandoned = False

    def accept(self) -> bool:
        """Take one event if fewer than ``max_pending`` are pending; count a drop otherwise."""
        with self._idle:
            if self._abandoned or self.pending >= self.max_pending:
                self._dropped += 1
                outcome = "dropped"
            else:
                self._accepted += 1
                outcome = "accepted"
        self._count(outcome)
        return outcome == "accepted"

    def drop(self) -> None:
        """Count an event refused without being accepted (the publisher is closed)."""
        with self._idle:
            self._dropped += 1
        self._count("dropped")

    def settle(self, delivered: bool) -> bool:
        """One accepted event delivered or failed; True when nothing is pending any more."""
        with self._idle:
            if self._abandoned:
                return self.pending == 0
            if delivered:
                self._delivered += 1
            else:
                self._failed += 1
            idle = self.pending == 0
            if idle:
                self._idle.notify_all()
        self._count("delivered" if delivered else "failed")
        return idle

    def abandon(self) -> int:
        """Count every pending event as failed and ignore their later outcomes: how many."""
        with self._idle:
            if self._abandoned:
                return 0
            self._abandoned = True
            lost = self.pending
            self._failed += lost
            self._idle.notify_all()
        if lost and self._metrics is not None:
            self._metrics.events.labels(outcome="failed").inc(lost)
        return lost

    def forked(self) -> None:
        """In a forked child: a fresh lock, and the parent's pending events are not its own."""
        self._idle = threading.Condition()
        self._accepted = self._delivered + self._failed

    def wait_idle(self, timeout_s: float | None) -> bool:
        """Block until nothing is pending or ``timeout_s`` passed; whether nothing is pending."""
        with self._idle:
            return self._idle.wait_for(lambda: self.pending == 0, timeout_s)

    @property
    def pending(self) -> int:
        return self._accepted - self._delivered - self._failed

    def snapshot(self) -> PublisherStats:
        with self._idle:
            return PublisherStats(self._accepted, self._delivered, self._dropped, self._failed)

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.events.labels(outcome=outcome).inc()
