"""Role outputs turned into Prometheus metrics (the metrics are declared in monitor/metrics.py)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from detectors.drift import DRIFT_DETECTOR
from monitor.metrics import Metrics
from monitor.scoring.pipeline import PipelineResult
from monitor.scoring.rows import FindingRow
from monitor.scoring.semantic import SemanticResult
from monitor.scoring.shadow import Shadow, ShadowResult
from monitor.windows.stats import WindowStats


def observe_scoring(metrics: Metrics, received: int, result: PipelineResult) -> None:
    metrics.events_received.inc(received)
    metrics.batch_size.observe(received)
    for letter in result.dead_letters:
        metrics.dead_letters.labels(letter.reason).inc()
    # One increment per series and route, not per event.
    for (series, route), n in Counter((e.series, e.route) for e in result.events).items():
        metrics.events_valid.labels(*metrics.series(*series), metrics.guard("route", route)).inc(n)
    for name, seconds in result.detector_seconds.items():
        metrics.detector_seconds.labels(name).observe(seconds)
    observe_findings(metrics, result.scored.findings)
    observe_shadows(metrics, result.scored.shadow, result.shadow)


def observe_semantic(
    metrics: Metrics, events: int, result: SemanticResult, cache_hits: int
) -> None:
    metrics.embed_batch_events.observe(events)
    metrics.embed_texts.inc(result.texts)
    metrics.embed_cache_hits.inc(cache_hits)
    for name, seconds in result.detector_seconds.items():
        metrics.detector_seconds.labels(name).observe(seconds)
    observe_findings(metrics, result.scored.findings)
    observe_shadows(metrics, result.scored.shadow, result.shadow)


def expose_shadows(metrics: Metrics, shadows: Sequence[Shadow]) -> None:
    """Zero-valued series for every shadow a role runs, so rates start with its first finding."""
    for shadow in shadows:
        for flagged in ("true", "false"):
            metrics.shadow_findings.labels(*shadow.key, flagged)
        metrics.shadow_failures.labels(*shadow.key)


def observe_shadows(metrics: Metrics, rows: list[FindingRow], result: ShadowResult) -> None:
    """The shadows' own metrics: never the live detectors' (the policy's alerts read those)."""
    for row in rows:
        f = row.finding
        metrics.shadow_findings.labels(f.detector, f.detector_version, str(f.flagged).lower()).inc()
    for key, seconds in result.seconds.items():
        metrics.shadow_seconds.labels(*key).observe(seconds)
    for key in result.failed:
        metrics.shadow_failures.labels(*key).inc()


def observe_findings(metrics: Metrics, rows: list[FindingRow]) -> None:
    flags: Counter[tuple[str, str, str, str, str]] = Counter()
    for row in rows:
        f = row.finding
        metrics.detector_score.labels(f.detector).observe(f.score)
        if f.flagged:
            flags[(row.model, row.model_version, row.deployment, f.detector, f.category)] += 1
    for (model, version, deployment, detector, category), n in flags.items():
        series = metrics.series(model, version, deployment)
        metrics.detector_flags.labels(*series, detector, category).inc(n)
        if detector == DRIFT_DETECTOR:
            metrics.drift_signals.labels(*series, metrics.guard("signal", category)).inc(n)


def observe_window(metrics: Metrics, stats: WindowStats, *, drift: bool = False) -> None:
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
        if value is not None:  # the window keeps milliseconds; Prometheus wants seconds
            metrics.window_latency_seconds.labels(*series, quantile).set(value / 1000)
    for detector, rate in stats.flag_rates.items():
        metrics.window_flag_rate.labels(*series, metrics.guard("detector", detector)).set(rate)
    for metric, value in stats.bias_disparity.items():
        gauge = metrics.window_bias_disparity
        gauge.labels(*series, metric, "value").set(value)
        gauge.labels(*series, metric, "low").set(stats.bias_low[metric])
        gauge.labels(*series, metric, "high").set(stats.bias_high[metric])
