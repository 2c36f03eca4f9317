"""A batch of raw Kafka records in, valid events and dead letters out.

Every record becomes exactly one of the two: an ``Event`` (with the time its producer sent it),
or a ``DeadLetter`` carrying the original bytes and the reason it was refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec

from monitor.errors import SchemaError
from monitor.ingest.dlq import DeadLetter
from monitor.ingest.events import Event, decode_event


class RawMessage(msgspec.Struct, frozen=True):
    """A Kafka record as the pipeline sees it."""

    value: bytes
    key: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int


@dataclass
class DecodedBatch:
    """The valid events of a batch, when each was produced, and the records refused."""

    events: list[Event] = field(default_factory=list)
    produced_at_ms: dict[str, int] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)


def decode_batch(
    messages: Sequence[RawMessage], *, max_bytes: int, now_ms: Callable[[], int]
) -> DecodedBatch:
    """Decode every record; one that fails validation becomes a dead letter stamped ``now_ms``."""
    batch = DecodedBatch()
    for message in messages:
        try:
            event = decode_event(message.value, max_bytes=max_bytes)
        except SchemaError as exc:
            batch.dead_letters.append(dead_letter(message, exc.reason, exc.message, now_ms()))
            continue
        batch.events.append(event)
        batch.produced_at_ms[event.request_id] = message.timestamp_ms
    return batch


def dead_letter(message: RawMessage, reason: str, error: str, received_at_ms: int) -> DeadLetter:
    """The DLQ record for ``message``: its bytes and origin, the reason and (capped) error."""
    return DeadLetter(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        raw=message.value,
        reason=reason,
        error=error[:1000],
        kafka_timestamp_ms=message.timestamp_ms,
        received_at_ms=received_at_ms,
    )
