"""Per-event status and latency features: errors, timeouts, refusals and slow calls.

The window statistics (error rate, latency quantiles) come from every event; this detector
records *which* events were abnormal so an SRE can find them in ClickHouse.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from detectors.base import Finding
from monitor.ingest.events import Event


class LatencyErrorsDetector:
    """Flags non-ok statuses and calls slower than ``slow_ms``; score grows with latency."""

    name = "latency_errors"
    version = "1.0.0"
    SLOW_MS: ClassVar[float] = 5000.0

    def __init__(self, slow_ms: float | None = None) -> None:
        self.slow_ms = self.SLOW_MS if slow_ms is None else slow_ms
        if not self.slow_ms > 0:
            raise ValueError(f"slow_ms must be > 0, got {self.slow_ms}")

    def score(self, batch: Sequence[Event]) -> list[Finding]:
        findings: list[Finding] = []
        for event in batch:
            latency = event.latency_ms
            slow = latency is not None and latency > self.slow_ms
            if event.status == "ok" and not slow:
                continue
            category: str = event.status if event.status != "ok" else "slow"
            details: dict[str, str] = {"status": str(event.status)}
            if event.error_type:
                details["error_type"] = event.error_type
            if latency is not None:
                details["latency_ms"] = f"{latency:.0f}"
            score = 1.0 if event.status != "ok" else min(1.0, (latency or 0.0) / (2 * self.slow_ms))
            findings.append(
                Finding(
                    request_id=event.request_id,
                    detector=self.name,
                    detector_version=self.version,
                    score=score,
                    flagged=True,
                    category=category,
                    details=details,
                )
            )
        return findings
