"""What a scorer publishes for the sink: rows of the ``events`` and ``findings`` tables.

Text in an ``EventRow`` is already redacted unless redaction is off; a ``FindingRow`` carries
its event's series and time, so findings can be queried on their own. A record written before
``ScoredBatch.shadow`` existed decodes with none; an older sink ignores the field.
"""

from __future__ import annotations

import msgspec

from detectors.base import Finding
from monitor.ingest.events import Event
from monitor.storage.columns import EpochMs


class EventRow(msgspec.Struct, kw_only=True):
    """An event as persisted: text columns already redacted unless redaction is off."""

    request_id: str
    event_time_ms: EpochMs
    produced_at_ms: EpochMs
    model: str
    model_version: str
    deployment: str
    route: str
    app: str
    prompt: str
    response: str
    samples: list[str]
    context: list[str]
    latency_ms: float | None
    ttft_ms: float | None
    input_tokens: int | None
    output_tokens: int | None
    cost_usd: float | None
    status: str
    error_type: str
    attributes: dict[str, str]
    complaint: bool
    rating: float | None
    extra: dict[str, str]
    redacted: bool
    pii_types: list[str]


class FindingRow(msgspec.Struct, kw_only=True):
    """A finding with the event's series and time, so findings can be queried on their own."""

    finding: Finding
    event_time_ms: EpochMs
    model: str
    model_version: str
    deployment: str
    route: str

    @classmethod
    def of(cls, finding: Finding, event: Event) -> FindingRow:
        return cls(
            finding=finding,
            event_time_ms=event.timestamp_ms,
            model=event.model,
            model_version=event.model_version,
            deployment=event.deployment,
            route=event.route,
        )


class ScoredBatch(msgspec.Struct):
    """What a scorer publishes for the sink: rows for `events` and `findings`, and the shadow
    detectors' findings (monitor/scoring/shadow.py), for `findings_versions` only."""

    events: list[EventRow]
    findings: list[FindingRow]
    shadow: list[FindingRow] = msgspec.field(default_factory=list)
