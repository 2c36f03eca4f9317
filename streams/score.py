"""The ``score`` role: validate, run the cheap detectors, redact, pre-aggregate.

Bad events go to the DLQ; scored rows to the sink; window partials to the aggregator; with a
semantic detector on, every valid event is forwarded to the embed topic too. Offsets commit
only after every produced record is acknowledged.

The events topic is read by a batch consumer beside faust's (streams/batches.py): with a
record per LLM call, faust's per-message path is where the CPU went. Scoring and encoding run
in a worker thread (``prepare``), so /health and /metrics answer during a large batch.
Nothing in a batch can crash the role: scored rows are split into
records under the producers' size limit, and when a batch fails as a whole (a detector or an
encoder raising) it is split until the failing records are alone; only those are
dead-lettered (``unprocessable``, or ``too_large`` for a row that fits no record).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import faust
import msgspec

from monitor.config import Settings
from monitor.ingest.decode import ArrivalBounds, RawMessage, dead_letter
from monitor.ingest.events import REASON_TOO_LARGE, REASON_UNPROCESSABLE
from monitor.metrics import Metrics
from monitor.scoring.pipeline import Pipeline, PipelineResult
from monitor.scoring.registry import build_cheap_shadows, build_registry
from monitor.scoring.rows import EventRow, ScoredBatch
from streams.batches import BatchConsumer, run_with_app
from streams.kafka import deliver, forward_headers
from streams.observe import expose_shadows, observe_scoring

log = logging.getLogger(__name__)

_msgpack = msgspec.msgpack.Encoder()
_json = msgspec.json.Encoder()
# One produced record stays under the producers' 4 MiB request limit, with room to spare.
RECORD_LIMIT: Final = 3 * 1_048_576


class RowTooLarge(ValueError):
    """One event's scored row (with its findings) does not fit one record."""


@dataclass
class Part:
    """A batch, or a part of one, as scored: how many records it held, the pipeline's result
    and every record to send, encoded."""

    received: int
    result: PipelineResult
    dead_letters: list[tuple[bytes | None, bytes]]
    scored: list[bytes]
    partials: list[tuple[bytes, bytes]]


def prepare(
    pipeline: Pipeline, messages: Sequence[RawMessage], *, record_limit: int = RECORD_LIMIT
) -> list[Part]:
    """Score and encode one batch (CPU-heavy: call it in a worker thread).

    When the batch fails as a whole (a detector or an encoder raising, a row over the record
    limit), it is split in halves until each failing record is alone; that record becomes a
    dead letter and the others are scored as usual. So it never raises for what a record
    contains, and one bad record costs about one more pass over its batch."""
    try:
        return [encode(len(messages), pipeline.process(messages), record_limit)]
    except Exception as exc:
        if len(messages) == 1:
            return [_failed(messages[0], exc, record_limit)]
        if not messages:
            raise
    log.info("a batch of %d records failed; splitting it to find the cause", len(messages))
    half = len(messages) // 2
    return [
        part
        for sub in (messages[:half], messages[half:])
        for part in prepare(pipeline, sub, record_limit=record_limit)
    ]


def _failed(message: RawMessage, exc: Exception, record_limit: int) -> Part:
    """The dead letter of a record that fails alone: ``too_large`` or ``unprocessable``."""
    log.error("record %s/%d@%d failed: %r", message.topic, message.partition, message.offset, exc)
    reason = REASON_TOO_LARGE if isinstance(exc, RowTooLarge) else REASON_UNPROCESSABLE
    now_ms = time.time_ns() // 1_000_000
    letter = dead_letter(message, reason, f"{type(exc).__name__}: {exc}", now_ms)
    result = PipelineResult(
        scored=ScoredBatch(events=[], findings=[]), dead_letters=[letter], partials=[], events=[]
    )
    return encode(1, result, record_limit)


