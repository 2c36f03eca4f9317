"""The dashboards, as code (grafana-foundation-sdk): SRE overview, detectors deep-dive, canary
vs stable, and history from ClickHouse. ``llm-monitor dashboards build --policy FILE`` writes
their JSON to dashboards/json/ (committed, provisioned by deploy/grafana/); the threshold lines
are the thresholds of the policy passed in, so the dashboards and the policy engine cannot
disagree. A test keeps the committed JSON equal to the build from deploy/policy/policy.yaml and
runs every query against a live pipeline.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import heatmap, prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    Threshold,
    ThresholdsMode,
    ValueMap,
    ValueMappingResult,
    VariableRefresh,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from dashboards.clickhouse import PLUGIN, UID, Query
from monitor.policy.config import Policy
from monitor.policy.gates import FAILED, GATE_VALUES, INCONCLUSIVE, PASSED

OUT = Path(__file__).parent / "json"
PROMETHEUS = DataSourceRef(type_val="prometheus", uid="prometheus")
CLICKHOUSE = DataSourceRef(type_val=PLUGIN, uid=UID)
SERIES = 'model=~"$model", deployment=~"$deployment"'
RATE = "$__rate_interval"


def prom(expr: str, legend: str = "", ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref)


def thresholds(*steps: tuple[float, str]) -> db.ThresholdsConfig:
    return (
        db.ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(None, "green"), *(Threshold(v, c) for v, c in steps)])
    )


def legend() -> common_builders.VizLegendOptions:
    return (
        common_builders.VizLegendOptions().display_mode(common.LegendDisplayMode.LIST)
        .placement(common.LegendPlacement.BOTTOM).show_legend(True)
    )  # fmt: skip


def series_panel(
    title: str, *queries: prometheus.Dataquery, unit: str = "short",
    line: float | None = None, description: str = "", width: int = 12,
) -> timeseries.Panel:  # fmt: skip
    """A time series; ``line`` draws a policy threshold across it."""
    panel = (
        timeseries.Panel().title(title).description(description).datasource(PROMETHEUS)
        .unit(unit).height(8).span(width).targets(list(queries)).legend(legend())
    )  # fmt: skip
    if line is not None:
        panel = panel.thresholds(thresholds((line, "red"))).thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(common.GraphTresholdsStyleMode.LINE)
        )
    return panel


def stat_panel(
    title: str, query: prometheus.Dataquery, *, unit: str = "short", width: int = 6,
    red_at: float | None = None,
) -> stat.Panel:  # fmt: skip
    panel = (
        stat.Panel().title(title).datasource(PROMETHEUS).unit(unit).height(5).span(width)
        .with_target(query)
    )  # fmt: skip
    if red_at is not None:
        panel = panel.thresholds(thresholds((red_at, "red")))
    return panel


def history_table(title: str, sql: str, width: int = 12) -> table.Panel:
    return (
        table.Panel().title(title).datasource(CLICKHOUSE).height(9).span(width)
        .with_target(Query(sql))
    )  # fmt: skip


def history_series(title: str, sql: str, unit: str = "short") -> timeseries.Panel:
    return (
        timeseries.Panel().title(title).datasource(CLICKHOUSE).unit(unit).height(8).span(12)
        .with_target(Query(sql, time_series=True)).legend(legend())
    )  # fmt: skip


def variable(name: str, metric: str) -> db.QueryVariable:
    return (
        db.QueryVariable(name).label(name.replace("_", " ")).datasource(PROMETHEUS)
        .query(f"label_values({metric}, {name})").multi(True).include_all(True)
        .all_value(".*").refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
    )  # fmt: skip


def base(uid: str, title: str, description: str) -> db.Dashboard:
    return (
        db.Dashboard(title).uid(uid).description(description).tags(["llm-monitor"])
        .time("now-1h", "now").refresh("30s").timezone("utc").editable()
    )  # fmt: skip


def sre_overview(policy: Policy) -> db.Dashboard:
    """Policy state, traffic, errors, latency, flags; the pipeline underneath."""
    rollback = policy.rollback
    return (
        base("llm-monitor-sre", "LLM monitor: SRE overview",
             "Traffic, errors, latency, detector flags, pipeline health and policy state.")
        .with_variable(variable("model", "llm_monitor_window_events"))
        .with_variable(variable("deployment", "llm_monitor_window_events"))
        .with_row(db.Row("Policy"))
        .with_panel(stat_panel("Kill switches engaged",
                               prom(f"sum(llm_monitor_killswitch_engaged{{{SERIES}}})"),
                               red_at=1))
        .with_panel(stat_panel("Rollbacks active",
                               prom(f"sum(llm_monitor_policy_rollback_active{{{SERIES}}})"),
                               red_at=1))
        .with_panel(stat_panel("Canary rollout stage",
                               prom(f"max by (model, model_version) (llm_monitor_rollout_stage"
                                    f"{{{SERIES}}})", "{{model}} {{model_version}}")))
        .with_panel(stat_panel("Actions in the last hour",
                               prom("sum by (action) (increase(llm_monitor_actions_total[1h]))",
                                    "{{action}}")))
        .with_row(db.Row("Traffic and quality"))
        .with_panel(series_panel(
            "Events per second",
            prom(f"sum by (model, deployment) (rate(llm_monitor_events_valid_total{{{SERIES}}}"
                 f"[{RATE}]))", "{{model}} {{deployment}}"), unit="reqps"))
        .with_panel(series_panel(
            "Error rate (latest window)",
            prom(f"max by (model, model_version, deployment) (llm_monitor_window_error_rate"
                 f"{{{SERIES}}})", "{{model}} {{model_version}} {{deployment}}"),
            unit="percentunit", line=rollback.error_rate.threshold))
        .with_panel(series_panel(
            "Latency p50 / p95 / p99 per version",
            prom(f"max by (model, model_version, deployment, quantile) "
                 f"(llm_monitor_window_latency_seconds{{{SERIES}}})",
                 "{{model}} {{model_version}} p{{quantile}}"),
            unit="s", line=rollback.p99_latency.threshold_ms / 1000))
        .with_panel(series_panel(
            "Flag rate per detector",
            prom(f"max by (model, deployment, detector) (llm_monitor_window_flag_rate"
                 f"{{{SERIES}}})", "{{detector}} {{model}} {{deployment}}"),
            unit="percentunit"))
        .with_row(db.Row("Pipeline"))
        .with_panel(series_panel(
            "Dead letters per second, by reason",
            prom(f"sum by (reason) (rate(llm_monitor_dead_letters_total[{RATE}]))", "{{reason}}"),
            width=8))
        .with_panel(series_panel(
            "Consumer lag", prom("sum by (topic) (llm_monitor_consumer_lag_messages)",
                                 "{{topic}}"), width=8))
        .with_panel(series_panel(
            "Produce → stored p99",
            prom(f"histogram_quantile(0.99, sum by (le) "
                 f"(rate(llm_monitor_end_to_end_seconds_bucket[{RATE}])))", "p99"),
            unit="s", width=8))
        .with_panel(series_panel(
            "Webhook attempts by outcome",
            prom(f"sum by (action, outcome) (rate(llm_monitor_webhook_attempts_total[{RATE}]))",
                 "{{action}} {{outcome}}"), width=24))
    )  # fmt: skip


def detectors(policy: Policy) -> db.Dashboard:
    """Per-detector rates and scores, detector cost, embedding workers, bias, drift."""
    return (
        base("llm-monitor-detectors", "LLM monitor: detectors",
             "Per-detector rates, score distributions, detector cost and the embedding workers.")
        .with_variable(variable("model", "llm_monitor_window_events"))
        .with_variable(variable("deployment", "llm_monitor_window_events"))
        .with_variable(variable("detector", "llm_monitor_detector_duration_seconds_count"))
        .with_panel(series_panel(
            "Flagged findings per second",
            prom(f"sum by (detector, category) (rate(llm_monitor_detector_flags_total"
                 f"{{{SERIES}, detector=~\"$detector\"}}[{RATE}]))", "{{detector}} {{category}}")))
        .with_panel(series_panel(
            "Flag rate per version (latest window)",
            prom(f"max by (model, model_version, detector) (llm_monitor_window_flag_rate"
                 f"{{{SERIES}, detector=~\"$detector\"}})",
                 "{{detector}} {{model}} {{model_version}}"), unit="percentunit"))
        .with_panel(
            heatmap.Panel().title("Score distribution").datasource(PROMETHEUS).height(8).span(12)
            .with_target(prom(f"sum by (le) (rate(llm_monitor_detector_score_bucket"
                              f"{{detector=~\"$detector\"}}[{RATE}]))", "{{le}}")
                         .format(PromQueryFormat.HEATMAP)))
        .with_panel(series_panel(
            "Median and p90 score",
            prom(f"histogram_quantile(0.5, sum by (le, detector) "
                 f"(rate(llm_monitor_detector_score_bucket{{detector=~\"$detector\"}}[{RATE}])))",
                 "p50 {{detector}}"),
            prom(f"histogram_quantile(0.9, sum by (le, detector) "
                 f"(rate(llm_monitor_detector_score_bucket{{detector=~\"$detector\"}}[{RATE}])))",
                 "p90 {{detector}}", "B")))
        .with_panel(series_panel(
            "Detector time per batch, p99",
            prom(f"histogram_quantile(0.99, sum by (le, detector) "
                 f"(rate(llm_monitor_detector_duration_seconds_bucket"
                 f"{{detector=~\"$detector\"}}[{RATE}])))", "{{detector}}"), unit="s"))
        .with_panel(series_panel(
            "Embedding throughput and cache hits",
            prom(f"sum(rate(llm_monitor_embed_texts_total[{RATE}]))", "texts/s"),
            prom(f"sum(rate(llm_monitor_embed_cache_hits_total[{RATE}]))", "cache hits/s", "B"),
            unit="short"))
        .with_panel(series_panel(
            "Embed batch size (median) and batch time (p99)",
            prom(f"histogram_quantile(0.5, sum by (le) "
                 f"(rate(llm_monitor_embed_batch_events_bucket[{RATE}])))", "events per batch"),
            prom(f"histogram_quantile(0.99, sum by (le) "
                 f"(rate(llm_monitor_embed_batch_duration_seconds_bucket[{RATE}])))",
                 "seconds per batch", "B")))
        .with_panel(series_panel(
            "Bias disparity with its 95 % bounds",
            prom(f"max by (model, model_version, metric, bound) "
                 f"(llm_monitor_window_bias_disparity{{{SERIES}}})",
                 "{{model_version}} {{metric}} {{bound}}"),
            line=policy.rollback.bias_disparity.threshold))
        .with_panel(series_panel(
            "Drift signals in the last hour",
            prom("sum by (model, model_version, signal) "
                 "(increase(llm_monitor_drift_signals_total[1h]))",
                 "{{model}} {{model_version}} {{signal}}"), width=24))
    )  # fmt: skip


# (title, detector): the canary dashboard's detector panels, lines from the policy's rules.
CANARY_DETECTORS = (
    ("Toxicity rate", "toxicity"),
    ("PII leak rate", "pii"),
    ("Hallucination rate", "hallucination"),
)


def detector_rule(policy: Policy, title: str, detector: str) -> tuple[str, str, str, float | None]:
    """The detector's enabled rate rule; without one, its canary-minus-stable rule when the
    policy compares it (hallucination, by default); else the rate rule's name with no line."""
    r = policy.rollback
    rate = r.detector_rates.get(detector)
    if rate is not None and rate.enabled:
        return title, f"rollback.{detector}_rate", "percentunit", rate.threshold
    if r.canary_vs_stable.enabled and detector in r.canary_vs_stable.rates:
        return (f"{title}: canary minus stable", f"rollback.canary_vs_stable.{detector}",
                "percentunit", r.canary_vs_stable.margin)  # fmt: skip
    return title, f"rollback.{detector}_rate", "percentunit", None


