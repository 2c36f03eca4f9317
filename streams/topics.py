"""Every topic the pipeline uses, created up front with explicit partition counts.

faust tables need their changelog to match the source topic's partitions, and topics that a
client auto-creates would not; so the worker (and the demo, and tests) create them first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from monitor.config import KafkaSettings
from monitor.errors import BrokerError


def changelog_topic(app_id: str, table: str) -> str:
    """faust's name for a table's changelog topic."""
    return f"{app_id}-{table}-changelog"


def stream_topics(kafka: KafkaSettings) -> tuple[str, ...]:
    """The topics the roles read and write (table changelogs aside), the OTLP spans topic
    included when span ingest is on: its partitions must match the embed topic's, since span
    events are forwarded there to the partition they were read from."""
    spans = (kafka.otlp_spans_topic,) if kafka.otlp_spans_topic else ()
    return (
        kafka.events_topic, kafka.dlq_topic, kafka.embed_topic, kafka.scored_topic,
        kafka.partials_topic, kafka.windows_topic, kafka.actions_topic, kafka.control_topic,
        kafka.policy_topic, kafka.judge_topic, *spans,
    )  # fmt: skip


def pipeline_topics(kafka: KafkaSettings, app_ids: Sequence[str]) -> dict[str, int]:
    """Every topic the pipeline uses, changelogs of the given apps included, with partitions."""
    n = kafka.partitions
    topics = dict.fromkeys(stream_topics(kafka), n)
    for app_id in app_ids:
        topics[changelog_topic(app_id, "windows")] = n
        topics[changelog_topic(app_id, "killswitch")] = n
    return topics


async def ensure_topics(
    bootstrap: str, topics: dict[str, int], replication_factor: int = 1, timeout_s: float = 30.0
) -> list[str]:
    """Create missing topics; raise if an existing one has the wrong partition count."""
    deadline = time.monotonic() + timeout_s
    admin: AIOKafkaAdminClient | None = None
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
        try:
            await admin.start()
            break
        except Exception as exc:
            last_error = exc
            await admin.close()
            admin = None
            await asyncio.sleep(0.2)
    if admin is None:
        raise BrokerError(f"cannot reach Kafka at {bootstrap}: {last_error}")
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(name, partitions, replication_factor)
            for name, partitions in topics.items()
            if name not in existing
        ]
        if missing:
            await admin.create_topics(missing)
        present = [name for name in topics if name in existing]
        if present:
            described = await admin.describe_topics(present)
            for topic in described:
                name = topic["topic"]
                count = len(topic["partitions"])
                if count != topics[name]:
                    raise BrokerError(
                        f"topic {name!r} has {count} partitions, expected {topics[name]}. "
                        "Fix: set LLM_MONITOR_KAFKA__PARTITIONS to match, or recreate the topic."
                    )
        return [t.name for t in missing]
    finally:
        await admin.close()
