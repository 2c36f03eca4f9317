"""Metrics live on a registry passed in; label values are bounded."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from monitor.metrics import OTHER, LabelGuard, create_metrics
from monitor.windows.stats import WindowStats
from streams.observe import observe_window


def test_metrics_register_on_a_fresh_registry_and_refuse_duplicates() -> None:
    registry = CollectorRegistry()
    metrics = create_metrics(registry)
    metrics.dead_letters.labels("schema").inc()
    assert registry.get_sample_value("llm_monitor_dead_letters_total", {"reason": "schema"}) == 1
    with pytest.raises(ValueError, match="Duplicated"):
        create_metrics(registry)


def test_label_guard_caps_distinct_values() -> None:
    guard = LabelGuard(max_values=2)
    assert [guard("route", v) for v in ("a", "b", "c", "a")] == ["a", "b", OTHER, "a"]


def test_window_latency_is_exported_in_seconds() -> None:
    registry = CollectorRegistry()
    metrics = create_metrics(registry)
    stats = WindowStats(
        model="m", model_version="v1", deployment="canary", window_start_ms=0,
        window_end_ms=60_000, events=10, errors=0, timeouts=0, refusals=0, error_rate=0.0,
        complaints=0, complaint_rate=0.0, latency_p50_ms=120.0, latency_p95_ms=900.0,
        latency_p99_ms=5500.0, latency_mean_ms=200.0, latency_max_ms=6000.0, input_tokens=0,
        output_tokens=0, cost_usd=0.0, flags={}, flag_rates={}, is_final=True, version=1,
    )  # fmt: skip
    observe_window(metrics, stats)
    labels = {"model": "m", "model_version": "v1", "deployment": "canary"}
    got = {
        q: registry.get_sample_value(
            "llm_monitor_window_latency_seconds", {**labels, "quantile": q}
        )
        for q in ("0.5", "0.95", "0.99")
    }
    assert got == {"0.5": 0.12, "0.95": 0.9, "0.99": 5.5}
    assert (
        registry.get_sample_value("llm_monitor_window_latency_ms", {**labels, "quantile": "0.99"})
        is None
    )