def canary_rules(policy: Policy) -> list[tuple[str, str, str, float | None]]:
    """(title, rule, unit, threshold) per panel, the threshold from ``policy``, in the
    llm_monitor_policy_rule gauge's base units (latency in seconds)."""
    r = policy.rollback
    return [
        ("Error rate", "rollback.error_rate", "percentunit", r.error_rate.threshold),
        ("p99 latency", "rollback.p99_latency", "s", r.p99_latency.threshold_ms / 1000),
        *(detector_rule(policy, title, d) for title, d in CANARY_DETECTORS),
        ("Complaint rate", "rollback.complaint_rate", "percentunit", r.complaint_rate.threshold),
    ]  # fmt: skip


GATE_COLOURS = {PASSED: "green", FAILED: "red", INCONCLUSIVE: "yellow"}
JUDGE_SERIES = 'model=~"$model", deployment="canary"'


def judge_panels(policy: Policy) -> list[timeseries.Panel | stat.Panel]:
    """The LLM judge's canary-vs-stable win rate with its interval and the policy's gate
    threshold; the prompts compared; the promotion gate per canary version."""
    gate = (
        stat_panel("Promotion gate (LLM judge)",
                   prom(f"max by (model, model_version) (llm_monitor_promotion_gate"
                        f"{{{JUDGE_SERIES}}})", "{{model}} {{model_version}}"))
        .mappings([ValueMap({
            f"{value:g}": ValueMappingResult(text=verdict, color=GATE_COLOURS[verdict])
            for verdict, value in GATE_VALUES.items()
        })])
    )  # fmt: skip
    return [
        series_panel(
            "LLM judge: canary win rate against stable, with its interval",
            prom(f"max by (model, model_version, bound) (llm_monitor_judge_win_rate"
                 f'{{{JUDGE_SERIES}, bound=~"value|low|high"}})',
                 "canary {{model_version}} {{bound}}"),
            unit="percentunit", line=policy.rollback.judge_win_rate.threshold,
            description="Position-swapped pairwise comparisons on the same prompts, per "
            "closed window, with the paired bootstrap interval. The gate passes when low is at "
            "least the line; the policy rolls back when high is below it.",
        ),
        stat_panel("LLM judge: prompts compared (latest window)",
                   prom(f"max by (model, model_version) (llm_monitor_judge_win_rate"
                        f'{{{JUDGE_SERIES}, bound="n"}})', "{{model}} {{model_version}}")),
        gate,
    ]  # fmt: skip


