"""The proxy's Prometheus metrics, created by one function over a given registry.

Labels are bounded: which upstream served a call, how it ended, the guard's detector, action
and stage. Never a model name from a request (apps choose those), a user or a request id.
The publisher's own counts (``llm_monitor_client_events_total{outcome}``, drops included)
live in the same registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

UPSTREAMS: Final = ("primary", "fallback", "none")
# ok: a 2xx from the upstream; upstream_error: its non-2xx answer, passed on; unreachable (502)
# and timeout (504): no answer; killed: 503, kill switch engaged and no fallback; blocked: the
# guard refused the call; client_closed: the client left before the answer was sent.
OUTCOMES: Final = ("ok", "upstream_error", "unreachable", "timeout", "killed", "blocked",
                   "client_closed")  # fmt: skip
GUARD_ACTIONS: Final = ("blocked", "redacted", "flagged")
GUARD_STAGES: Final = ("request", "response")
GUARD_DETECTORS: Final = ("pii", "injection")
# Proxy time is microseconds to a few milliseconds; upstream time seconds.
OVERHEAD_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1)
UPSTREAM_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class ProxyMetrics:
    registry: CollectorRegistry
    requests: Counter
    fallback_routes: Counter
    guard_actions: Counter
    upstream_seconds: Histogram
    overhead_seconds: Histogram
    event_errors: Counter
    killswitch_synced: Gauge
    killswitch_engaged: Gauge
    killswitch_records: Counter


def proxy_metrics(registry: CollectorRegistry) -> ProxyMetrics:
    """Create the proxy's metrics in ``registry`` (one proxy per registry), zeros exported."""
    metrics = ProxyMetrics(
        registry=registry,
        requests=Counter(
            "llm_monitor_proxy_requests",
            "Calls through the proxy, by the upstream that served them and how they ended",
            ["upstream", "outcome"], registry=registry,
        ),
        fallback_routes=Counter(
            "llm_monitor_proxy_fallback_routes",
            "Calls sent to the fallback upstream because the kill switch was engaged",
            registry=registry,
        ),
        guard_actions=Counter(
            "llm_monitor_proxy_guard_actions",
            "Inline guard actions: calls blocked, texts redacted, streamed answers flagged",
            ["detector", "action", "stage"], registry=registry,
        ),
        upstream_seconds=Histogram(
            "llm_monitor_proxy_upstream_seconds",
            "Time from sending a call upstream to its answer's end (a stream's last chunk)",
            ["upstream"], buckets=UPSTREAM_BUCKETS, registry=registry,
        ),
        overhead_seconds=Histogram(
            "llm_monitor_proxy_overhead_seconds",
            "Time the proxy adds to a non-streaming call: before sending it upstream and "
            "after the upstream's answer, until the answer is handed to the client",
            buckets=OVERHEAD_BUCKETS, registry=registry,
        ),
        event_errors=Counter(
            "llm_monitor_proxy_event_errors",
            "Calls whose event could not be built or handed to the publisher (the call itself "
            "was served)",
            registry=registry,
        ),
        killswitch_synced=Gauge(
            "llm_monitor_proxy_killswitch_synced",
            "1 once the kill-switch state was read to the end of the policy topic; 0 while "
            "unknown (Kafka unreachable at start): calls pass through",
            registry=registry,
        ),
        killswitch_engaged=Gauge(
            "llm_monitor_proxy_killswitch_engaged",
            "Kill switches the proxy knows to be engaged (any model/deployment)",
            registry=registry,
        ),
        killswitch_records=Counter(
            "llm_monitor_proxy_killswitch_records",
            "Policy-topic records the kill-switch follower read, and those that did not decode",
            ["outcome"], registry=registry,
        ),
    )  # fmt: skip
    for upstream in UPSTREAMS:
        for outcome in OUTCOMES:
            metrics.requests.labels(upstream, outcome)
        metrics.upstream_seconds.labels(upstream)
    for detector in GUARD_DETECTORS:
        for action in GUARD_ACTIONS:
            for stage in GUARD_STAGES:
                metrics.guard_actions.labels(detector, action, stage)
    for outcome in ("read", "undecodable"):
        metrics.killswitch_records.labels(outcome)
    return metrics
