"""Metrics live on a registry passed in; label values are bounded."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from monitor.metrics import OTHER, LabelGuard, create_metrics


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
