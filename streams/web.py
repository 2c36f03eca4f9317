"""The HTTP surfaces every worker has: /metrics, /health, and consumer lag as a metric.

/health says ``recovered`` once the worker owns partitions and its tables (windows, kill
switches) are restored from their changelogs: before that, state read from them is empty, so
readiness probes and the policy API wait for it.
"""

from __future__ import annotations

import time

import faust
from faust.web import Request, Response, View
from prometheus_client import generate_latest

from monitor.config import Settings
from monitor.metrics import Metrics
from streams.batches import batch_consumers

LAG_INTERVAL_S = 2.0
# aiohttp refuses a charset inside content_type; Prometheus text format 0.0.4 is UTF-8 anyway.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4"


def add_views(app: faust.App, settings: Settings, metrics: Metrics) -> None:
    started = time.time()

    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            # ``?name[]=...`` narrows the answer to those samples, as prometheus_client's own
            # handler does: a poller that reads one counter does not render every series.
            names = request.query.getall("name[]", [])  # type: ignore[attr-defined]
            registry = metrics.registry.restricted_registry(names) if names else metrics.registry
            return self.bytes(generate_latest(registry), content_type=METRICS_CONTENT_TYPE)

    @app.page("/health")
    class HealthView(View):
        async def get(self, request: Request) -> Response:
            assignment = set(app.consumer.assignment()) if app.consumer else set()
            for batches in batch_consumers(app):
                assignment |= batches.assignment()
            return self.json(
                {
                    "status": "ok",
                    "app_id": app.conf.id,
                    "roles": list(settings.active_roles),
                    "assigned_partitions": len(assignment),
                    "recovered": recovered(app),
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


def recovered(app: faust.App) -> bool:
    """The worker owns partitions and has restored its tables from their changelogs (faust's
    recovery runs after every rebalance, tables or not, and ends by resuming the streams).
    A worker whose only role reads through a batch consumer (score) has no faust topics: it
    is ready once that consumer owns partitions."""
    batches = batch_consumers(app)
    if batches and not all(b.assignment() for b in batches):
        return False
    if not app.agents:
        return bool(batches)
    if app.consumer is None or not app.consumer.assignment():
        return False
    recovery = app.tables.recovery  # type: ignore[attr-defined]
    return bool(recovery.completed.is_set()) and not app.in_recovery
