"""Events, findings, windows and dead letters.

ReplacingMergeTree everywhere a replay can re-insert a row: keys are deterministic, so
``FINAL`` (or a background merge) collapses duplicates. Text columns carry their own, shorter
TTL than the metric columns: the text disappears, the numbers stay for trend analysis.
"""

STATEMENTS = [
    "CREATE DATABASE IF NOT EXISTS {db}",
    """
    CREATE TABLE IF NOT EXISTS {db}.events (
        request_id String,
        event_time DateTime64(3, 'UTC'),
        produced_at DateTime64(3, 'UTC'),
        stored_at DateTime64(3, 'UTC') DEFAULT now64(3),
        model LowCardinality(String),
        model_version LowCardinality(String),
        deployment LowCardinality(String),
        route LowCardinality(String),
        app LowCardinality(String),
        prompt String TTL toDateTime(event_time) + INTERVAL {text_ttl_days} DAY,
        response String TTL toDateTime(event_time) + INTERVAL {text_ttl_days} DAY,
        samples Array(String) TTL toDateTime(event_time) + INTERVAL {text_ttl_days} DAY,
        context Array(String) TTL toDateTime(event_time) + INTERVAL {text_ttl_days} DAY,
        extra Map(String, String) TTL toDateTime(event_time) + INTERVAL {text_ttl_days} DAY,
        latency_ms Nullable(Float64),
        ttft_ms Nullable(Float64),
        input_tokens Nullable(UInt32),
        output_tokens Nullable(UInt32),
        cost_usd Nullable(Float64),
        status LowCardinality(String),
        error_type LowCardinality(String),
        attributes Map(String, String),
        complaint UInt8,
        rating Nullable(Float64),
        redacted UInt8,
        pii_types Array(LowCardinality(String))
    )
    ENGINE = ReplacingMergeTree(stored_at)
    PARTITION BY toYYYYMM(event_time)
    ORDER BY (model, model_version, deployment, event_time, request_id)
    TTL toDateTime(event_time) + INTERVAL {metrics_ttl_days} DAY
    """,
    """
    CREATE TABLE IF NOT EXISTS {db}.findings (
        request_id String,
        event_time DateTime64(3, 'UTC'),
        stored_at DateTime64(3, 'UTC') DEFAULT now64(3),
        model LowCardinality(String),
        model_version LowCardinality(String),
        deployment LowCardinality(String),
        route LowCardinality(String),
        detector LowCardinality(String),
        detector_version LowCardinality(String),
        score Float32,
        flagged UInt8,
        category LowCardinality(String),
        spans Array(Tuple(start UInt32, end UInt32, type LowCardinality(String),
                          field LowCardinality(String))),
        details Map(String, String)
    )
    ENGINE = ReplacingMergeTree(stored_at)
    PARTITION BY toYYYYMM(event_time)
    ORDER BY (detector, model, model_version, event_time, request_id)
    TTL toDateTime(event_time) + INTERVAL {metrics_ttl_days} DAY
    """,
    """
    CREATE TABLE IF NOT EXISTS {db}.windows (
        model LowCardinality(String),
        model_version LowCardinality(String),
        deployment LowCardinality(String),
        window_start DateTime64(3, 'UTC'),
        window_end DateTime64(3, 'UTC'),
        events UInt64,
        errors UInt64,
        timeouts UInt64,
        refusals UInt64,
        error_rate Float64,
        complaints UInt64,
        complaint_rate Float64,
        latency_p50_ms Nullable(Float64),
        latency_p95_ms Nullable(Float64),
        latency_p99_ms Nullable(Float64),
        latency_mean_ms Nullable(Float64),
        latency_max_ms Nullable(Float64),
        input_tokens UInt64,
        output_tokens UInt64,
        cost_usd Float64,
        flags Map(String, UInt64),
        flag_rates Map(String, Float64),
        latency_sketch String,
        is_final UInt8,
        version UInt64
    )
    ENGINE = ReplacingMergeTree(version)
    PARTITION BY toYYYYMM(window_start)
    ORDER BY (model, model_version, deployment, window_start)
    TTL toDateTime(window_start) + INTERVAL {metrics_ttl_days} DAY
    """,
    """
    CREATE TABLE IF NOT EXISTS {db}.dead_letters (
        topic LowCardinality(String),
        partition UInt32,
        offset UInt64,
        key String,
        raw String TTL toDateTime(received_at) + INTERVAL {text_ttl_days} DAY,
        raw_bytes UInt32,
        raw_redacted UInt8,
        reason LowCardinality(String),
        error String,
        kafka_timestamp DateTime64(3, 'UTC'),
        received_at DateTime64(3, 'UTC'),
        stored_at DateTime64(3, 'UTC') DEFAULT now64(3)
    )
    ENGINE = ReplacingMergeTree(stored_at)
    PARTITION BY toYYYYMM(received_at)
    ORDER BY (topic, partition, offset)
    TTL toDateTime(received_at) + INTERVAL {metrics_ttl_days} DAY
    """,
]
