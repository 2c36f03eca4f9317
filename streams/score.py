"""The ``score`` role: validate, run the cheap detectors, redact, pre-aggregate.

Bad events go to the DLQ; scored rows to the sink; window partials to the aggregator; with a
semantic detector on, every valid event is forwarded to the embed topic too. Offsets commit
only after every produced record is acknowledged.
"""

from __future__ import annotations

from typing import Any

import faust
import msgspec

from monitor.config import Settings
from monitor.metrics import Metrics
from monitor.scoring.pipeline import Pipeline
from monitor.scoring.registry import build_registry
from streams.kafka import deliver, raw_message
from streams.observe import observe_scoring

_msgpack = msgspec.msgpack.Encoder()
_json = msgspec.json.Encoder()


def add_score_role(
    app: faust.App, settings: Settings, metrics: Metrics, topics: dict[str, Any]
) -> None:
    k = settings.kafka
    pipeline = Pipeline(
        build_registry(settings),
        redact_pii=settings.storage.redact,
        max_event_bytes=settings.pipeline.max_event_bytes,
        window_s=settings.pipeline.window_s,
    )
    dlq, scored, partials = topics[k.dlq_topic], topics[k.scored_topic], topics[k.partials_topic]
    embed = topics[k.embed_topic] if settings.detectors.semantic_enabled else None

    @app.agent(topics[k.events_topic], name="score")
    async def score(stream: Any) -> None:
        async for events in stream.take_events(
            settings.pipeline.batch_size, within=settings.pipeline.batch_wait_s
        ):
            messages = [raw_message(e) for e in events]
            result = pipeline.process(messages)
            sends = [await dlq.send(key=d.key, value=_json.encode(d)) for d in result.dead_letters]
            if embed is not None:
                dead = {(d.partition, d.offset) for d in result.dead_letters}
                for m in messages:
                    if (m.partition, m.offset) not in dead:
                        sends.append(await embed.send(key=m.key, value=m.value))
            if result.scored.events:
                sends.append(await scored.send(value=_msgpack.encode(result.scored)))
            for part in result.partials:
                sends.append(
                    await partials.send(key=part.key.encode(), value=_msgpack.encode(part))
                )
            await deliver(sends)
            observe_scoring(metrics, len(events), result)
