"""Kafka plumbing shared by the roles: records as the pipeline sees them, and delivery."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.partitioner import murmur2

from monitor.ingest.decode import RawMessage


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
