"""The publisher apps import: one event per LLM call to the events topic (key = request id).

Light on purpose: importing it loads msgspec and the event contract only; kafka-python and
aiokafka are imported when a publisher first connects, never the worker, detectors or models.

- ``Publisher``: synchronous, on kafka-python (WSGI apps, scripts, gateways).
- ``AsyncPublisher``: asyncio, on aiokafka.
- ``instrument``: one event per ``chat.completions.create`` call of an OpenAI-compatible client.
- ``produce``: bulk sending of pre-encoded records (``llm-monitor replay``, probe, demo).

Both publishers: ``publish`` never blocks and never raises for Kafka's sake; at most
``max_buffer`` events are pending, beyond that they are dropped and counted (``stats``).
See docs/publisher.md.
"""

from monitor.client.async_publisher import AsyncPublisher
from monitor.client.bulk import produce
from monitor.client.events import (
    DEFAULT_TOPIC,
    Event,
    Feedback,
    Message,
    encode_record,
    new_request_id,
    now_ms,
)
from monitor.client.openai import EventSink, instrument
from monitor.client.publisher import Publisher
from monitor.client.stats import PublisherMetrics, PublisherStats, publisher_metrics

__all__ = [
    "DEFAULT_TOPIC",
    "AsyncPublisher",
    "Event",
    "EventSink",
    "Feedback",
    "Message",
    "Publisher",
    "PublisherMetrics",
    "PublisherStats",
    "encode_record",
    "instrument",
    "new_request_id",
    "now_ms",
    "produce",
    "publisher_metrics",
]
