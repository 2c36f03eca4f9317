"""The pure heart of a scorer: a batch of raw Kafka messages in, everything downstream out.

No I/O here. ``Pipeline.process`` decodes and validates each message (monitor/ingest: bad ones
become ``DeadLetter`` records with their raw bytes and reason), runs every registered detector
over the valid events in one batch, redacts PII from text before it can be persisted, and
builds mergeable window partials. Each partial carries where its events were read (topic,
partition, offset of every record: ``event_sources``), so the aggregator can merge a batch
that is processed again after a crash without counting its events twice. Shadow detectors
(monitor/scoring/shadow.py) score the same events; their findings go to ``scored.shadow``
only, never into the partials or the redaction. The streams layer moves the result between
Kafka topics.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from detectors.base import DetectorRegistry, Finding, run_detectors
from detectors.pii import PiiDetector, PiiMatch, PiiScanner, PiiType, redact
from monitor.ingest.decode import ArrivalBounds, RawMessage, decode_batch
from monitor.ingest.dlq import DeadLetter
from monitor.ingest.events import Event
from monitor.scoring.rows import EventRow, FindingRow, ScoredBatch
from monitor.scoring.shadow import Shadow, ShadowResult, run_shadows
from monitor.windows.stats import EventSource, WindowPartial, build_partials


@dataclass
class PipelineResult:
    scored: ScoredBatch
    dead_letters: list[DeadLetter]
    partials: list[WindowPartial]
    events: list[Event]
    detector_seconds: dict[str, float] = field(default_factory=dict)
    shadow: ShadowResult = field(default_factory=ShadowResult)


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
        bounds: ArrivalBounds | None = None,
        shadows: Sequence[Shadow] = (),
    ) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.registry = registry
        self.shadows = tuple(shadows)
        self.redact_pii = redact_pii
        self.max_event_bytes = max_event_bytes
        self.window_s = window_s
        self._wall_clock_ms = wall_clock_ms
        self.bounds = bounds  # event time relative to arrival; None: no bound (tests, tools)
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
        decoded = decode_batch(
            messages, max_bytes=self.max_event_bytes, now_ms=self._wall_clock_ms,
            bounds=self.bounds,
        )  # fmt: skip
        events, produced_at, dead = decoded.events, decoded.produced_at_ms, decoded.dead_letters
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
        shadow = run_shadows(self.shadows, events)
        return PipelineResult(
            scored=ScoredBatch(events=rows, findings=finding_rows, shadow=shadow.rows(events)),
            dead_letters=dead,
            partials=build_partials(events, findings, self.window_s, event_sources(messages, dead)),
            events=events,
            detector_seconds=seconds,
            shadow=shadow,
        )

    def _row(self, event: Event, produced_at_ms: int, findings: Sequence[Finding]) -> EventRow:
        prompt = event.prompt_text
        response = event.response or ""
        # Shared, not copied: neither the event nor its row is changed once built.
        samples, context, extra = event.samples, event.context, event.extra
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
            attributes=event.attributes,
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


def event_sources(messages: Sequence[RawMessage], dead: Sequence[DeadLetter]) -> list[EventSource]:
    """Where each valid event was read: the records that did not become dead letters, in order
    (``decode_batch`` turns every record into exactly one of the two, in order)."""
    refused = {(d.topic, d.partition, d.offset) for d in dead}
    return [
        EventSource(m.topic, m.partition, m.offset)
        for m in messages
        if (m.topic, m.partition, m.offset) not in refused
    ]
