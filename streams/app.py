"""The faust app: one consumer group per role set, agents per role, /metrics and /health.

Roles: ``score`` (validate, detect, redact, pre-aggregate; forwards valid events to the embed
topic when a semantic detector is on), ``embed`` (embedding-backed detectors, on a GPU when
there is one), ``aggregate`` (windows in a changelog-backed table), ``sink`` (ClickHouse).
``all`` runs every role in one worker. Each agent only moves batches between Kafka and
``monitor``; the logic lives there.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Iterator, MutableMapping
from typing import Any

import faust
import msgspec
from aiokafka.partitioner import murmur2
from faust.web import Request, Response, View
from prometheus_client import CollectorRegistry, generate_latest

from detectors.drift import DRIFT_DETECTOR
from monitor.config import ROLES, Settings
from monitor.errors import ConfigError, SchemaError
from monitor.ingest.decode import RawMessage
from monitor.ingest.events import Event, decode_event
from monitor.metrics import Metrics, create_metrics
from monitor.scoring.pipeline import Pipeline, PipelineResult
from monitor.scoring.registry import build_embeddings, build_registry
from monitor.scoring.rows import FindingRow, ScoredBatch
from monitor.scoring.semantic import SemanticResult, SemanticScorer
from monitor.storage.sink import KIND_DEAD_LETTERS, KIND_POLICY, KIND_SCORED, KIND_WINDOWS, Sink
from monitor.windows.aggregate import WindowAggregator
from monitor.windows.drift import WindowRateDrift
from monitor.windows.stats import WindowPartial, WindowStats
from streams.policy import add_policy_role
from streams.tuning import seek_before_resume, set_fetch_max_wait

log = logging.getLogger(__name__)

EMIT_INTERVAL_S = 0.25
SWEEP_INTERVAL_S = 1.0
LAG_INTERVAL_S = 2.0
# aiohttp refuses a charset inside content_type; Prometheus text format 0.0.4 is UTF-8 anyway.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4"

_partial = msgspec.msgpack.Decoder(WindowPartial)
_msgpack = msgspec.msgpack.Encoder()
_json = msgspec.json.Encoder()


def app_id_for(settings: Settings) -> str:
    """One consumer group per role set: workers running the same roles share partitions."""
    roles = settings.active_roles
    if roles == ROLES:
        return settings.app_id
    return f"{settings.app_id}-{'-'.join(roles)}"


def kafka_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for ``key``."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


def create_app(settings: Settings, registry: CollectorRegistry | None = None) -> faust.App:
    """Build the faust app for ``settings.roles``; nothing connects until the worker starts."""
    bootstrap = settings.kafka.bootstrap_servers
    if not bootstrap:
        raise ConfigError(
            "kafka.bootstrap_servers is not set. Fix: set KAFKA_BOOTSTRAP_SERVERS or "
            "LLM_MONITOR_KAFKA__BOOTSTRAP_SERVERS (host:port), or run `llm-monitor demo`."
        )
    k = settings.kafka
    p = settings.pipeline
    set_fetch_max_wait(k.fetch_max_wait_ms)
    seek_before_resume()
    metrics = create_metrics(
        registry or CollectorRegistry(), max_label_values=settings.metrics.max_label_values
    )
    app = faust.App(
        app_id_for(settings),
        broker=[f"kafka://{s.strip()}" for s in bootstrap.split(",")],
        store="memory://",
        datadir=str(settings.data_dir / "faust"),
        web_enabled=True,
        web_bind=settings.metrics.host,
        web_host=settings.metrics.host,
        web_port=settings.metrics.port,
        web_in_thread=False,
        topic_partitions=k.partitions,
        topic_replication_factor=k.replication_factor,
        topic_allow_declare=True,
        broker_session_timeout=k.session_timeout_s,
        broker_heartbeat_interval=k.heartbeat_interval_s,
        broker_rebalance_timeout=k.rebalance_timeout_s,
        broker_request_timeout=max(40.0, k.session_timeout_s * 2),
        broker_commit_interval=k.commit_interval_s,
        broker_max_poll_records=max(p.batch_size, 500),
        consumer_auto_offset_reset="earliest",
        producer_linger=k.producer_linger_s,
        producer_max_batch_size=1_048_576,
        producer_max_request_size=4 * 1_048_576,
        stream_buffer_maxsize=max(4096, p.batch_size * 4),
        table_standby_replicas=0,
        table_cleanup_interval=30.0,
        stream_wait_empty=False,
    )
    app.monitor_metrics = metrics  # type: ignore[attr-defined]
    raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw",
           "value_serializer": "raw", "partitions": k.partitions}  # fmt: skip
    topics = {
        name: app.topic(name, **raw)
        for name in (
            k.events_topic,
            k.dlq_topic,
            k.embed_topic,
            k.scored_topic,
            k.partials_topic,
            k.windows_topic,
            k.actions_topic,
            k.control_topic,
            k.policy_topic,
        )  # fmt: skip
    }
    roles = settings.active_roles
    semantic = settings.detectors.semantic_enabled
    if "embed" in settings.roles and not semantic:
        raise ConfigError(
            "roles includes 'embed' but no semantic detector is enabled. Fix: set "
            "detectors.<toxicity|hallucination|injection|bias|drift>.enabled to true "
            "(e.g. LLM_MONITOR_DETECTORS__TOXICITY__ENABLED=true) or drop the embed role."
        )
    if "score" in roles:
        _add_score_role(app, settings, metrics, topics)
    if "embed" in roles and semantic:
        _add_embed_role(app, settings, metrics, topics)
    if "aggregate" in roles:
        _add_aggregate_role(app, settings, metrics, topics)
    if "policy" in roles:
        add_policy_role(app, settings, metrics, topics)
    if "sink" in roles:
        _add_sink_role(app, settings, metrics, topics)
    _add_views(app, settings, metrics)
    return app


def _raw_message(event: Any) -> RawMessage:
    message = event.message
    return RawMessage(
        value=event.value,
        key=event.key,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        timestamp_ms=int(message.timestamp * 1000),
    )


async def _deliver(sends: list[Any]) -> None:
    """Wait until every produced message is acknowledged, so offsets commit only after."""
    if sends:
        await asyncio.gather(*sends)


def _add_score_role(
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
            messages = [_raw_message(e) for e in events]
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
            await _deliver(sends)
            _observe_scoring(metrics, len(events), result)


def _observe_scoring(metrics: Metrics, received: int, result: PipelineResult) -> None:
    metrics.events_received.inc(received)
    metrics.batch_size.observe(received)
    for letter in result.dead_letters:
        metrics.dead_letters.labels(letter.reason).inc()
    for event in result.events:
        metrics.events_valid.labels(
            *metrics.series(*event.series), metrics.guard("route", event.route)
        ).inc()
    for name, seconds in result.detector_seconds.items():
        metrics.detector_seconds.labels(name).observe(seconds)
    _observe_findings(metrics, result.scored.findings)


def _add_embed_role(
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
            events = _decode_forwarded(records)
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
            await _deliver(sends)
            hits = embeddings.stats.cache_hits - hits_before
            _observe_semantic(metrics, len(events), result, hits)


def _decode_forwarded(records: list[Any]) -> list[Event]:
    """Events the score role validated; one that no longer decodes is logged, not retried."""
    events = []
    for record in records:
        try:
            events.append(decode_event(record.value))
        except SchemaError as exc:
            log.warning("embed: skipping undecodable forwarded event: %s", exc.reason)
    return events


def _observe_semantic(
    metrics: Metrics, events: int, result: SemanticResult, cache_hits: int
) -> None:
    metrics.embed_batch_events.observe(events)
    metrics.embed_texts.inc(result.texts)
    metrics.embed_cache_hits.inc(cache_hits)
    for name, seconds in result.detector_seconds.items():
        metrics.detector_seconds.labels(name).observe(seconds)
    _observe_findings(metrics, result.scored.findings)


def _observe_findings(metrics: Metrics, rows: list[FindingRow]) -> None:
    for row in rows:
        f = row.finding
        metrics.detector_score.labels(f.detector).observe(f.score)
        if f.flagged:
            series = metrics.series(row.model, row.model_version, row.deployment)
            metrics.detector_flags.labels(*series, f.detector, f.category).inc()
            if f.detector == DRIFT_DETECTOR:
                metrics.drift_signals.labels(*series, metrics.guard("signal", f.category)).inc()


def _add_aggregate_role(
    app: faust.App, settings: Settings, metrics: Metrics, topics: dict[str, Any]
) -> None:
    k = settings.kafka
    windows_out, scored = topics[k.windows_topic], topics[k.scored_topic]
    rate_drift = WindowRateDrift() if settings.detectors.drift.enabled else None
    table = app.Table(
        "windows", default=None, key_type=str, value_type=str, partitions=k.partitions
    )
    aggregator = WindowAggregator(
        TextValues(table),
        allowed_lateness_s=settings.pipeline.allowed_lateness_s,
        retention_s=settings.pipeline.window_retention_s,
        bias_confidence=settings.detectors.bias.confidence,
        bias_min_per_group=settings.detectors.bias.min_per_group,
    )
    dirty: set[str] = set()
    last_sweep = [0.0]

    async def publish(stats: WindowStats) -> list[Any]:
        _observe_window(metrics, stats, drift=rate_drift is not None)
        metrics.windows_emitted.labels("true" if stats.is_final else "false").inc()
        sends = [await windows_out.send(key=stats_key(stats), value=_msgpack.encode(stats))]
        drift = rate_drift.update(stats) if rate_drift is not None else []
        if drift:
            _observe_findings(metrics, drift)
            sends.append(await scored.send(value=_msgpack.encode(ScoredBatch([], drift))))
        return sends

    @app.agent(topics[k.partials_topic], name="aggregate")
    async def aggregate(stream: Any) -> None:
        async for event in stream.events():
            partial = _partial.decode(event.value)
            if aggregator.add(partial):
                metrics.partial_events_merged.inc(partial.events)
                dirty.add(partial.key)
            else:
                metrics.late_events.inc(partial.events)
            if time.monotonic() - last_sweep[0] < SWEEP_INTERVAL_S:
                continue
            last_sweep[0] = time.monotonic()
            # Table writes must happen while handling an event of the key's own partition,
            # so the changelog record lands where recovery will look for it.
            partition = event.message.partition
            sends = []
            for key in aggregator.due():
                stats = aggregator.close(key)
                dirty.discard(key)
                if stats is not None:
                    sends.extend(await publish(stats))
            for key in aggregator.expired():
                if kafka_partition(key.encode(), k.partitions) == partition:
                    aggregator.expire(key)
                    dirty.discard(key)
            await _deliver(sends)

    @app.timer(interval=EMIT_INTERVAL_S)  # type: ignore[untyped-decorator]
    async def emit_snapshots() -> None:
        sends = []
        for key in list(dirty):
            dirty.discard(key)
            stats = aggregator.snapshot(key)
            if stats is not None:
                sends.extend(await publish(stats))
        await _deliver(sends)


class TextValues(MutableMapping[str, bytes]):
    """Bytes over a faust table holding base64 text.

    faust's changelog recovery decodes values with the app's default JSON codec whatever the
    table schema says, so binary values cannot be restored; base64 text round-trips.
    """

    def __init__(self, table: Any) -> None:
        self._table = table

    def __getitem__(self, key: str) -> bytes:
        value = self._table[key]
        if value is None:
            raise KeyError(key)
        return base64.b64decode(value)

    def __setitem__(self, key: str, value: bytes) -> None:
        self._table[key] = base64.b64encode(value).decode("ascii")

    def __delitem__(self, key: str) -> None:
        del self._table[key]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._table.keys()))

    def __len__(self) -> int:
        return len(self._table)


def stats_key(stats: WindowStats) -> bytes:
    """Windows are keyed by model: one policy worker sees every version and deployment of a
    model (canary against stable) and owns its kill switches."""
    return stats.model.encode()


def _observe_window(metrics: Metrics, stats: WindowStats, *, drift: bool = False) -> None:
    series = metrics.series(stats.model, stats.model_version, stats.deployment)
    metrics.window_events.labels(*series).set(stats.events)
    if drift:  # zero-valued series from the start, so increase() sees the first detection
        for signal in ("embedding", "rate:error_rate"):
            metrics.drift_signals.labels(*series, signal)
    metrics.window_error_rate.labels(*series).set(stats.error_rate)
    metrics.window_complaint_rate.labels(*series).set(stats.complaint_rate)
    for quantile, value in (
        ("0.5", stats.latency_p50_ms),
        ("0.95", stats.latency_p95_ms),
        ("0.99", stats.latency_p99_ms),
    ):
        if value is not None:
            metrics.window_latency_ms.labels(*series, quantile).set(value)
    for detector, rate in stats.flag_rates.items():
        metrics.window_flag_rate.labels(*series, metrics.guard("detector", detector)).set(rate)
    for metric, value in stats.bias_disparity.items():
        gauge = metrics.window_bias_disparity
        gauge.labels(*series, metric, "value").set(value)
        gauge.labels(*series, metric, "low").set(stats.bias_low[metric])
        gauge.labels(*series, metric, "high").set(stats.bias_high[metric])


def _add_sink_role(
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


def _add_views(app: faust.App, settings: Settings, metrics: Metrics) -> None:
    started = time.time()

    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(generate_latest(metrics.registry), content_type=METRICS_CONTENT_TYPE)

    @app.page("/health")
    class HealthView(View):
        async def get(self, request: Request) -> Response:
            assignment = app.consumer.assignment() if app.consumer else set()
            return self.json(
                {
                    "status": "ok",
                    "app_id": app.conf.id,
                    "roles": list(settings.active_roles),
                    "assigned_partitions": len(assignment),
                    "uptime_s": round(time.time() - started, 1),
                }
            )

    @app.timer(interval=LAG_INTERVAL_S)  # type: ignore[untyped-decorator]
    async def export_lag() -> None:
        consumer = app.consumer
        committed = getattr(consumer, "_committed_offset", {})
        for tp in consumer.assignment():
            if tp.topic.endswith("-changelog"):
                continue  # table changelogs are read for recovery, never committed
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            done = committed.get(tp) or 0
            metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, highwater - done))
