"""Publishing to the events topic: what `llm-monitor replay`, `probe` and the demo send with.

Records go out as raw bytes (the worker validates them), batched and awaited in groups so a
large file neither floods memory nor waits on every send.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aiokafka import AIOKafkaProducer


async def produce(bootstrap: str, topic: str, records: Iterable[tuple[bytes, bytes]]) -> int:
    """Send (key, value) records to ``topic``; returns how many were acknowledged."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=5, max_request_size=4 * 1_048_576
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
