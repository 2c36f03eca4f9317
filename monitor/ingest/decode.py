"""A batch of raw Kafka records in, valid events and dead letters out.

Every record becomes exactly one of the two: an ``Event`` (with the time its producer sent it),
or a ``DeadLetter`` carrying the original bytes (a prefix, when they are huge) and the reason
it was refused. Nothing a record contains can make ``decode_batch`` raise: an unexpected error
is that record's dead letter (``undecodable``), never the batch's end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

import msgspec

from monitor.config import PipelineSettings
from monitor.errors import SchemaError
from monitor.ingest.dlq import DeadLetter
from monitor.ingest.events import (
    MAX_EPOCH_MS,
    MIN_EPOCH_MS,
    REASON_TIMESTAMP_RANGE,
    REASON_UNDECODABLE,
    Event,
    decode_event,
)

# A dead letter is JSON with its bytes in base64 (4/3 the size) and must fit one Kafka record
# (the producers' limit is 4 MiB): 2 MiB of raw bytes (the largest max_event_bytes allowed, so
# every event within the size limit is kept whole and can be replayed) and a short key.
MAX_DEAD_LETTER_RAW: Final = 2 * 1_048_576
MAX_DEAD_LETTER_KEY: Final = 4096
MAX_ERROR_CHARS: Final = 1000


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


@dataclass(frozen=True)
class ArrivalBounds:
    """How far event time may lie from arrival: ``max_age_s`` before, ``max_future_skew_s``
    after (settings ``pipeline.max_event_age_s``, ``pipeline.max_future_skew_s``)."""

    max_age_s: int
    max_future_skew_s: int

    @classmethod
    def of(cls, settings: PipelineSettings) -> ArrivalBounds:
        """The bounds configured in ``settings``."""
        return cls(settings.max_event_age_s, settings.max_future_skew_s)

    def check(self, event_ms: int, arrival_ms: int) -> None:
        """SchemaError ``timestamp_out_of_range`` when ``event_ms`` is beyond either bound."""
        ahead_s = (event_ms - arrival_ms) / 1000
        if ahead_s > self.max_future_skew_s:
            raise SchemaError(
                REASON_TIMESTAMP_RANGE,
                f"timestamp {iso(event_ms)} is {ahead_s:.0f}s after its arrival at "
                f"{iso(arrival_ms)}; pipeline.max_future_skew_s is {self.max_future_skew_s}",
            )
        if -ahead_s > self.max_age_s:
            raise SchemaError(
                REASON_TIMESTAMP_RANGE,
                f"timestamp {iso(event_ms)} is {-ahead_s:.0f}s before its arrival at "
                f"{iso(arrival_ms)}; pipeline.max_event_age_s is {self.max_age_s}",
            )


def iso(epoch_ms: int) -> str:
    """Epoch milliseconds as RFC 3339 UTC, for error texts."""
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat(timespec="milliseconds")


def decode_batch(
    messages: Sequence[RawMessage],
    *,
    max_bytes: int,
    now_ms: Callable[[], int],
    bounds: ArrivalBounds | None = None,
) -> DecodedBatch:
    """Decode every record; one that fails becomes a dead letter stamped with the arrival time.

    ``now_ms`` is read once per batch: it is the arrival time that ``bounds`` (when given)
    holds event time to. Any exception while decoding a record dead-letters that record."""
    batch = DecodedBatch()
    arrival_ms = now_ms()
    for message in messages:
        try:
            event = decode_event(message.value, max_bytes=max_bytes)
            if bounds is not None:
                bounds.check(event.timestamp_ms, arrival_ms)
        except SchemaError as exc:
            reason, error = exc.reason, exc.message
        except Exception as exc:  # one record's failure is never the batch's
            reason, error = REASON_UNDECODABLE, f"{type(exc).__name__}: {exc}"
        else:
            batch.events.append(event)
            batch.produced_at_ms[event.request_id] = _produced_at(message, arrival_ms)
            continue
        batch.dead_letters.append(dead_letter(message, reason, error, arrival_ms))
    return batch


def _produced_at(message: RawMessage, arrival_ms: int) -> int:
    """The record's Kafka timestamp, or its arrival when the producer set none storable."""
    if MIN_EPOCH_MS <= message.timestamp_ms < MAX_EPOCH_MS:
        return message.timestamp_ms
    return arrival_ms


def dead_letter(message: RawMessage, reason: str, error: str, received_at_ms: int) -> DeadLetter:
    """The DLQ record for ``message``: its bytes and origin, the reason and (capped) error.

    Bytes beyond MAX_DEAD_LETTER_RAW (and a key beyond MAX_DEAD_LETTER_KEY) are cut, saying so
    in ``error`` with the original length, so the record always fits the producer's limit."""
    error = error[:MAX_ERROR_CHARS].encode("utf-8", "backslashreplace").decode("utf-8")
    raw, key, raw_size = message.value, message.key, 0
    if len(raw) > MAX_DEAD_LETTER_RAW:
        error += f" [raw cut to the first {MAX_DEAD_LETTER_RAW} of {len(raw)} bytes]"
        raw_size, raw = len(raw), raw[:MAX_DEAD_LETTER_RAW]
    if key is not None and len(key) > MAX_DEAD_LETTER_KEY:
        error += f" [key cut to the first {MAX_DEAD_LETTER_KEY} of {len(key)} bytes]"
        key = key[:MAX_DEAD_LETTER_KEY]
    return DeadLetter(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=key,
        raw=raw,
        reason=reason,
        error=error,
        kafka_timestamp_ms=message.timestamp_ms,
        received_at_ms=received_at_ms,
        raw_size=raw_size,
    )