def encode(received: int, result: PipelineResult, record_limit: int = RECORD_LIMIT) -> Part:
    """Every record of ``result``; raises when a row cannot be encoded or fits no record."""
    return Part(
        received=received,
        result=result,
        dead_letters=[(d.key, _json.encode(d)) for d in result.dead_letters],
        scored=scored_records(result.scored, record_limit) if result.scored.events else [],
        partials=[(p.key.encode(), _msgpack.encode(p)) for p in result.partials],
    )


def scored_records(batch: ScoredBatch, record_limit: int = RECORD_LIMIT) -> list[bytes]:
    """``batch`` as msgpack records of at most ``record_limit`` bytes, halving it until each
    part fits; each row travels with its findings. RowTooLarge when one row alone is over."""
    value = _msgpack.encode(batch)
    if len(value) <= record_limit:
        return [value]
    if len(batch.events) == 1:
        raise RowTooLarge(f"its scored row is {len(value)} bytes, over the {record_limit} limit")
    half = len(batch.events) // 2
    return [
        record
        for rows in (batch.events[:half], batch.events[half:])
        for record in scored_records(_with_findings(rows, batch), record_limit)
    ]


def _with_findings(rows: list[EventRow], batch: ScoredBatch) -> ScoredBatch:
    ids = {row.request_id for row in rows}
    return ScoredBatch(
        events=rows,
        findings=[f for f in batch.findings if f.finding.request_id in ids],
        shadow=[f for f in batch.shadow if f.finding.request_id in ids],
    )


def score_pipeline(settings: Settings) -> Pipeline:
    """The score role's pipeline (span ingest, streams/spans.py, scores with the same)."""
    p = settings.pipeline
    registry = build_registry(settings)
    return Pipeline(
        registry,
        redact_pii=settings.storage.redact,
        max_event_bytes=p.max_event_bytes,
        window_s=p.window_s,
        bounds=ArrivalBounds.of(p),
        shadows=build_cheap_shadows(settings.detectors, list(registry)),
    )


@dataclass(frozen=True)
class ScoreOutputs:
    """Where scored parts go: the DLQ, the scored and partials topics, and the embed topic
    when a semantic detector is on."""

    dlq: Any
    scored: Any
    partials: Any
    embed: Any | None

    @classmethod
    def of(cls, settings: Settings, topics: dict[str, Any]) -> ScoreOutputs:
        k = settings.kafka
        embed = topics[k.embed_topic] if settings.detectors.semantic_enabled else None
        return cls(topics[k.dlq_topic], topics[k.scored_topic], topics[k.partials_topic], embed)

    async def send(
        self,
        parts: Sequence[Part],
        messages: Sequence[RawMessage],
        headers: Callable[[RawMessage], dict[str, bytes]],
    ) -> list[Any]:
        """Send every record of ``parts`` and forward ``messages`` that did not become dead
        letters to the embed topic (same partition, ``headers`` naming their origin); returns
        the send futures, to ``deliver`` before offsets commit."""
        sends = []
        for part in parts:
            for key, value in part.dead_letters:
                sends.append(await self.dlq.send(key=key, value=value))
            for value in part.scored:
                sends.append(await self.scored.send(value=value))
            for key, value in part.partials:
                sends.append(await self.partials.send(key=key, value=value))
        if self.embed is not None:
            dead = {(d.partition, d.offset) for p in parts for d in p.result.dead_letters}
            for m in messages:
                if (m.partition, m.offset) not in dead:
                    sends.append(await self.embed.send(
                        key=m.key, value=m.value, partition=m.partition, headers=headers(m),
                    ))  # fmt: skip
        return sends


def add_score_role(
    app: faust.App, settings: Settings, metrics: Metrics, topics: dict[str, Any]
) -> None:
    pipeline = score_pipeline(settings)
    outputs = ScoreOutputs.of(settings, topics)
    expose_shadows(metrics, pipeline.shadows)

    async def score(messages: list[RawMessage]) -> None:
        parts = await asyncio.to_thread(prepare, pipeline, messages)
        await deliver(await outputs.send(parts, messages, forward_headers))
        for part in parts:
            observe_scoring(metrics, part.received, part.result)

    events = settings.kafka.events_topic
    run_with_app(app, BatchConsumer(settings, app.conf.id, events, score, metrics))
