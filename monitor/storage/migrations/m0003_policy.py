"""Policy: decisions, webhook attempts (``actions``), kill-switch history, the API audit log,
incidents and their evidence.

``incident_evidence`` holds copies of the events, findings and windows an incident was decided
on, as JSON rows, with no TTL: the tables they come from forget text after ``text_ttl_days``,
the postmortem must not.
"""

STATEMENTS = [
    """
    CREATE TABLE IF NOT EXISTS {db}.decisions (
        idempotency_key String,
        decided_at DateTime64(3, 'UTC'),
        rule LowCardinality(String),
        action LowCardinality(String),
        outcome LowCardinality(String),
        model LowCardinality(String),
        model_version LowCardinality(String),
        deployment LowCardinality(String),
        observed Float64,
        bound_low Float64,
        bound_high Float64,
        threshold Float64,
        n UInt64,
        window_start DateTime64(3, 'UTC'),
        window_end DateTime64(3, 'UTC'),
        windows UInt16,
        confidence Float64,
        dry_run UInt8,
        detail String
    )
    ENGINE = ReplacingMergeTree(decided_at)
    PARTITION BY toYYYYMM(decided_at)
    ORDER BY (model, deployment, rule, idempotency_key, outcome, window_start)
    TTL toDateTime(decided_at) + INTERVAL {metrics_ttl_days} DAY
    """,
    """
    CREATE TABLE IF NOT EXISTS {db}.actions (
        idempotency_key String,
        action LowCardinality(String),
        url String,
        attempt UInt32,
        at DateTime64(3, 'UTC'),
        status_code UInt16,
        error String,
        latency_ms Float64,
        outcome LowCardinality(String)
    )
    ENGINE = ReplacingMergeTree(at)
    PARTITION BY toYYYYMM(at)
    ORDER BY (idempotency_key, url, attempt)
    TTL toDateTime(at) + INTERVAL {metrics_ttl_days} DAY
    """,
    """
    CREATE TABLE IF NOT EXISTS {db}.killswitch (
        model LowCardinality(String),
        deployment LowCardinality(String),
        engaged UInt8,
        reason String,
        actor LowCardinality(String),
        changed_at DateTime64(3, 'UTC'),
        incident_id String,
        idempotency_key String
    )
    ENGINE = ReplacingMergeTree
    ORDER BY (model, deployment, changed_at)
    """,
    """
    CREATE TABLE IF NOT EXISTS {db}.audit_log (
        at DateTime64(3, 'UTC'),
        remote String,
        method LowCardinality(String),
        path String,
        target String,
        outcome LowCardinality(String),
        detail String
    )
    ENGINE = ReplacingMergeTree
    PARTITION BY toYYYYMM(at)
    ORDER BY (at, path, remote, target, outcome)
    """,
    """
    CREATE TABLE IF NOT EXISTS {db}.incidents (
        incident_id String,
        opened_at DateTime64(3, 'UTC'),
        action LowCardinality(String),
        rule LowCardinality(String),
        model LowCardinality(String),
        model_version LowCardinality(String),
        deployment LowCardinality(String),
        evidence_from DateTime64(3, 'UTC'),
        evidence_to DateTime64(3, 'UTC'),
        summary String,
        idempotency_key String
    )
    ENGINE = ReplacingMergeTree
    ORDER BY incident_id
    """,
    """
    CREATE TABLE IF NOT EXISTS {db}.incident_evidence (
        incident_id String,
        kind LowCardinality(String),
        key String,
        at DateTime64(3, 'UTC'),
        row String
    )
    ENGINE = ReplacingMergeTree
    ORDER BY (incident_id, kind, key)
    """,
]
