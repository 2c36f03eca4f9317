"""Prometheus alert rules rendered from a policy: one source for every threshold.

The policy file is what the policy engine decides with; the alerts that page people use the
same numbers. ``llm-monitor deploy alerts --policy FILE`` writes
deploy/prometheus/rules/llm-monitor.rules.yml, and a test keeps the committed file equal to
the render of deploy/policy/policy.yaml. From the policy: the error-rate threshold and its
recovery threshold (threshold × ``recovery_ratio``), the minimum events (the rule's
``min_samples``, else the policy's), the latency quantile and threshold, each detector's
flag-rate threshold and the bias-disparity threshold. What only the pipeline needs (consumer
lag, dead-letter share, refused kill-switch calls) is a named constant here. A rule's
``enabled: false`` stops the engine's automatic action, not the page: its alert stays.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from monitor.errors import ConfigError
from monitor.policy.config import Policy

RULES_FILE = Path("deploy/prometheus/rules/llm-monitor.rules.yml")
SAME_SERIES = "on (model, model_version, deployment)"
# Quantiles llm_monitor_window_latency_seconds exports (streams/observe.py), by name.
WINDOW_QUANTILES = {"0.5": "p50", "0.95": "p95", "0.99": "p99"}
LEAK_DETECTOR = "pii"  # any leak pages (LLMMonitorPIILeak): not among the flag-rate alerts

# Pipeline thresholds: the policy has none of these.
UNAUTHORIZED_CALLS = 5  # kill-switch API calls with a missing or wrong token, per 10 minutes
CONSUMER_LAG_MESSAGES = 10_000
DEAD_LETTER_FRACTION = 0.05

HEADER = """\
# Alert rules over llm-monitor's worker metrics, rendered from a policy file by
# `llm-monitor deploy alerts --policy FILE` (monitor/policy/alerting.py): change the policy and
# render again instead of editing this file. The policy role acts on its own within a
# second (docs/benchmarks.md, reaction time); these rules page people and cover what the
# policy does not watch: the pipeline itself. Runbook: docs/operations.md#<alertname>.
"""


@dataclass(frozen=True)
class Alert:
    """One alerting rule; ``comment`` becomes YAML comment lines above it."""

    name: str
    expr: str
    severity: str
    summary: str
    description: str
    duration: str | None = None  # the rule's `for:`
    team: str = "llm-platform"
    comment: str = ""

    def as_dict(self) -> dict[str, Any]:
        rule: dict[str, Any] = {"alert": self.name, "expr": self.expr}
        if self.duration is not None:
            rule["for"] = self.duration
        rule["labels"] = _Flow(severity=self.severity, team=self.team)
        rule["annotations"] = {
            "summary": _Quoted(self.summary),
            "description": _Quoted(self.description),
            "runbook_url": _Quoted(f"docs/operations.md#{self.name.lower()}"),
        }
        return rule


def number(value: float) -> str:
    """A threshold as PromQL and people read it: 0.04, not 0.04000000000000001; 5, not 5.0."""
    return f"{round(value, 12):.12g}"


def percent(fraction: float) -> str:
    return number(fraction * 100)


def policy_alerts() -> list[Alert]:
    """What the policy engine did or failed to do: kill switch, rollback, webhooks, API."""
    return [
        Alert(
            "LLMMonitorKillSwitchEngaged",
            "max by (model, deployment) (llm_monitor_killswitch_engaged) == 1",
            "critical",
            "Kill switch engaged for {{ $labels.model }}/{{ $labels.deployment }}",
            "Traffic is on the fallback. Read the incident report before releasing.",
        ),
        Alert(
            "LLMMonitorRollbackActive",
            "max by (model, model_version, deployment) (llm_monitor_policy_rollback_active) == 1",
            "page",
            "Rollback rule firing for {{ $labels.model }} {{ $labels.model_version }} "
            "({{ $labels.deployment }})",
            "The policy engine sent a rollback webhook; check the rollout controller did it.",
        ),
        Alert(
            "LLMMonitorWebhookDeliveryFailing",
            "sum by (action) (increase(llm_monitor_webhook_attempts_total"
            '{outcome=~"retrying|gave_up"}[10m])) > 0',
            "page",
            "{{ $labels.action }} webhooks are failing",
            "Actions are being retried or were given up: automation is not acting.",
            duration="2m",
        ),
        Alert(
            "LLMMonitorKillSwitchAPIUnauthorized",
            'sum(increase(llm_monitor_killswitch_api_calls_total{outcome="unauthorized"}[10m]))'
            f" > {UNAUTHORIZED_CALLS}",
            "warning",
            "Repeated unauthorized kill-switch API calls",
            f"More than {UNAUTHORIZED_CALLS} calls with a missing or wrong token in 10 minutes; "
            "see table audit_log.",
            team="security",
        ),
    ]


def error_rate_alert(policy: Policy) -> Alert:
    """``rollback.error_rate`` with the engine's hysteresis: fires above the threshold with
    enough events, clears only below threshold × ``recovery_ratio``."""
    rule = policy.rollback.error_rate
    fire, clear = rule.threshold, rule.threshold * policy.recovery_ratio
    events = rule.min_samples or policy.min_samples
    expr = "\n".join([
        f"(llm_monitor_window_error_rate > {number(fire)}",
        f"  and {SAME_SERIES} llm_monitor_window_events >= {events})",
        "or",
        f"(llm_monitor_window_error_rate > {number(clear)}",
        f"  and {SAME_SERIES}",
        '  ALERTS{alertname="LLMMonitorErrorRateHigh", alertstate="firing"})',
    ])  # fmt: skip
    return Alert(
        "LLMMonitorErrorRateHigh",
        expr,
        "page",
        "Error rate {{ $value | humanizePercentage }} on {{ $labels.model }} "
        "{{ $labels.model_version }} ({{ $labels.deployment }})",
        f"Errors and timeouts in the latest window are above {percent(fire)} %.",
        comment=f"Recovery threshold: fires above {percent(fire)} %, clears only below "
        f"{percent(clear)} % (no flapping at {percent(fire)} %).",
    )


def latency_alert(policy: Policy) -> Alert:
    """``rollback.p99_latency``: the window gauge of the policy's quantile, in seconds."""
    rule = policy.rollback.p99_latency
    quantile = number(rule.quantile)
    if quantile not in WINDOW_QUANTILES:
        raise ConfigError(
            f"rollback.p99_latency.quantile is {quantile}, but the window latency gauge "
            f"exports only {', '.join(WINDOW_QUANTILES)}. Fix: use one of those."
        )
    name, seconds = WINDOW_QUANTILES[quantile], rule.threshold_ms / 1000
    events = rule.min_samples or policy.min_samples
    return Alert(
        "LLMMonitorLatencyP99High",
        f'llm_monitor_window_latency_seconds{{quantile="{quantile}"}} > {number(seconds)}\n'
        f"  and {SAME_SERIES} llm_monitor_window_events >= {events}",
        "page",
        name + " latency {{ $value | humanizeDuration }} on {{ $labels.model }} "
        "{{ $labels.model_version }}",
        f"The latest window's {name} latency is above {number(seconds)} s.",
        duration="1m",
    )