def canary_vs_stable(policy: Policy) -> db.Dashboard:
    """Each policy rule of the canary: its value and bounds, stable's value, the threshold;
    the LLM judge's win rate and the promotion gate."""
    board = (
        base("llm-monitor-canary", "LLM monitor: canary vs stable",
             "Each policy metric of the canary with its confidence band (the bounds the policy "
             "decides on), the stable deployment's value, and the policy threshold.")
        .with_variable(variable("model", "llm_monitor_window_events"))
        .with_panel(series_panel(
            "Canary minus stable (error rate), with its interval",
            prom('max by (model, bound) (llm_monitor_policy_rule{model=~"$model", '
                 'rule="rollback.canary_vs_stable.error_rate", bound=~"value|low|high"})',
                 "{{model}} {{bound}}"),
            unit="percentunit", line=policy.rollback.canary_vs_stable.margin, width=24))
    )  # fmt: skip
    for title, rule, unit, threshold in canary_rules(policy):
        metric = {"rollback.error_rate": "error_rate", "rollback.complaint_rate":
                  "complaint_rate"}.get(rule)  # fmt: skip
        queries = [
            prom(f'max by (model, model_version, bound) (llm_monitor_policy_rule{{model=~"$model",'
                 f' deployment="canary", rule="{rule}", bound=~"value|low|high"}})',
                 "canary {{model_version}} {{bound}}"),
        ]  # fmt: skip
        if metric is not None:
            queries.append(
                prom(
                    f"max by (model, model_version) (llm_monitor_window_{metric}"
                    f'{{model=~"$model", deployment="stable"}})',
                    "stable {{model_version}}",
                    "B",
                )
            )
        board = board.with_panel(series_panel(title, *queries, unit=unit, line=threshold))
    for panel in judge_panels(policy):
        board = board.with_panel(panel)
    return board


