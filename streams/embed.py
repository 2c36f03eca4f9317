"""The ``embed`` role: embedding-backed detectors on their own topic and consumer group, so
GPU workers scale apart from the CPU scorers. The model runs on its own thread.

A forwarded record that no longer decodes is dead-lettered (topic/partition/offset, reason),
never retried and never the batch's end. Each event's window contribution names where it was
first read (its llm.events partition and offset, carried in a header by the score role), so a
copy forwarded again after a score worker crashed is merged once.

Each detector scores the sample its rate picks (docs/sampling.md). With
``detectors.sampling.max_lag_s`` set, the age of the oldest record in each batch (its Kafka
timestamp: when the score role forwarded it) is the role's backlog; the sampler lowers the
rates while it is over the limit and raises them back once it shrinks.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import faust
import msgspec

from monitor.config import Settings
from monitor.errors import SchemaError
from monitor.ingest.decode import RawMessage
from monitor.ingest.events import Event, decode_event
from monitor.metrics import REASON_UNDECODABLE, Metrics
from monitor.scoring.registry import build_embeddings
from monitor.scoring.semantic import SemanticScorer
from monitor.windows.stats import EventSource
from streams.kafka import (
    deliver,
    origin_offset,
    origin_topic,
    raw_message,
    send_internal_dead_letter,
)
from streams.observe import expose_shadows, observe_semantic

log = logging.getLogger(__name__)
_msgpack = msgspec.msgpack.Encoder()


def add_embed_role(
    app: faust.App, settings: Settings, metrics: Metrics, topics: dict[str, Any]
) -> None:
    """Semantic detectors on their own topic and consumer group, so GPU workers scale apart."""
    k = settings.kafka
    embeddings = build_embeddings(settings.detectors)
    scorer = SemanticScorer(settings.detectors, embeddings, window_s=settings.pipeline.window_s)
    scored, partials = topics[k.scored_topic], topics[k.partials_topic]
    dlq = topics[k.dlq_topic]
    batch = min(settings.pipeline.batch_size, embeddings.max_batch)
    metrics.internal_dead_letters.labels(k.embed_topic, REASON_UNDECODABLE)  # zero for alerts
    for name in scorer.names:
        metrics.detector_sample_rate.labels(name).set(scorer.sampler.rate(name))
    expose_shadows(metrics, scorer.shadows)

    @app.agent(topics[k.embed_topic], name="embed")
    async def embed(stream: Any) -> None:
        # Load on the model's own thread (CUDA handles are per thread), before the first batch.
        await embeddings.run_on_model_thread(embeddings.start)
        log.info("embed role: %s on %s", ", ".join(scorer.names), embeddings.device)
        async for records in stream.take_events(batch, within=settings.pipeline.batch_wait_s):
            messages = [raw_message(r) for r in records]
            lag_s = backlog_seconds(messages, time.time())
            metrics.embed_backlog_seconds.set(lag_s)
            for name, rate in scorer.observe_lag(lag_s).items():
                metrics.detector_sample_rate.labels(name).set(rate)
            forwarded = decode_forwarded(
                messages, k.events_topic,
                [origin_offset(r) for r in records], settings.pipeline.max_event_bytes,
                [origin_topic(r) for r in records],
            )  # fmt: skip
            await deliver([
                await send_internal_dead_letter(dlq, m, REASON_UNDECODABLE, error, metrics)
                for m, error in forwarded.undecodable
            ])  # fmt: skip
            events = forwarded.events
            if not events:
                continue
            hits_before = embeddings.stats.cache_hits
            started = time.perf_counter()
            result = await embeddings.run_on_model_thread(scorer.process, events, forwarded.sources)
            metrics.embed_batch_seconds.observe(time.perf_counter() - started)
            sends = []
            if result.scored.findings or result.scored.shadow:
                sends.append(await scored.send(value=_msgpack.encode(result.scored)))
            for part in result.partials:
                sends.append(
                    await partials.send(key=part.key.encode(), value=_msgpack.encode(part))
                )
            await deliver(sends)
            hits = embeddings.stats.cache_hits - hits_before
            observe_semantic(metrics, len(events), result, hits)


def backlog_seconds(messages: list[RawMessage], now_s: float) -> float:
    """How far behind the role is: the age of the oldest record of the batch (0 if none)."""
    stamps = [m.timestamp_ms for m in messages if m.timestamp_ms > 0]
    return max(0.0, now_s - min(stamps) / 1000) if stamps else 0.0


@dataclass
class Forwarded:
    """A batch of forwarded records: the events, and the records that do not decode (with
    the error) to dead-letter."""

    events: list[Event] = field(default_factory=list)
    sources: list[EventSource] = field(default_factory=list)
    undecodable: list[tuple[RawMessage, str]] = field(default_factory=list)


def decode_forwarded(
    messages: list[RawMessage],
    events_topic: str,
    origins: list[int | None],
    max_bytes: int,
    origin_topics: list[str | None] | None = None,
) -> Forwarded:
    """Events the score role validated, each with where it was first read (its llm.events
    record, or the topic ``origin_topics`` names, such as the OTLP topic, from the forwarding
    headers; else this record); one that no longer decodes is set apart, not retried."""
    out = Forwarded()
    topics = origin_topics or [None] * len(messages)
    for message, origin, topic in zip(messages, origins, topics, strict=True):
        try:
            event = decode_event(message.value, max_bytes=max_bytes)
        except SchemaError as exc:
            error = str(exc)
        except Exception as exc:  # whatever a record holds, it is never the batch's end
            error = f"{type(exc).__name__}: {exc}"
        else:
            out.events.append(event)
            out.sources.append(
                EventSource(message.topic, message.partition, message.offset)
                if origin is None
                else EventSource(topic or events_topic, message.partition, origin)
            )
            continue
        log.warning(
            "embed: dead-lettering undecodable %s[%d]@%d: %s",
            message.topic, message.partition, message.offset, error,
        )  # fmt: skip
        out.undecodable.append((message, error))
    return out