def detector_rate_alerts(policy: Policy) -> list[Alert]:
    """``rollback.detector_rates``, one term per detector (PII has its own alert); none when
    the policy lists no other detector."""
    terms = [
        f"(llm_monitor_window_flag_rate{{detector={json.dumps(name)}}} > {number(rule.threshold)})"
        for name, rule in policy.rollback.detector_rates.items()
        if name != LEAK_DETECTOR
    ]
    if not terms:
        return []
    return [
        Alert(
            "LLMMonitorDetectorRateHigh",
            "\n".join([terms[0], *(f"or {term}" for term in terms[1:])]),
            "warning",
            "{{ $labels.detector }} flag rate {{ $value | humanizePercentage }} on "
            "{{ $labels.model }} {{ $labels.model_version }}",
            "A detector's flag rate is above its policy threshold.",
            duration="2m",
        )
    ]


def quality_alerts(policy: Policy) -> list[Alert]:
    """What the model does: errors, latency, leaks, detector rates, bias, drift."""
    bias = number(policy.rollback.bias_disparity.threshold)
    return [
        error_rate_alert(policy),
        latency_alert(policy),
        Alert(
            "LLMMonitorPIILeak",
            "sum by (model, model_version, deployment) (increase(llm_monitor_detector_flags_total"
            f'{{detector="{LEAK_DETECTOR}", category="leak"}}[5m])) > 0\n'
            "or max by (model, model_version, deployment) (llm_monitor_window_flag_rate"
            f'{{detector="{LEAK_DETECTOR}"}}) > 0',
            "critical",
            "PII leaked by {{ $labels.model }} {{ $labels.model_version }} "
            "({{ $labels.deployment }})",
            "Responses contained PII absent from the prompt. The policy engages the kill "
            "switch (data_breach).",
            comment="The window gauge also catches a burst that created its counter series "
            "between scrapes\n(increase() cannot see a series' first value).",
        ),
        *detector_rate_alerts(policy),
        Alert(
            "LLMMonitorBiasDisparity",
            f'llm_monitor_window_bias_disparity{{bound="low"}} > {bias}',
            "warning",
            "{{ $labels.metric }} differs across groups on {{ $labels.model }} "
            "{{ $labels.model_version }}",
            f"The lower 95 % bound of the group disparity is above {bias}.",
            duration="5m",
            team="responsible-ai",
        ),
        Alert(
            "LLMMonitorDriftDetected",
            "sum by (model, model_version, deployment, signal) "
            "(increase(llm_monitor_drift_signals_total[15m])) > 0",
            "info",
            "Drift ({{ $labels.signal }}) on {{ $labels.model }} {{ $labels.model_version }}",
            "Outputs or a rate moved away from this version's reference.",
        ),
    ]


