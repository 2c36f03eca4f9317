"""Every Prometheus metric in one place, built over a given registry (tests make a fresh one).

Labels are bounded: model, model_version, deployment, detector, route, reason, table, topic.
``LabelGuard`` caps distinct values per label so a misbehaving client cannot explode series.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

OTHER = "other"
SERIES = ("model", "model_version", "deployment")
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class LabelGuard:
    """Maps label values beyond ``max_values`` distinct ones per label name to ``other``."""

    max_values: int = 200
    _seen: dict[str, set[str]] = field(default_factory=dict)

    def __call__(self, name: str, value: str) -> str:
        seen = self._seen.setdefault(name, set())
        if value in seen:
            return value
        if len(seen) >= self.max_values:
            return OTHER
        seen.add(value)
        return value


@dataclass(frozen=True)
class Metrics:
    """Typed container of the worker's metrics."""

    registry: CollectorRegistry
    guard: LabelGuard
    events_received: Counter
    events_valid: Counter
    dead_letters: Counter
    internal_dead_letters: Counter
    changelog_skipped: Counter
    detector_flags: Counter
    detector_seconds: Histogram
    batch_size: Histogram
    window_latency_seconds: Gauge
    window_error_rate: Gauge
    window_events: Gauge
    window_flag_rate: Gauge
    window_complaint_rate: Gauge
    windows_emitted: Counter
    windows_pending: Gauge
    partial_events_merged: Counter
    late_events: Counter
    sink_rows: Counter
    sink_batch_rows: Histogram
    sink_insert_seconds: Histogram
    sink_errors: Counter
    sink_dropped: Counter
    spool_quarantined: Counter
    end_to_end_seconds: Histogram
    consumer_lag: Gauge
    detector_score: Histogram
    embed_batch_events: Histogram
    embed_texts: Counter
    embed_cache_hits: Counter
    embed_batch_seconds: Histogram
    detector_sample_rate: Gauge
    shadow_findings: Counter
    shadow_failures: Counter
    shadow_seconds: Histogram
    embed_backlog_seconds: Gauge
    window_bias_disparity: Gauge
    drift_signals: Counter
    policy_decisions: Counter
    policy_rollback_active: Gauge
    rollout_stage: Gauge
    policy_rule: Gauge
    killswitch_engaged: Gauge
    budget_spent_ratio: Gauge
    promotion_gate: Gauge
    actions: Counter
    webhook_attempts: Counter
    killswitch_api_calls: Counter
    incident_evidence: Counter
    alertmanager_pushes: Counter
    otlp_spans: Counter
    otlp_evaluations: Counter
    judge_requests: Counter
    judge_shed: Counter
    judge_cost_usd: Counter
    judge_tokens: Counter
    judge_seconds: Histogram
    judge_queue: Gauge
    judge_score: Histogram
    judge_win_rate: Gauge
    judge_pairs_evicted: Counter

    def series(self, model: str, version: str, deployment: str) -> tuple[str, str, str]:
        g = self.guard
        return (g("model", model), g("model_version", version), g("deployment", deployment))


SINK_TABLES = ("events", "findings", "findings_versions", "windows", "dead_letters", "policy")
ACTIONS = ("rollback", "kill", "resume", "promote")
ATTEMPT_OUTCOMES = ("delivered", "retrying", "gave_up")
API_OUTCOMES = ("ok", "unauthorized", "invalid", "disabled")
EVIDENCE_OUTCOMES = ("copied", "failed")
PUSH_OUTCOMES = ("delivered", "retrying", "gave_up")
QUARANTINE_REASONS = ("unreadable", "refused")
OTLP_SPAN_OUTCOMES = ("event", "ignored")  # a GenAI span's event, or a span left out
# A finding published as an OTLP log record, or a scored record that did not decode.
OTLP_EVALUATION_OUTCOMES = ("published", "undecodable")
# Reasons of llm_monitor_internal_dead_letters_total (records of internal topics).
REASON_UNDECODABLE = "undecodable"  # the record does not decode
REASON_UNPROCESSABLE = "unprocessable"  # it decodes, but processing it fails
REASON_REFUSED = "refused"  # ClickHouse refuses its row
# ... records of the DLQ topic itself, stored as their own dead letters.
REASON_UNDECODABLE_DEAD_LETTER = "undecodable_dead_letter"
REASON_REFUSED_DEAD_LETTER = "refused_dead_letter"


