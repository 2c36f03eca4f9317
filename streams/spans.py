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
from monitor.ingest.decode import RawMessage
from monitor.ingest.genai_mapping import GenAiMapper
from monitor.ingest.otlp import REASON_INVALID_OTLP, SpanBatch, expand_records
from monitor.metrics import Metrics
from monitor.scoring.pipeline import Pipeline
from streams.kafka import deliver, forward_headers_from, raw_message
from streams.observe import observe_scoring
from streams.score import Part, ScoreOutputs, prepare, score_pipeline

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
    pipeline = score_pipeline(settings)
    mapper = GenAiMapper(settings.otlp.mapping)
    outputs = ScoreOutputs.of(settings, topics)
    metrics.dead_letters.labels(REASON_INVALID_OTLP)  # zero, for rates and alerts

    async def handle(messages: list[RawMessage]) -> None:
        batch, parts = await asyncio.to_thread(
            prepare_spans, pipeline, mapper, messages, p.batch_size
        )
        sends = [
            await outputs.dlq.send(key=letter.key, value=_json.encode(letter))
            for letter in batch.dead_letters
        ]
        sends += await outputs.send(parts, batch.messages, forward_headers_from)
        await deliver(sends)
        observe_spans(metrics, batch)
        for part in parts:
            observe_scoring(metrics, part.received, part.result)

    @app.agent(topics[k.otlp_spans_topic], name="spans")
    async def spans(stream: Any) -> None:
        async for records in stream.take_events(settings.otlp.batch_records, within=p.batch_wait_s):
            await handle([raw_message(r) for r in records])