def pipeline_alerts() -> list[Alert]:
    """The monitor itself: workers, consumer lag, the ClickHouse sink, dead letters."""
    return [
        Alert(
            "LLMMonitorWorkerDown",
            'up{job="llm-monitor"} == 0',
            "page",
            "llm-monitor worker {{ $labels.instance }} is down",
            "Prometheus cannot scrape it; Kafka holds its backlog meanwhile.",
            duration="1m",
        ),
        Alert(
            "LLMMonitorConsumerLagHigh",
            f"sum by (topic) (llm_monitor_consumer_lag_messages) > {CONSUMER_LAG_MESSAGES}",
            "page",
            "{{ $value }} messages behind on {{ $labels.topic }}",
            "Workers are not keeping up; scale the role that reads this topic.",
            duration="5m",
        ),
        Alert(
            "LLMMonitorSinkFailing",
            "sum by (table) (rate(llm_monitor_sink_errors_total[5m])) > 0",
            "page",
            "Inserts into {{ $labels.table }} are failing",
            "The sink retries while Kafka holds the backlog; ClickHouse needs attention.",
            duration="5m",
        ),
        Alert(
            "LLMMonitorDeadLettersHigh",
            "sum(rate(llm_monitor_dead_letters_total[5m]))\n"
            "  / clamp_min(sum(rate(llm_monitor_events_received_total[5m])), 1e-9)"
            f" > {number(DEAD_LETTER_FRACTION)}",
            "warning",
            "{{ $value | humanizePercentage }} of events go to the DLQ",
            "A producer is sending malformed events; see dead_letters by reason.",
            duration="10m",
        ),
        Alert(
            "LLMMonitorInternalDeadLetters",
            "sum by (topic, reason) (increase(llm_monitor_internal_dead_letters_total[10m])) > 0",
            "warning",
            "Records of {{ $labels.topic }} dead-lettered ({{ $labels.reason }})",
            "A worker could not decode, process or store records of an internal topic; they "
            "are in dead_letters with topic, partition, offset and raw bytes.",
        ),
        Alert(
            "LLMMonitorChangelogRecordSkipped",
            "sum by (table) (increase(llm_monitor_changelog_records_skipped_total[1h])) > 0",
            "warning",
            "A {{ $labels.table }} changelog record did not decode and was skipped",
            "A worker restoring its tables skipped a changelog record it could not read, so "
            "that one key's state (a window, a kill switch) was restored without it.",
        ),
        Alert(
            "LLMMonitorSpoolQuarantined",
            "sum by (reason) (increase(llm_monitor_spool_quarantined_total[1h])) > 0",
            "page",
            "A spooled batch could not be replayed ({{ $labels.reason }})",
            "The sink moved a spool entry to spool/quarantine/; some of its rows are not in "
            "ClickHouse. The worker log names the file and how to re-produce its records.",
        ),
        Alert(
            "LLMMonitorSinkDroppedRecords",
            "sum by (topic) (increase(llm_monitor_sink_dropped_records_total[10m])) > 0",
            "page",
            "Records of {{ $labels.topic }} could be neither stored nor dead-lettered",
            "They stay in Kafka until the topic's retention; the worker log has their "
            "topic/partition/offset.",
        ),
    ]


def alert_groups(policy: Policy) -> dict[str, list[Alert]]:
    return {
        "llm-monitor-policy": policy_alerts(),
        "llm-monitor-quality": quality_alerts(policy),
        "llm-monitor-pipeline": pipeline_alerts(),
    }


class _Flow(dict[str, str]):
    """A mapping written on one line (labels)."""


class _Quoted(str):
    """A string written in double quotes (annotations: templates read as text)."""

    __slots__ = ()


class _Dumper(yaml.SafeDumper):
    """Lists indented under their key, as the rest of deploy/ is written."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    """Multi-line expressions as literal blocks, so they read as written."""
    return dumper.represent_scalar(
        "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None
    )


def _quoted(dumper: yaml.SafeDumper, value: _Quoted) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(value), style='"')


def _flow(dumper: yaml.SafeDumper, value: _Flow) -> yaml.MappingNode:
    return dumper.represent_mapping("tag:yaml.org,2002:map", value, flow_style=True)


_Dumper.add_representer(str, _str)
_Dumper.add_representer(_Quoted, _quoted)
_Dumper.add_representer(_Flow, _flow)


def render(policy: Policy) -> str:
    """The rules file for ``policy``: YAML, a blank line between groups, each alert's comment
    above it."""
    groups = alert_groups(policy)
    document = {
        "groups": [
            {"name": name, "rules": [alert.as_dict() for alert in alerts]}
            for name, alerts in groups.items()
        ]
    }
    text = yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=True)
    comments = {a.name: a.comment for alerts in groups.values() for a in alerts if a.comment}
    lines: list[str] = []
    for line in text.splitlines():
        stripped = line.lstrip()
        indent = line[: len(line) - len(stripped)]
        if stripped.startswith("- name: ") and lines[-1] != "groups:":
            lines.append("")
        name = stripped.removeprefix("- alert: ")
        if name != stripped and name in comments:
            lines += [f"{indent}# {comment}" for comment in comments[name].splitlines()]
        lines.append(line)
    return HEADER + "\n".join(lines) + "\n"


def write_rules(policy: Policy, out: Path = RULES_FILE) -> Path:
    """Render ``policy``'s rules into ``out`` (its folder is created when missing)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(policy))
    return out