def initialise(metrics: Metrics) -> None:
    """Export zeros for every known label value, so alert rules and dashboards see the series
    (and rates start) before the first error, refusal or dead letter happens."""
    from monitor.ingest.events import REASONS

    for reason in REASONS:
        metrics.dead_letters.labels(reason)
    for table in SINK_TABLES:
        metrics.sink_errors.labels(table)
        metrics.sink_rows.labels(table)
    for action in ACTIONS:
        metrics.actions.labels(action)
        for outcome in ATTEMPT_OUTCOMES:
            metrics.webhook_attempts.labels(action, outcome)
    for outcome in API_OUTCOMES:
        metrics.killswitch_api_calls.labels(outcome)
    for outcome in EVIDENCE_OUTCOMES:
        metrics.incident_evidence.labels(outcome)
    for outcome in PUSH_OUTCOMES:
        metrics.alertmanager_pushes.labels(outcome)
    for reason in QUARANTINE_REASONS:
        metrics.spool_quarantined.labels(reason)
    for outcome in OTLP_SPAN_OUTCOMES:
        metrics.otlp_spans.labels(outcome)
    for outcome in OTLP_EVALUATION_OUTCOMES:
        metrics.otlp_evaluations.labels(outcome)


def create_metrics(registry: CollectorRegistry, *, max_label_values: int = 200) -> Metrics:
    """Create and register every metric on ``registry``, known label values at zero."""
    metrics = _create(registry, max_label_values)
    initialise(metrics)
    return metrics


