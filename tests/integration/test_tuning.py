"""The fetch-wait patch against a real broker: the started consumer's fetcher long-polls for
the configured wait, which is where the wait takes effect."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import faust
import pytest
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

from monitor.devtools.broker import BundledBroker
from streams import tuning

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def faust_as_shipped(monkeypatch: pytest.MonkeyPatch) -> None:
    """faust's own factory during the test, whatever was there put back afterwards."""
    monkeypatch.setattr(AIOKafkaConsumerThread, "_create_worker_consumer", tuning._original)


def test_started_worker_consumer_fetches_with_the_configured_wait(broker: BundledBroker) -> None:
    tuning.set_fetch_max_wait(30)

    async def fetch_wait() -> int:
        app = faust.App("tuning-it", broker=f"kafka://{broker.bootstrap}")
        consumer = cast(Any, app.consumer)._thread._create_worker_consumer(app.transport)
        await consumer.start()
        try:
            return int(consumer._fetcher._fetch_max_wait_ms)
        finally:
            await consumer.stop()

    assert asyncio.run(fetch_wait()) == 30