def history(_policy: Policy) -> db.Dashboard:
    """Months of history from ClickHouse (no policy thresholds drawn)."""
    return (
        base("llm-monitor-history", "LLM monitor: history (ClickHouse)",
             "Months of history from ClickHouse: routes, PII leaks by type (no raw values), "
             "hallucination by version, slowest requests, incidents and their evidence.")
        .time("now-7d", "now")
        .with_panel(history_series(
            "Error rate per version (per-minute rollup)",
            "SELECT $__timeInterval(minute) AS time, concat(model, ' ', model_version) AS "
            "series, sum(errors) / sum(events) AS error_rate FROM llm_monitor.v_minute_by_version "
            "WHERE $__timeFilter(minute) GROUP BY time, series ORDER BY time", "percentunit"))
        .with_panel(history_series(
            "Hallucination rate per version",
            "SELECT $__timeInterval(minute) AS time, model_version AS series, "
            "sum(flagged) / sum(scored) AS rate FROM llm_monitor.findings_minute "
            "WHERE $__timeFilter(minute) AND detector = 'hallucination' GROUP BY time, series "
            "ORDER BY time", "percentunit"))
        .with_panel(history_series(
            "PII leaks by type",
            "SELECT $__timeInterval(event_time) AS time, type, count() AS leaks FROM "
            "llm_monitor.v_pii_leak_ledger WHERE $__timeFilter(event_time) "
            "GROUP BY time, type ORDER BY time"))
        .with_panel(history_table(
            "Top flagged routes",
            "SELECT route, detector, count() AS flagged_findings FROM llm_monitor.findings FINAL "
            "WHERE $__timeFilter(event_time) AND flagged AND route != '' GROUP BY route, detector "
            "ORDER BY flagged_findings DESC LIMIT 20"))
        .with_panel(history_table(
            "Slowest requests",
            "SELECT event_time, model, model_version, route, latency_ms, request_id "
            "FROM llm_monitor.events FINAL WHERE $__timeFilter(event_time) "
            "AND latency_ms IS NOT NULL ORDER BY latency_ms DESC LIMIT 20"))
        .with_panel(history_table(
            "Incidents with their evidence",
            "SELECT opened_at, incident_id, action, rule, model, model_version, deployment, "
            "evidence_events, evidence_findings, webhooks_delivered FROM llm_monitor.v_incidents "
            "WHERE $__timeFilter(opened_at) ORDER BY opened_at DESC", width=24))
        .with_panel(history_table(
            "Detector agreement (events flagged by both)",
            "SELECT detector_a, detector_b, both_flagged, either_flagged, jaccard "
            "FROM llm_monitor.v_detector_agreement ORDER BY both_flagged DESC", width=24))
    )  # fmt: skip


DASHBOARDS: dict[str, Callable[[Policy], db.Dashboard]] = {
    "sre-overview": sre_overview,
    "detectors": detectors,
    "canary-vs-stable": canary_vs_stable,
    "history": history,
}


def as_json(board: db.Dashboard) -> dict[str, Any]:
    encoded: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    for panel in encoded.get("panels", []):
        if panel.get("options") is None and panel.get("type") != "row":
            panel["options"] = {}  # what Grafana itself saves for a panel left at defaults
    return encoded


def build_all(policy: Policy | None = None) -> dict[str, dict[str, Any]]:
    """Every dashboard as Grafana JSON, threshold lines from ``policy`` (None: the defaults,
    which deploy/policy/policy.yaml lists)."""
    chosen = Policy() if policy is None else policy
    return {name: as_json(make(chosen)) for name, make in DASHBOARDS.items()}


def write_all(policy: Policy, out: Path = OUT) -> list[Path]:
    """Write each dashboard's JSON into ``out``, built with ``policy``'s thresholds."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, board in build_all(policy).items():
        path = out / f"{name}.json"
        path.write_text(json.dumps(board, indent=2, sort_keys=True) + "\n")
        paths.append(path)
    return paths
