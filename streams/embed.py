"""The ``embed`` role: embedding-backed detectors on their own topic and consumer group, so
GPU workers scale apart from the CPU scorers. The model runs on its own thread.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import faust
import msgspec

from monitor.config import Settings
from monitor.errors import SchemaError
from monitor.ingest.events import Event, decode_event
from monitor.metrics import Metrics
from monitor.scoring.registry import build_embeddings
from monitor.scoring.semantic import SemanticScorer
from streams.kafka import deliver
from streams.observe import observe_semantic

log = logging.getLogger(__name__)
_msgpack = msgspec.msgpack.Encoder()


def add_embed_role(
    app: faust.App, settings: Settings, metrics: Metrics, topics: dict[str, Any]
) -> None:
    """Semantic detectors on their own topic and consumer group, so GPU workers scale apart."""
    k = settings.kafka
    embeddings = build_embeddings(settings.detectors)
    scorer = SemanticScorer(settings.detectors, embeddings, window_s=settings.pipeline.window_s)
    scored, partials = topics[k.scored_topic], topics[k.partials_topic]
    batch = min(settings.pipeline.batch_size, embeddings.max_batch)

    @app.agent(topics[k.embed_topic], name="embed")
    async def embed(stream: Any) -> None:
        # Load on the model's own thread (CUDA handles are per thread), before the first batch.
        await embeddings.run_on_model_thread(embeddings.start)
        log.info("embed role: %s on %s", ", ".join(scorer.names), embeddings.device)
        async for records in stream.take_events(batch, within=settings.pipeline.batch_wait_s):
            events = decode_forwarded(records)
            if not events:
                continue
            hits_before = embeddings.stats.cache_hits
            started = time.perf_counter()
            result = await embeddings.run_on_model_thread(scorer.process, events)
            metrics.embed_batch_seconds.observe(time.perf_counter() - started)
            sends = []
            if result.scored.findings:
                sends.append(await scored.send(value=_msgpack.encode(result.scored)))
            for part in result.partials:
                sends.append(
                    await partials.send(key=part.key.encode(), value=_msgpack.encode(part))
                )
            await deliver(sends)
            hits = embeddings.stats.cache_hits - hits_before
            observe_semantic(metrics, len(events), result, hits)


def decode_forwarded(records: list[Any]) -> list[Event]:
    """Events the score role validated; one that no longer decodes is logged, not retried."""
    events = []
    for record in records:
        try:
            events.append(decode_event(record.value))
        except SchemaError as exc:
            log.warning("embed: skipping undecodable forwarded event: %s", exc.reason)
    return events
