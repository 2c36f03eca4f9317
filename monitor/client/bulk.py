"""Bulk publishing of encoded records: what `llm-monitor replay`, `probe` and the demo send with.

Records go out as raw bytes (the worker validates them), batched and awaited in groups so a
large file neither floods memory nor waits on every send. Unlike the publishers, this waits for
every acknowledgement and lets a broker error raise: it is a command, not an app's hot path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

# The producers' request limit: the largest event the worker accepts (pipeline.max_event_bytes,
# at most 2 MiB) as a dead letter, base64 and all, fits (monitor/ingest/decode.py).
MAX_REQUEST_BYTES = 4 * 1_048_576


async def produce(bootstrap: str, topic: str, records: Iterable[tuple[bytes, bytes]]) -> int:
    """Send (key, value) records to ``topic``; returns how many were acknowledged."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=5, max_request_size=MAX_REQUEST_BYTES
    )
    await producer.start()
    sent = 0
    try:
        futures = []
        for key, value in records:
            futures.append(await producer.send(topic, value=value, key=key))
            sent += 1
            if len(futures) >= 2000:
                await asyncio.gather(*futures)
                futures.clear()
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return sent
