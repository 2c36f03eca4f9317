"""Alert rules rendered from the policy: the committed file is the render of the committed
policy, and every threshold the policy has moves its alert when the policy does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from monitor.cli import app
from monitor.errors import ConfigError
from monitor.policy.alerting import number, render
from monitor.policy.config import Policy, load_policy

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/rules/llm-monitor.rules.yml"
POLICY = ROOT / "deploy/policy/policy.yaml"
ALERTS = [
    "LLMMonitorKillSwitchEngaged", "LLMMonitorRollbackActive", "LLMMonitorWebhookDeliveryFailing",
    "LLMMonitorKillSwitchAPIUnauthorized", "LLMMonitorErrorRateHigh", "LLMMonitorLatencyP99High",
    "LLMMonitorPIILeak", "LLMMonitorDetectorRateHigh", "LLMMonitorBiasDisparity",
    "LLMMonitorDriftDetected", "LLMMonitorWorkerDown", "LLMMonitorConsumerLagHigh",
    "LLMMonitorSinkFailing", "LLMMonitorDeadLettersHigh", "LLMMonitorInternalDeadLetters",
    "LLMMonitorChangelogRecordSkipped", "LLMMonitorSpoolQuarantined",
    "LLMMonitorSinkDroppedRecords",
]  # fmt: skip


def rules(text: str) -> dict[str, dict[str, Any]]:
    document = yaml.safe_load(text)
    return {r["alert"]: r for group in document["groups"] for r in group["rules"]}


def policy_with(**rollback: Any) -> Policy:
    return Policy.model_validate({"rollback": rollback})


def test_committed_rules_are_the_render_of_the_committed_policy() -> None:
    assert RULES.read_text() == render(load_policy(POLICY)), (
        "deploy/prometheus/rules/llm-monitor.rules.yml is stale: run `llm-monitor deploy alerts`"
    )


def test_every_alert_is_rendered_with_its_runbook() -> None:
    rendered = rules(render(load_policy(None)))
    assert list(rendered) == ALERTS
    for name, rule in rendered.items():
        assert rule["annotations"]["runbook_url"] == f"docs/operations.md#{name.lower()}"
        assert set(rule["labels"]) == {"severity", "team"}


def test_default_thresholds_are_the_policy_defaults() -> None:
    rendered = rules(render(load_policy(None)))
    error = rendered["LLMMonitorErrorRateHigh"]["expr"]
    assert "llm_monitor_window_error_rate > 0.05\n" in error
    assert "llm_monitor_window_error_rate > 0.04\n" in error  # 0.05 × recovery_ratio 0.8
    assert "llm_monitor_window_events >= 50)" in error
    latency = rendered["LLMMonitorLatencyP99High"]["expr"]
    assert 'llm_monitor_window_latency_seconds{quantile="0.99"} > 5\n' in latency
    assert rendered["LLMMonitorBiasDisparity"]["expr"].endswith("> 0.05")


def test_a_different_policy_changes_the_rule_expressions() -> None:
    policy = policy_with(
        error_rate={"threshold": 0.10, "min_samples": 200},
        p99_latency={"threshold_ms": 2000, "quantile": 0.95},
        detector_rates={"toxicity": {"threshold": 0.03}, "injection": {"threshold": 0.2},
                        "pii": {"threshold": 0.01}},
        bias_disparity={"threshold": 0.08},
    )  # fmt: skip
    rendered = rules(render(policy.model_copy(update={"recovery_ratio": 0.5})))
    error = rendered["LLMMonitorErrorRateHigh"]
    assert "llm_monitor_window_error_rate > 0.1\n" in error["expr"]
    assert "llm_monitor_window_error_rate > 0.05\n" in error["expr"]  # 0.10 × 0.5
    assert "llm_monitor_window_events >= 200)" in error["expr"]
    assert error["annotations"]["description"].endswith("above 10 %.")
    latency = rendered["LLMMonitorLatencyP99High"]
    assert 'llm_monitor_window_latency_seconds{quantile="0.95"} > 2\n' in latency["expr"]
    assert latency["expr"].endswith("llm_monitor_window_events >= 50")  # the policy's
    assert latency["annotations"]["description"] == "The latest window's p95 latency is above 2 s."
    assert rendered["LLMMonitorDetectorRateHigh"]["expr"] == (
        '(llm_monitor_window_flag_rate{detector="toxicity"} > 0.03)\n'
        'or (llm_monitor_window_flag_rate{detector="injection"} > 0.2)'
    )
    assert rendered["LLMMonitorBiasDisparity"]["expr"].endswith("> 0.08")
    assert "# Recovery threshold: fires above 10 %, clears only below 8 %" in render(policy)


def test_without_other_detector_rates_the_detector_alert_is_left_out() -> None:
    rendered = rules(render(policy_with(detector_rates={"pii": {"threshold": 0.01}})))
    assert "LLMMonitorDetectorRateHigh" not in rendered
    assert "LLMMonitorPIILeak" in rendered


def test_a_quantile_the_window_gauge_lacks_is_refused() -> None:
    with pytest.raises(ConfigError, match="exports only 0.5, 0.95, 0.99"):
        render(policy_with(p99_latency={"threshold_ms": 2000, "quantile": 0.9}))


def test_numbers_are_written_as_people_read_them() -> None:
    assert [number(v) for v in (0.05 * 0.8, 5000 / 1000, 0.1, 10_000, 1e-9)] == [
        "0.04", "5", "0.1", "10000", "1e-09",
    ]  # fmt: skip


def test_cli_writes_the_render_of_the_policy_file(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"rollback": {"p99_latency": {"threshold_ms": 2000}}}))
    out = tmp_path / "rules" / "llm-monitor.rules.yml"
    result = CliRunner().invoke(
        app, ["deploy", "alerts", "--policy", str(policy), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert out.read_text() == render(load_policy(policy))
    assert "> 2\n" in rules(out.read_text())["LLMMonitorLatencyP99High"]["expr"]


def test_cli_refuses_an_invalid_policy_file(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"rollback": {"error_rate": {"threshold": 1.5}}}))
    out = tmp_path / "rules.yml"
    result = CliRunner().invoke(
        app, ["deploy", "alerts", "--policy", str(policy), "--out", str(out)]
    )
    assert result.exit_code == 2
    assert "rollback.error_rate.threshold" in result.output
    assert not out.exists()
