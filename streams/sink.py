"""The ``sink`` role: one agent per stored topic, each inserting its batches into ClickHouse.

Offsets commit only after ``Sink.write`` returns, i.e. after the insert succeeded.
"""

from __future__ import annotations

from typing import Any

import faust

from monitor.config import Settings
from monitor.metrics import Metrics
from monitor.storage.sink import KIND_DEAD_LETTERS, KIND_POLICY, KIND_SCORED, KIND_WINDOWS, Sink


def add_sink_role(
    app: faust.App, settings: Settings, metrics: Metrics, topics: dict[str, Any]
) -> None:
    k = settings.kafka
    sink = Sink(settings, metrics)
    batch, wait = settings.pipeline.sink_batch_size, settings.pipeline.sink_batch_wait_s

    def sink_agent(topic_name: str, kind: str, size: int) -> None:
        @app.agent(topics[topic_name], name=f"sink_{kind}")
        async def write(stream: Any) -> None:
            async for events in stream.take_events(size, within=wait):
                await sink.write(kind, [e.value for e in events])

    sink_agent(k.scored_topic, KIND_SCORED, batch)
    sink_agent(k.dlq_topic, KIND_DEAD_LETTERS, max(batch, 500))
    sink_agent(k.windows_topic, KIND_WINDOWS, max(batch, 500))
    sink_agent(k.policy_topic, KIND_POLICY, max(batch, 500))

    @app.task  # type: ignore[untyped-decorator]
    async def open_storage() -> None:
        await sink.open()
