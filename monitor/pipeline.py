"""The pure heart of a scorer: a batch of raw Kafka messages in, everything downstream out.

No I/O here. ``Pipeline.process`` decodes and validates each message (bad ones become
``DeadLetter`` records with their raw bytes and reason), runs every registered detector over
the valid events in one batch, redacts PII from text before it can be persisted, and builds
mergeable window partials. The streams layer moves the result between Kafka topics.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec

from detectors.base import DetectorRegistry, Finding, run_detectors
from detectors.pii import PiiDetector, PiiMatch, PiiScanner, PiiType, redact
from monitor.errors import SchemaError
from monitor.events import Event, decode_event
from monitor.windows import WindowPartial, build_partials


class RawMessage(msgspec.Struct, frozen=True):
    """A Kafka record as the pipeline sees it."""

    value: bytes
    key: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int


class DeadLetter(msgspec.Struct, frozen=True):
    """An event that failed validation: the original bytes, why, and where it came from."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    raw: bytes
    reason: str
    error: str
    kafka_timestamp_ms: int
    received_at_ms: int


class EventRow(msgspec.Struct, kw_only=True):
    """An event as persisted: text columns already redacted unless redaction is off."""

    request_id: str
    event_time_ms: int
    produced_at_ms: int
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
    event_time_ms: int
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
    """What a scorer publishes for the sink: rows for `events` and `findings`."""

    events: list[EventRow]
    findings: list[FindingRow]


@dataclass
class PipelineResult:
    scored: ScoredBatch
    dead_letters: list[DeadLetter]
    partials: list[WindowPartial]
    events: list[Event]
    detector_seconds: dict[str, float] = field(default_factory=dict)


class Pipeline:
    """Decode, score, redact and pre-aggregate one batch. Holds no per-batch state."""

    def __init__(
        self,
        registry: DetectorRegistry,
        *,
        redact_pii: bool = True,
        max_event_bytes: int = 1_000_000,
        window_s: int = 60,
        wall_clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.registry = registry
        self.redact_pii = redact_pii
        self.max_event_bytes = max_event_bytes
        self.window_s = window_s
        self._wall_clock_ms = wall_clock_ms
        self._scanner = PiiScanner()
        self._pii_detector = next(
            (
                d
                for d in registry
                if isinstance(d, PiiDetector) and d.scanner.types == frozenset(PiiType)
            ),
            None,
        )

    def process(self, messages: Sequence[RawMessage]) -> PipelineResult:
        events: list[Event] = []
        produced_at: dict[str, int] = {}
        dead: list[DeadLetter] = []
        for message in messages:
            try:
                event = decode_event(message.value, max_bytes=self.max_event_bytes)
            except SchemaError as exc:
                dead.append(self._dead_letter(message, exc.reason, exc.message))
                continue
            events.append(event)
            produced_at[event.request_id] = message.timestamp_ms

        findings, seconds = run_detectors(self.registry, events)

        by_request: dict[str, list[Finding]] = {}
        for finding in findings:
            by_request.setdefault(finding.request_id, []).append(finding)
        rows = [
            self._row(e, produced_at[e.request_id], by_request.get(e.request_id, ()))
            for e in events
        ]
        finding_rows = [
            FindingRow.of(f, e) for e in events for f in by_request.get(e.request_id, ())
        ]
        return PipelineResult(
            scored=ScoredBatch(events=rows, findings=finding_rows),
            dead_letters=dead,
            partials=build_partials(events, findings, self.window_s),
            events=events,
            detector_seconds=seconds,
        )

    def _dead_letter(self, message: RawMessage, reason: str, error: str) -> DeadLetter:
        return DeadLetter(
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key=message.key,
            raw=message.value,
            reason=reason,
            error=error[:1000],
            kafka_timestamp_ms=message.timestamp_ms,
            received_at_ms=self._wall_clock_ms(),
        )

    def _row(self, event: Event, produced_at_ms: int, findings: Sequence[Finding]) -> EventRow:
        prompt = event.prompt_text
        response = event.response or ""
        samples = list(event.samples)
        context = list(event.context)
        extra = dict(event.extra)
        pii_types: set[str] = set()
        if self.redact_pii:
            prompt_spans, response_spans = self._prompt_response_spans(prompt, response, findings)
            pii_types.update(m.type for m in (*prompt_spans, *response_spans))
            prompt = redact(prompt, prompt_spans)
            response = redact(response, response_spans)
            samples = [self._redact_text(s, pii_types) for s in samples]
            context = [self._redact_text(c, pii_types) for c in context]
            extra = {k: self._redact_text(v, pii_types) for k, v in extra.items()}
        feedback = event.feedback
        return EventRow(
            request_id=event.request_id,
            event_time_ms=event.timestamp_ms,
            produced_at_ms=produced_at_ms,
            model=event.model,
            model_version=event.model_version,
            deployment=event.deployment,
            route=event.route,
            app=event.app,
            prompt=prompt,
            response=response,
            samples=samples,
            context=context,
            latency_ms=event.latency_ms,
            ttft_ms=event.ttft_ms,
            input_tokens=event.input_tokens,
            output_tokens=event.output_tokens,
            cost_usd=event.cost_usd,
            status=event.status,
            error_type=event.error_type or "",
            attributes=dict(event.attributes),
            complaint=bool(feedback and feedback.complaint),
            rating=feedback.rating if feedback else None,
            extra=extra,
            redacted=self.redact_pii,
            pii_types=sorted(pii_types),
        )

    def _prompt_response_spans(
        self, prompt: str, response: str, findings: Sequence[Finding]
    ) -> tuple[list[PiiMatch], list[PiiMatch]]:
        """Reuse the PII detector's spans when it scanned every type, else scan here."""
        if self._pii_detector is None:
            return self._scanner.scan(prompt), self._scanner.scan(response)
        pii = next((f for f in findings if f.detector == self._pii_detector.name), None)
        if pii is None:
            return [], []
        texts = {"prompt": prompt, "response": response}
        spans: dict[str, list[PiiMatch]] = {"prompt": [], "response": []}
        for span in pii.spans:
            text = texts[span.field]
            spans[span.field].append(
                PiiMatch(span.start, span.end, PiiType(span.type), "", text[span.start : span.end])
            )
        return spans["prompt"], spans["response"]

    def _redact_text(self, text: str, pii_types: set[str]) -> str:
        matches = self._scanner.scan(text)
        pii_types.update(m.type for m in matches)
        return redact(text, matches)


def redact_raw(raw: bytes, scanner: PiiScanner) -> str:
    """Best-effort redaction of undecodable bytes for the dead_letters table."""
    text = raw.decode("utf-8", errors="replace")
    return redact(text, scanner.scan(text))
