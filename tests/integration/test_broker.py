"""Real tansu broker: topics are created up front and a mismatch is a clear error."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from monitor.devtools.broker import BundledBroker
from monitor.errors import BrokerError
from streams.topics import ensure_topics

pytestmark = pytest.mark.integration


def test_topics_created_with_partitions_and_mismatch_refused(broker: BundledBroker) -> None:
    created = asyncio.run(ensure_topics(broker.bootstrap, {"a": 4, "b": 2}))
    assert sorted(created) == ["a", "b"]
    assert asyncio.run(ensure_topics(broker.bootstrap, {"a": 4})) == []

    async def partitions() -> int:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        try:
            (topic,) = await admin.describe_topics(["b"])
            return len(topic["partitions"])
        finally:
            await admin.close()

    assert asyncio.run(partitions()) == 2
    with pytest.raises(BrokerError, match="LLM_MONITOR_KAFKA__PARTITIONS"):
        asyncio.run(ensure_topics(broker.bootstrap, {"b": 8}))


def test_unreachable_broker_is_a_clear_error() -> None:
    with pytest.raises(BrokerError, match="cannot reach Kafka"):
        asyncio.run(ensure_topics("127.0.0.1:1", {"a": 1}, timeout_s=1.0))
