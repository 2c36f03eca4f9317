"""Findings out as OTLP log records, when ``otlp.publish_evaluations`` is on (docs/otlp.md).

A batch consumer of its own (streams/batches.py) reads the scored topic under the group
``<app id>-evaluations.<scored topic>``, apart from the sink's: publishing never holds back
storage, and storage never holds back publishing. Each scored record's findings become one
``ExportLogsServiceRequest`` per event (monitor/otel/evaluations.py), produced to
``kafka.otlp_logs_topic`` for the Collector's Kafka receiver. Offsets commit only after every
produced record is acknowledged: at least once, so a replay can publish a verdict twice (a
log record has no key a backend merges on; ``llm_monitor.request_id`` and the detector name
tell copies apart).

It runs beside the ``sink`` role. A scored record that does not decode is counted
(``llm_monitor_otel_evaluations_total{outcome="undecodable"}``) and skipped: the sink
dead-letters it already. The logs topic is created at start when missing (with
``kafka.partitions``); an existing one is used whatever its partition count, since nothing
here depends on it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import faust

from monitor.config import Settings
from monitor.errors import ConfigError
from monitor.ingest.decode import RawMessage
from monitor.metrics import Metrics
from monitor.otel.evaluations import EvaluationRecord, scored_to_records
from streams.batches import BatchConsumer, Handler, run_with_app
from streams.kafka import deliver

log = logging.getLogger(__name__)


def check_evaluations(settings: Settings) -> None:
    """Refuse publishing evaluations to no topic."""
    if settings.otlp.publish_evaluations and not settings.kafka.otlp_logs_topic:
        raise ConfigError(
            "otlp.publish_evaluations is on but kafka.otlp_logs_topic is empty. Fix: set "
            "LLM_MONITOR_KAFKA__OTLP_LOGS_TOPIC (the Collector's Kafka receiver reads otlp_logs) "
            "or turn LLM_MONITOR_OTLP__PUBLISH_EVALUATIONS off."
        )


class EvaluationsConsumer(BatchConsumer):
    """The scored topic under the publisher's group. It creates the logs topic before reading,
    and leaves the scored topic's lag gauge to the sink (one series per partition)."""

    def __init__(
        self, settings: Settings, app_id: str, handle: Handler, metrics: Metrics, logs: Any
    ) -> None:
        super().__init__(settings, app_id, settings.kafka.scored_topic, handle, metrics)
        self.logs = logs

    async def start(self) -> None:
        try:
            await self.logs.maybe_declare()
        except Exception as exc:  # no right to create topics, say: it may exist already
            log.warning("could not create the OTLP logs topic (%s); producing anyway", exc)
        await super().start()

    async def _export_lag(self) -> None:
        return


def add_evaluations_publisher(
    app: faust.App, settings: Settings, metrics: Metrics
) -> EvaluationsConsumer:
    """The publisher of ``gen_ai.evaluation.result`` log records, started with the app."""
    k = settings.kafka
    logs = app.topic(
        k.otlp_logs_topic, key_type=bytes, value_type=bytes, key_serializer="raw",
        value_serializer="raw", partitions=k.partitions,
    )  # fmt: skip

    async def publish(messages: list[RawMessage]) -> None:
        records, undecodable = await asyncio.to_thread(
            scored_to_records, [m.value for m in messages], time.time_ns
        )
        await deliver([await _send(logs, record) for record in records])
        metrics.otlp_evaluations.labels("published").inc(sum(r.findings for r in records))
        if undecodable:
            metrics.otlp_evaluations.labels("undecodable").inc(undecodable)
            log.warning(
                "%d records of %s did not decode; not published", undecodable, k.scored_topic
            )

    consumer = EvaluationsConsumer(settings, f"{app.conf.id}-evaluations", publish, metrics, logs)
    run_with_app(app, consumer)
    return consumer


async def _send(logs: Any, record: EvaluationRecord) -> Any:
    return await logs.send(key=record.key, value=record.value)
