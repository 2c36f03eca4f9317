"""The dead-letter record: what the DLQ topic carries for every event that was refused.

The original bytes travel unchanged; only the copy stored in ClickHouse (a ``DeadLetterRow``)
is redacted.
"""

from __future__ import annotations

import msgspec

from detectors.pii import PiiScanner, redact
from monitor.storage.columns import EpochMs


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
    raw_size: int = 0  # the original length when ``raw`` was cut to fit the DLQ; 0: not cut


def redact_raw(raw: bytes, scanner: PiiScanner) -> str:
    """Best-effort redaction of undecodable bytes for the dead_letters table."""
    text = raw.decode("utf-8", errors="replace")
    return redact(text, scanner.scan(text))


class DeadLetterRow(msgspec.Struct, kw_only=True):
    """A dead letter as stored in ``dead_letters``: key and raw bytes as text, ``raw`` redacted
    unless redaction is off, with the original length."""

    topic: str
    partition: int
    offset: int
    key: str
    raw: str
    raw_bytes: int
    raw_redacted: bool
    reason: str
    error: str
    kafka_timestamp_ms: EpochMs
    received_at_ms: EpochMs

    @classmethod
    def of(cls, letter: DeadLetter, scanner: PiiScanner | None) -> DeadLetterRow:
        """The stored copy of ``letter``: ``raw`` redacted with ``scanner``, or only decoded
        when ``scanner`` is None (redaction off)."""
        if scanner is None:
            raw = letter.raw.decode("utf-8", errors="replace")
        else:
            raw = redact_raw(letter.raw, scanner)
        return cls(
            topic=letter.topic,
            partition=letter.partition,
            offset=letter.offset,
            key=(letter.key or b"").decode("utf-8", errors="replace"),
            raw=raw,
            raw_bytes=letter.raw_size or len(letter.raw),
            raw_redacted=scanner is not None,
            reason=letter.reason,
            error=letter.error,
            kafka_timestamp_ms=letter.kafka_timestamp_ms,
            received_at_ms=letter.received_at_ms,
        )
