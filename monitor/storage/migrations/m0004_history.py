"""Analyst history: per-minute rollups kept by materialized views, and views for the
questions analysts ask (docs/queries.md).

- ``events_minute`` (AggregatingMergeTree, fed by ``events_minute_mv``): events, errors,
  complaints, tokens, cost and latency quantile states per minute and version;
  ``v_minute_by_version`` finalises it. Months of history read thousands of rows, not
  billions. Like every materialized view it counts what is inserted: an event replayed into
  ``events`` is counted twice here (``events`` itself deduplicates; ``windows`` is exact).
- ``findings_minute`` (SummingMergeTree, fed by ``findings_minute_mv``): scored and flagged
  per detector and category.
- ``v_pii_leak_ledger``: one row per leaked PII type per event — time, request, version,
  route, type. Never a value: findings hold offsets, and text is redacted before storage.
- ``v_incidents``: incidents with their evidence counts and webhook deliveries.
- ``v_detector_agreement``: for each pair of detectors that scored the same events, how often
  both flagged, either flagged, and the Jaccard agreement.
"""

STATEMENTS = [
    """
    CREATE TABLE IF NOT EXISTS {db}.events_minute (
        minute DateTime('UTC'),
        model LowCardinality(String),
        model_version LowCardinality(String),
        deployment LowCardinality(String),
        events SimpleAggregateFunction(sum, UInt64),
        errors SimpleAggregateFunction(sum, UInt64),
        complaints SimpleAggregateFunction(sum, UInt64),
        input_tokens SimpleAggregateFunction(sum, UInt64),
        output_tokens SimpleAggregateFunction(sum, UInt64),
        cost_usd SimpleAggregateFunction(sum, Float64),
        latency AggregateFunction(quantilesIf(0.5, 0.95, 0.99), Float64, UInt8)
    )
    ENGINE = AggregatingMergeTree
    PARTITION BY toYYYYMM(minute)
    ORDER BY (model, model_version, deployment, minute)
    TTL minute + INTERVAL {metrics_ttl_days} DAY
    """,
    """
    CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.events_minute_mv TO {db}.events_minute AS
    SELECT
        toStartOfMinute(event_time) AS minute, model, model_version, deployment,
        toUInt64(count()) AS events,
        toUInt64(countIf(status IN ('error', 'timeout'))) AS errors,
        toUInt64(sum(complaint)) AS complaints,
        toUInt64(sum(ifNull(input_tokens, 0))) AS input_tokens,
        toUInt64(sum(ifNull(output_tokens, 0))) AS output_tokens,
        sum(ifNull(cost_usd, 0)) AS cost_usd,
        quantilesIfState(0.5, 0.95, 0.99)(ifNull(latency_ms, 0), toUInt8(isNotNull(latency_ms)))
            AS latency
    FROM {db}.events
    GROUP BY minute, model, model_version, deployment
    """,
    """
    CREATE VIEW IF NOT EXISTS {db}.v_minute_by_version AS
    SELECT *, if(events = 0, 0, errors / events) AS error_rate
    FROM (
        SELECT
            minute, model, model_version, deployment,
            sum(m.events) AS events, sum(m.errors) AS errors, sum(m.complaints) AS complaints,
            sum(m.input_tokens) AS input_tokens, sum(m.output_tokens) AS output_tokens,
            sum(m.cost_usd) AS cost_usd,
            quantilesIfMerge(0.5, 0.95, 0.99)(m.latency) AS latency_p50_p95_p99_ms
        FROM {db}.events_minute AS m
        GROUP BY minute, model, model_version, deployment
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS {db}.findings_minute (
        minute DateTime('UTC'),
        model LowCardinality(String),
        model_version LowCardinality(String),
        deployment LowCardinality(String),
        detector LowCardinality(String),
        category LowCardinality(String),
        scored UInt64,
        flagged UInt64
    )
    ENGINE = SummingMergeTree
    PARTITION BY toYYYYMM(minute)
    ORDER BY (detector, model, model_version, deployment, category, minute)
    TTL minute + INTERVAL {metrics_ttl_days} DAY
    """,
    """
    CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.findings_minute_mv TO {db}.findings_minute AS
    SELECT
        toStartOfMinute(event_time) AS minute, model, model_version, deployment, detector,
        category, toUInt64(count()) AS scored, toUInt64(countIf(flagged)) AS flagged
    FROM {db}.findings
    GROUP BY minute, model, model_version, deployment, detector, category
    """,
    """
    CREATE VIEW IF NOT EXISTS {db}.v_pii_leak_ledger AS
    SELECT
        event_time, request_id, model, model_version, deployment, route,
        arrayJoin(splitByChar(',', details['leaked_types'])) AS type,
        length(spans) AS spans
    FROM {db}.findings FINAL
    WHERE detector = 'pii' AND category = 'leak' AND details['leaked_types'] != ''
    """,
    """
    CREATE VIEW IF NOT EXISTS {db}.v_incidents AS
    SELECT
        i.incident_id AS incident_id, i.opened_at AS opened_at, i.action AS action,
        i.rule AS rule, i.model AS model, i.model_version AS model_version,
        i.deployment AS deployment, i.summary AS summary,
        ifNull(e.events, 0) AS evidence_events, ifNull(e.findings, 0) AS evidence_findings,
        ifNull(e.windows, 0) AS evidence_windows, ifNull(a.delivered, 0) AS webhooks_delivered,
        ifNull(a.failed, 0) AS webhooks_failed
    FROM {db}.incidents AS i FINAL
    LEFT JOIN (
        SELECT incident_id, countIf(kind = 'event') AS events,
               countIf(kind = 'finding') AS findings, countIf(kind = 'window') AS windows
        FROM {db}.incident_evidence FINAL GROUP BY incident_id
    ) AS e ON e.incident_id = i.incident_id
    LEFT JOIN (
        SELECT idempotency_key, countIf(outcome = 'delivered') AS delivered,
               countIf(outcome = 'gave_up') AS failed
        FROM {db}.actions FINAL GROUP BY idempotency_key
    ) AS a ON a.idempotency_key = i.idempotency_key
    """,
    """
    CREATE VIEW IF NOT EXISTS {db}.v_detector_agreement AS
    SELECT
        pair.1 AS detector_a, pair.2 AS detector_b,
        countIf(has(flagged, pair.1) AND has(flagged, pair.2)) AS both_flagged,
        countIf(has(flagged, pair.1) OR has(flagged, pair.2)) AS either_flagged,
        if(either_flagged = 0, 0, both_flagged / either_flagged) AS jaccard,
        count() AS events_scored_by_both
    FROM (
        SELECT request_id, groupUniqArray(detector) AS scored,
               groupUniqArrayIf(detector, flagged) AS flagged
        FROM {db}.findings FINAL
        WHERE NOT startsWith(request_id, 'window:')
        GROUP BY request_id
    )
    ARRAY JOIN arrayFilter(
        p -> p.1 < p.2, arrayFlatten(arrayMap(a -> arrayMap(b -> (a, b), scored), scored))
    ) AS pair
    GROUP BY detector_a, detector_b
    """,
]
