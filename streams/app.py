"""The faust app: one consumer group per role set, one module per role, /metrics and /health.

Roles: ``score`` (validate, detect, redact, pre-aggregate; forwards valid events to the embed
topic when a semantic detector is on; also reads OTLP spans, one event per GenAI span:
streams/spans.py), ``embed`` (embedding-backed detectors, on a GPU when
there is one), ``aggregate`` (windows in a changelog-backed table), ``sink`` (ClickHouse),
``judge`` (LLM-as-judge grading and pairwise canary-vs-stable, when ``judge.enabled``:
streams/judge.py). With ``otlp.publish_evaluations`` on, the ``sink`` role's workers also
publish every finding as an OTLP log record (streams/evaluations.py).
``all`` runs every role in one worker. Each role's module (streams/score.py, embed.py,
aggregate.py, policy.py, sink.py) only moves batches between Kafka and ``monitor``; the logic
lives there.
"""

from __future__ import annotations

import logging
from typing import Any

import faust
from prometheus_client import CollectorRegistry

from monitor.config import ROLES, Settings
from monitor.errors import ConfigError
from monitor.metrics import create_metrics
from streams.aggregate import add_aggregate_role
from streams.embed import add_embed_role
from streams.evaluations import add_evaluations_publisher, check_evaluations
from streams.judge import add_judge_role, check_judge
from streams.policy import add_policy_role, api_token
from streams.policy_api import add_policy_api
from streams.score import add_score_role
from streams.sink import add_sink_role
from streams.spans import add_span_ingest
from streams.topics import stream_topics
from streams.tuning import recover_to_log_end, seek_before_resume, set_fetch_max_wait
from streams.web import add_views

log = logging.getLogger(__name__)


def app_id_for(settings: Settings) -> str:
    """One consumer group per role set: workers running the same roles share partitions."""
    roles = settings.active_roles
    if set(ROLES) <= set(roles):  # all of them, the optional judge role or not
        return settings.app_id
    return f"{settings.app_id}-{'-'.join(roles)}"


def create_app(settings: Settings, registry: CollectorRegistry | None = None) -> faust.App:
    """Build the faust app for ``settings.roles``; nothing connects until the worker starts."""
    check_roles(settings)
    metrics = create_metrics(
        registry or CollectorRegistry(), max_label_values=settings.metrics.max_label_values
    )
    app = faust_app(settings)
    app.monitor_metrics = metrics  # type: ignore[attr-defined]
    k = settings.kafka
    raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw",
           "value_serializer": "raw", "partitions": k.partitions}  # fmt: skip
    topics = {name: app.topic(name, **raw) for name in stream_topics(k)}
    roles = settings.active_roles
    if "score" in roles:
        add_score_role(app, settings, metrics, topics)
        if k.otlp_spans_topic:
            add_span_ingest(app, settings, metrics, topics)
    if "embed" in roles and settings.detectors.semantic_enabled:
        add_embed_role(app, settings, metrics, topics)
    if "aggregate" in roles:
        add_aggregate_role(app, settings, metrics, topics)
    if "policy" in roles:
        role = add_policy_role(app, settings, metrics, topics)
        add_policy_api(app, role, api_token(settings))
    if "sink" in roles:
        add_sink_role(app, settings, metrics, topics)
        if settings.otlp.publish_evaluations:
            add_evaluations_publisher(app, settings, metrics)
    if "judge" in roles and settings.judge.enabled:
        add_judge_role(app, settings, metrics, topics)
    add_views(app, settings, metrics)
    return app


def check_roles(settings: Settings) -> None:
    """Refuse settings a worker cannot run: no broker, or an embed role with nothing to embed."""
    if not settings.kafka.bootstrap_servers:
        raise ConfigError(
            "kafka.bootstrap_servers is not set. Fix: set KAFKA_BOOTSTRAP_SERVERS or "
            "LLM_MONITOR_KAFKA__BOOTSTRAP_SERVERS (host:port), or run `llm-monitor demo`."
        )
    if "embed" in settings.roles and not settings.detectors.semantic_enabled:
        raise ConfigError(
            "roles includes 'embed' but no semantic detector is enabled. Fix: set "
            "detectors.<toxicity|hallucination|injection|bias|drift>.enabled to true "
            "(e.g. LLM_MONITOR_DETECTORS__TOXICITY__ENABLED=true) or drop the embed role."
        )
    check_judge(settings)
    check_evaluations(settings)


def faust_app(settings: Settings) -> faust.App:
    """The faust app with our consumer, producer, table and web settings (and consumer fixes)."""
    k, p = settings.kafka, settings.pipeline
    set_fetch_max_wait(k.fetch_max_wait_ms)
    seek_before_resume()
    recover_to_log_end()
    return faust.App(
        app_id_for(settings),
        broker=[f"kafka://{s.strip()}" for s in str(k.bootstrap_servers).split(",")],
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
        producer_compression_type=None if k.compression_type == "none" else k.compression_type,
        producer_max_batch_size=1_048_576,
        producer_max_request_size=4 * 1_048_576,
        stream_buffer_maxsize=max(4096, p.batch_size * 4),
        table_standby_replicas=0,
        table_cleanup_interval=30.0,
        stream_wait_empty=False,
    )