def _create(registry: CollectorRegistry, max_label_values: int) -> Metrics:

    def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(name, doc, labels, registry=registry)

    def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, labels, registry=registry)

    return Metrics(
        registry=registry,
        guard=LabelGuard(max_label_values),
        events_received=counter("llm_monitor_events_received", "Raw events read from Kafka."),
        events_valid=counter(
            "llm_monitor_events_valid", "Events that passed validation.", (*SERIES, "route")
        ),
        dead_letters=counter(
            "llm_monitor_dead_letters", "Events sent to the DLQ, by reason.", ("reason",)
        ),
        internal_dead_letters=counter(
            "llm_monitor_internal_dead_letters",
            "Records of internal topics that could not be processed, dead-lettered.",
            ("topic", "reason"),
        ),
        changelog_skipped=counter(
            "llm_monitor_changelog_records_skipped",
            "Table changelog records that did not decode, read as absent in recovery.",
            ("table",),
        ),
        detector_flags=counter(
            "llm_monitor_detector_flags",
            "Flagged findings per detector and category.",
            (*SERIES, "detector", "category"),
        ),
        detector_seconds=Histogram(
            "llm_monitor_detector_duration_seconds",
            "Time a detector spent on one batch.",
            ("detector",),
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
            registry=registry,
        ),
        batch_size=Histogram(
            "llm_monitor_score_batch_events",
            "Events per scoring batch.",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000),
            registry=registry,
        ),
        window_latency_seconds=gauge(
            "llm_monitor_window_latency_seconds",
            "Latency quantile of the latest window per series, in seconds.",
            (*SERIES, "quantile"),
        ),
        window_error_rate=gauge(
            "llm_monitor_window_error_rate", "Error+timeout rate of the latest window.", SERIES
        ),
        window_events=gauge("llm_monitor_window_events", "Events in the latest window.", SERIES),
        window_flag_rate=gauge(
            "llm_monitor_window_flag_rate",
            "Flagged fraction of the latest window per detector.",
            (*SERIES, "detector"),
        ),
        window_complaint_rate=gauge(
            "llm_monitor_window_complaint_rate", "Complaint rate of the latest window.", SERIES
        ),
        windows_emitted=counter(
            "llm_monitor_windows_emitted", "Window snapshots published.", ("final",)
        ),
        windows_pending=gauge(
            "llm_monitor_windows_pending",
            "Windows changed since their last published snapshot (flushed every 0.25 s).",
        ),
        partial_events_merged=counter(
            "llm_monitor_aggregate_events", "Events merged into windows by the aggregator."
        ),
        late_events=counter(
            "llm_monitor_late_events",
            "Events older than the window retention, left out of windows.",
        ),
        sink_rows=counter("llm_monitor_sink_rows", "Rows inserted into ClickHouse.", ("table",)),
        sink_batch_rows=Histogram(
            "llm_monitor_sink_batch_rows",
            "Rows per ClickHouse insert.",
            ("table",),
            buckets=(1, 10, 100, 500, 1000, 5000, 10000, 50000),
            registry=registry,
        ),
        sink_insert_seconds=Histogram(
            "llm_monitor_sink_insert_duration_seconds",
            "Time per ClickHouse insert.",
            ("table",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ),
        sink_errors=counter(
            "llm_monitor_sink_errors",
            "Failed ClickHouse insert attempts that are retried (transient: unreachable, "
            "timeout, overload). Rows ClickHouse refuses count as internal dead letters.",
            ("table",),
        ),
        sink_dropped=counter(
            "llm_monitor_sink_dropped_records",
            "Records of the DLQ topic the sink could neither store nor dead-letter (logged with "
            "topic/partition/offset; still in Kafka until its retention).",
            ("topic",),
        ),
        spool_quarantined=counter(
            "llm_monitor_spool_quarantined",
            "Spool entries that could not be replayed at start, moved to spool/quarantine/ "
            "(unreadable, or records ClickHouse refuses); the log names the file.",
            ("reason",),
        ),
        end_to_end_seconds=Histogram(
            "llm_monitor_end_to_end_seconds",
            "From the event's Kafka produce timestamp to its row being inserted.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ),
        consumer_lag=gauge(
            "llm_monitor_consumer_lag_messages",
            "Messages between the committed offset and the high watermark.",
            ("topic", "partition"),
        ),
        detector_score=Histogram(
            "llm_monitor_detector_score",
            "Scores in [0, 1] per detector: the distribution, not just the flags.",
            ("detector",),
            buckets=(0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0),
            registry=registry,
        ),
        embed_batch_events=Histogram(
            "llm_monitor_embed_batch_events",
            "Events per embed-worker batch.",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000),
            registry=registry,
        ),
        embed_texts=counter(
            "llm_monitor_embed_texts", "Texts embedded by the embed worker (cache hits included)."
        ),
        embed_cache_hits=counter(
            "llm_monitor_embed_cache_hits", "Texts served from the embedding cache."
        ),
        embed_batch_seconds=Histogram(
            "llm_monitor_embed_batch_duration_seconds",
            "Time the embed worker spent scoring one batch.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ),
        detector_sample_rate=gauge(
            "llm_monitor_detector_sample_rate",
            "Fraction of events a semantic detector scores now (docs/sampling.md).",
            ("detector",),
        ),
        shadow_findings=counter(
            "llm_monitor_shadow_findings",
            "Findings of shadow detectors (candidate versions beside the live ones), by "
            "detector, the version they are stored under in findings_versions, and flagged "
            "(true, false). Never counted in windows, the policy or the live detector metrics.",
            ("detector", "detector_version", "flagged"),
        ),
        shadow_failures=counter(
            "llm_monitor_shadow_failures",
            "Batches a shadow detector failed on (logged; the live verdicts are unaffected).",
            ("detector", "detector_version"),
        ),
        shadow_seconds=Histogram(
            "llm_monitor_shadow_duration_seconds",
            "Time a shadow detector spent on one batch: what promoting it would cost.",
            ("detector", "detector_version"),
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
            registry=registry,
        ),
        embed_backlog_seconds=gauge(
            "llm_monitor_embed_backlog_seconds",
            "Age of the oldest record in the embed worker's latest batch (adaptive sampling).",
        ),
        window_bias_disparity=gauge(
            "llm_monitor_window_bias_disparity",
            "Max minus min group value of the latest window, with its confidence bounds.",
            (*SERIES, "metric", "bound"),
        ),
        drift_signals=counter(
            "llm_monitor_drift_signals",
            "Drift detections: embedding (permutation test) or rate:<signal> (ADWIN/PH).",
            (*SERIES, "signal"),
        ),
        policy_decisions=counter(
            "llm_monitor_policy_decisions",
            "Policy verdict changes by rule and outcome.",
            (*SERIES, "rule", "outcome"),
        ),
        policy_rollback_active=gauge(
            "llm_monitor_policy_rollback_active",
            "1 while any rollback rule fires for the series (Argo Rollouts analysis reads this).",
            SERIES,
        ),
        policy_rule=gauge(
            "llm_monitor_policy_rule",
            "Latest evaluation of each policy rule: value, its bounds, threshold (base units), n.",
            (*SERIES, "rule", "bound"),
        ),
        rollout_stage=gauge(
            "llm_monitor_rollout_stage",
            "Index of the canary's rollout stage in the policy (0 = first).",
            SERIES,
        ),
        killswitch_engaged=gauge(
            "llm_monitor_killswitch_engaged",
            "1 while the kill switch of a model/deployment is engaged.",
            ("model", "deployment"),
        ),
        budget_spent_ratio=gauge(
            "llm_monitor_budget_spent_ratio",
            "Spend in a policy budget's current period over its limit (1 = the limit).",
            ("budget", "model"),
        ),
        promotion_gate=gauge(
            "llm_monitor_promotion_gate",
            "The policy's promotion gate of a canary version from the LLM judge's newest "
            "pairwise window: 1 pass, 0 fail, -1 inconclusive (too few pairs).",
            SERIES,
        ),
        actions=counter(
            "llm_monitor_actions", "Actions published (rollback, kill, resume).", ("action",)
        ),
        webhook_attempts=counter(
            "llm_monitor_webhook_attempts",
            "Webhook POSTs by action and outcome (delivered, retrying, gave_up).",
            ("action", "outcome"),
        ),
        killswitch_api_calls=counter(
            "llm_monitor_killswitch_api_calls",
            "Policy API calls (kill switch, status, Flagger gate) by outcome.",
            ("outcome",),
        ),
        incident_evidence=counter(
            "llm_monitor_incident_evidence_copies",
            "Incident evidence copies out of the TTL'd tables, by outcome (copied, failed).",
            ("outcome",),
        ),
        alertmanager_pushes=counter(
            "llm_monitor_alertmanager_pushes",
            "Incident alerts POSTed to Alertmanager by outcome (delivered, retrying, gave_up).",
            ("outcome",),
        ),
        otlp_spans=counter(
            "llm_monitor_otlp_spans",
            "Spans read from the OTLP topic: 'event' (a GenAI span, one event each) or "
            "'ignored' (any other span).",
            ("outcome",),
        ),
        otlp_evaluations=counter(
            "llm_monitor_otel_evaluations",
            "Findings published as OTLP log records (gen_ai.evaluation.result) to the OTLP logs "
            "topic: 'published'; scored records that did not decode: 'undecodable'.",
            ("outcome",),
        ),
        judge_requests=counter(
            "llm_monitor_judge_requests",
            "LLM-as-judge calls by kind (grade, pairwise) and outcome (ok, parse_error, "
            "timeout, error).",
            ("kind", "outcome"),
        ),
        judge_shed=counter(
            "llm_monitor_judge_shed",
            "Sampled judge jobs shed by kind and reason (queue_full: the judge is behind; "
            "budget: the hourly budget is spent).",
            ("kind", "reason"),
        ),
        judge_cost_usd=counter(
            "llm_monitor_judge_cost_usd", "What the judge's calls cost, in US dollars.", ("kind",)
        ),
        judge_tokens=counter(
            "llm_monitor_judge_tokens", "Tokens the judge's calls used.", ("kind", "direction")
        ),
        judge_seconds=Histogram(
            "llm_monitor_judge_duration_seconds",
            "Time per judge call.",
            ("kind",),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ),
        judge_queue=gauge("llm_monitor_judge_queue_jobs", "Judge jobs waiting for a worker."),
        judge_score=Histogram(
            "llm_monitor_judge_score",
            "The judge's grades (1-5) per series.",
            SERIES,
            buckets=(1, 2, 3, 4, 5),
            registry=registry,
        ),
        judge_win_rate=gauge(
            "llm_monitor_judge_win_rate",
            "Pairwise win rate of the canary against stable in the latest closed window: "
            "value, its bootstrap interval (low, high) and n, the prompts compared.",
            (*SERIES, "bound"),
        ),
        judge_pairs_evicted=counter(
            "llm_monitor_judge_pairs_evicted",
            "Unpaired answers forgotten (too old, or the pair buffer full).",
        ),
    )
