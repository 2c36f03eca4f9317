"""The event a publisher sends: the worker's own contract, so what an app builds is what decodes.

``Event`` is the msgspec struct the worker decodes into (monitor/ingest/events.py, which needs
nothing beyond msgspec); a record is its JSON (``encode_event``) keyed by ``request_id``.
"""

from __future__ import annotations

import time
import uuid
from typing import Final

from monitor.ingest.events import Event, Feedback, Message, Status, encode_event

# The worker's default events topic (monitor.config.KafkaSettings.events_topic), named here so
# that importing the publisher does not import the settings.
DEFAULT_TOPIC: Final = "llm.events"

__all__ = [
    "DEFAULT_TOPIC",
    "Event",
    "Feedback",
    "Message",
    "Status",
    "encode_record",
    "new_request_id",
    "now_ms",
]


def encode_record(event: Event) -> tuple[bytes, bytes]:
    """The Kafka record of ``event``: key = its request id (UTF-8), value = its JSON."""
    return event.request_id.encode("utf-8"), encode_event(event)


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds, the event timestamp the worker expects."""
    return time.time_ns() // 1_000_000


def new_request_id() -> str:
    """A fresh random request id (the idempotency key of one LLM call)."""
    return uuid.uuid4().hex
