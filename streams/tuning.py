"""The one place we adjust faust's Kafka consumer beyond its settings.

faust-streaming 0.15.3 hard-codes ``fetch_max_wait_ms=1500`` for the worker consumer. One fetch
request covers every assigned partition, and on internal topics fed in bursts (scored batches,
partials, windows) each hop then waits up to 1.5 s: that alone dominates end-to-end latency.
We wrap the factory and set the configured wait before the consumer starts.
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

_original = AIOKafkaConsumerThread._create_worker_consumer


def set_fetch_max_wait(ms: int) -> None:
    """Make every faust worker consumer created from now on long-poll for at most ``ms``."""
    if ms <= 0:
        raise ValueError(f"fetch max wait must be > 0 ms, got {ms}")

    def create(self: AIOKafkaConsumerThread, transport: Any) -> Any:
        consumer = _original(self, transport)
        consumer._fetch_max_wait_ms = ms
        return consumer

    AIOKafkaConsumerThread._create_worker_consumer = create  # type: ignore[method-assign]
