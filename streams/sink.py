"""The ``sink`` role: one agent per stored topic, each inserting its batches into ClickHouse.

Offsets commit only after ``Sink.write`` returns: every record stored, or, when it can never
be (it does not decode, or ClickHouse refuses its row), dead-lettered to the DLQ with its
topic/partition/offset and the reason, and acknowledged there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import faust

from monitor.config import Settings
from monitor.metrics import (
    REASON_REFUSED,
    REASON_REFUSED_DEAD_LETTER,
    REASON_UNDECODABLE,
    REASON_UNDECODABLE_DEAD_LETTER,
    Metrics,
)
from monitor.storage.sink import (
    KIND_DEAD_LETTERS,
    KIND_POLICY,
    KIND_SCORED,
    KIND_WINDOWS,
    Refused,
    Sink,
)
from streams.kafka import deliver, raw_message, send_internal_dead_letter


def add_sink_role(
    app: faust.App, settings: Settings, metrics: Metrics, topics: dict[str, Any]
) -> None:
    k = settings.kafka
    sink = Sink(settings, metrics)
    dlq = topics[k.dlq_topic]
    batch, wait = settings.pipeline.sink_batch_size, settings.pipeline.sink_batch_wait_s

    async def dead_letter(refused: Sequence[Refused]) -> None:
        await deliver([
            await send_internal_dead_letter(dlq, r.message, r.reason, r.error, metrics)
            for r in refused
        ])  # fmt: skip

    def sink_agent(topic_name: str, kind: str, size: int) -> None:
        @app.agent(topics[topic_name], name=f"sink_{kind}")
        async def write(stream: Any) -> None:
            async for events in stream.take_events(size, within=wait):
                await sink.write(kind, [raw_message(e) for e in events], dead_letter)

    sink_agent(k.scored_topic, KIND_SCORED, batch)
    sink_agent(k.dlq_topic, KIND_DEAD_LETTERS, max(batch, 500))
    sink_agent(k.windows_topic, KIND_WINDOWS, max(batch, 500))
    sink_agent(k.policy_topic, KIND_POLICY, max(batch, 500))
    # Zeros for the series the alerts read, so the first dead letter shows as an increase.
    for topic in (k.scored_topic, k.windows_topic, k.policy_topic):
        for reason in (REASON_UNDECODABLE, REASON_REFUSED):
            metrics.internal_dead_letters.labels(topic, reason)
    for reason in (REASON_UNDECODABLE_DEAD_LETTER, REASON_REFUSED_DEAD_LETTER):
        metrics.internal_dead_letters.labels(k.dlq_topic, reason)
    metrics.sink_dropped.labels(k.dlq_topic)

    @app.task  # type: ignore[untyped-decorator]
    async def open_storage() -> None:
        await sink.start()
