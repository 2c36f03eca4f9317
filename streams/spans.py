"""Span ingest, part of the ``score`` role: OTLP traces in, one event per GenAI span, then the
event path unchanged (validation, cheap detectors, redaction, window partials, the sink and,
with a semantic detector on, the embed role).

Each OTLP record of ``kafka.otlp_spans_topic`` (protobuf or JSON, detected per record) becomes
one message of the event path per GenAI span (monitor/ingest/otlp.py), at the span's position
(``offset * 1,000,000 + span index``), so windows, the embed role and the ``dead_letters``
table tell the events of one record apart and merge a replayed record once. A record that does
not decode is dead-lettered whole (its bytes, the reason); spans that are not LLM calls are
counted in ``llm_monitor_otlp_spans_total{outcome="ignored"}``. Offsets commit only after every
produced record is acknowledged, as in streams/score.py, whose ``prepare`` does the scoring.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import faust
import msgspec

from monitor.config import Settings
from monitor.ingest.decode import ArrivalBounds, RawMessage
from monitor.ingest.genai_mapping import GenAiMapper
from monitor.ingest.otlp import REASON_INVALID_OTLP, SpanBatch, expand_records
from monitor.metrics import Metrics
from monitor.scoring.pipeline import Pipeline
from monitor.scoring.registry import build_registry
from streams.kafka import deliver, forward_headers_from, raw_message
from streams.observe import observe_scoring
from streams.score import Part, prepare

_json = msgspec.json.Encoder()


def prepare_spans(
    pipeline: Pipeline, mapper: GenAiMapper, records: Sequence[RawMessage], batch_size: int
) -> tuple[SpanBatch, list[Part]]:
    """Expand a batch of OTLP records into span events and score them (CPU-heavy: call it in a
    worker thread). The events are scored ``batch_size`` at a time, in position order."""
    batch = expand_records(records, mapper, now_ms=lambda: time.time_ns() // 1_000_000)
    messages = batch.messages
    parts = [
        part
        for start in range(0, len(messages), batch_size)
        for part in prepare(pipeline, messages[start : start + batch_size])
    ]
    return batch, parts


def observe_spans(metrics: Metrics, batch: SpanBatch) -> None:
    """Spans mapped and left out, and the records refused (received and dead-lettered)."""
    metrics.otlp_spans.labels("event").inc(len(batch.messages))
    metrics.otlp_spans.labels("ignored").inc(batch.ignored)
    metrics.events_received.inc(len(batch.dead_letters))
    for letter in batch.dead_letters:
        metrics.dead_letters.labels(letter.reason).inc()


def add_span_ingest(
    app: faust.App, settings: Settings, metrics: Metrics, topics: dict[str, Any]
) -> None:
    """The span-ingest agent on ``kafka.otlp_spans_topic``, with the score role's outputs."""
    k, p = settings.kafka, settings.pipeline
    pipeline = Pipeline(
        build_registry(settings),
        redact_pii=settings.storage.redact,
        max_event_bytes=p.max_event_bytes,
        window_s=p.window_s,
        bounds=ArrivalBounds.of(p),
    )
    mapper = GenAiMapper(settings.otlp.mapping)
    dlq, scored, partials = topics[k.dlq_topic], topics[k.scored_topic], topics[k.partials_topic]
    embed = topics[k.embed_topic] if settings.detectors.semantic_enabled else None
    metrics.dead_letters.labels(REASON_INVALID_OTLP)  # zero, for rates and alerts

    async def handle(messages: list[RawMessage]) -> None:
        batch, parts = await asyncio.to_thread(
            prepare_spans, pipeline, mapper, messages, p.batch_size
        )
        sends = [
            await dlq.send(key=letter.key, value=_json.encode(letter))
            for letter in batch.dead_letters
        ]
        for part in parts:
            for key, value in part.dead_letters:
                sends.append(await dlq.send(key=key, value=value))
            for value in part.scored:
                sends.append(await scored.send(value=value))
            for key, value in part.partials:
                sends.append(await partials.send(key=key, value=value))
        if embed is not None:
            dead = {(d.partition, d.offset) for part in parts for d in part.result.dead_letters}
            for m in batch.messages:
                if (m.partition, m.offset) not in dead:
                    sends.append(await embed.send(
                        key=m.key, value=m.value, partition=m.partition,
                        headers=forward_headers_from(m),
                    ))  # fmt: skip
        await deliver(sends)
        observe_spans(metrics, batch)
        for part in parts:
            observe_scoring(metrics, part.received, part.result)

    @app.agent(topics[k.otlp_spans_topic], name="spans")
    async def spans(stream: Any) -> None:
        async for records in stream.take_events(settings.otlp.batch_records, within=p.batch_wait_s):
            await handle([raw_message(r) for r in records])
