"""Kafka plumbing shared by the roles: records as the pipeline sees them, delivery, and the
dead-letter path for records of internal topics that cannot be processed."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from aiokafka.partitioner import murmur2

from monitor.ingest.decode import RawMessage, dead_letter
from monitor.metrics import Metrics

# Forwarded events (score role → embed topic) carry the offset of their llm.events record, and
# go to the same partition number: the embed role's window contributions then name the same
# source as the score role's, in its offset order, so a re-forwarded copy is merged once.
ORIGIN_OFFSET_HEADER = "llm-monitor-origin-offset"
# ... and the topic it was read from, when not llm.events: span events (streams/spans.py) name
# the OTLP topic and their position there (monitor/ingest/otlp.py), a source of their own.
ORIGIN_TOPIC_HEADER = "llm-monitor-origin-topic"


def forward_headers(message: RawMessage) -> dict[str, bytes]:
    """Headers naming where a forwarded record was first read."""
    return {ORIGIN_OFFSET_HEADER: str(message.offset).encode()}


def forward_headers_from(message: RawMessage) -> dict[str, bytes]:
    """Headers naming where a forwarded record was first read, its topic included."""
    return {**forward_headers(message), ORIGIN_TOPIC_HEADER: message.topic.encode()}


def origin_topic(event: Any) -> str | None:
    """The topic a forwarded record names as its origin, or None (llm.events: the default)."""
    value = (getattr(event, "headers", None) or {}).get(ORIGIN_TOPIC_HEADER)
    if value is None:
        return None
    try:
        return bytes(value).decode() or None
    except (TypeError, ValueError):
        return None


def origin_offset(event: Any) -> int | None:
    """The llm.events offset a forwarded record carries, or None (a record without it)."""
    value = (getattr(event, "headers", None) or {}).get(ORIGIN_OFFSET_HEADER)
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def kafka_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for ``key``."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


def raw_message(event: Any) -> RawMessage:
    message = event.message
    return RawMessage(
        value=event.value,
        key=event.key,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        timestamp_ms=int(message.timestamp * 1000),
    )


async def deliver(sends: list[Any]) -> None:
    """Wait until every produced message is acknowledged, so offsets commit only after."""
    if sends:
        await asyncio.gather(*sends)


async def send_internal_dead_letter(
    dlq: Any, message: RawMessage, reason: str, error: str, metrics: Metrics
) -> Any:
    """Dead-letter a record of an internal topic (scored, partials, windows, control, ...) that
    cannot be processed: the DLQ keeps its bytes, topic/partition/offset and the reason, and
    it counts in ``llm_monitor_internal_dead_letters_total{topic, reason}``. Returns the send
    future; await it (or ``deliver``) before the record's offset may commit."""
    metrics.internal_dead_letters.labels(message.topic, reason).inc()
    letter = dead_letter(message, reason, error, time.time_ns() // 1_000_000)
    return await dlq.send(key=message.key, value=msgspec.json.encode(letter))
