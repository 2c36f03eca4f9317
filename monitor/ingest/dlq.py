"""The dead-letter record: what the DLQ topic carries for every event that was refused.

The original bytes travel unchanged; only the copy stored in ClickHouse is redacted.
"""

from __future__ import annotations

import msgspec

from detectors.pii import PiiScanner, redact


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


def redact_raw(raw: bytes, scanner: PiiScanner) -> str:
    """Best-effort redaction of undecodable bytes for the dead_letters table."""
    text = raw.decode("utf-8", errors="replace")
    return redact(text, scanner.scan(text))
