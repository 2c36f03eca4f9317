-- llm-monitor schema for ClickHouse cluster 'llm_monitor' (Replicated + Distributed).
-- Rendered by `llm-monitor deploy clickhouse-cluster` from the migrations; do not edit.
-- Needs macros {shard} and {replica} and the cluster in remote_servers (remote-servers.xml).

CREATE DATABASE IF NOT EXISTS llm_monitor ON CLUSTER llm_monitor;

CREATE TABLE IF NOT EXISTS llm_monitor.events_local ON CLUSTER llm_monitor ( request_id String, event_time DateTime64(3, 'UTC'), produced_at DateTime64(3, 'UTC'), stored_at DateTime64(3, 'UTC') DEFAULT now64(3), model LowCardinality(String), model_version LowCardinality(String), deployment LowCardinality(String), route LowCardinality(String), app LowCardinality(String), prompt String TTL toDateTime(event_time) + INTERVAL 30 DAY, response String TTL toDateTime(event_time) + INTERVAL 30 DAY, samples Array(String) TTL toDateTime(event_time) + INTERVAL 30 DAY, context Array(String) TTL toDateTime(event_time) + INTERVAL 30 DAY, extra Map(String, String) TTL toDateTime(event_time) + INTERVAL 30 DAY, latency_ms Nullable(Float64), ttft_ms Nullable(Float64), input_tokens Nullable(UInt32), output_tokens Nullable(UInt32), cost_usd Nullable(Float64), status LowCardinality(String), error_type LowCardinality(String), attributes Map(String, String), complaint UInt8, rating Nullable(Float64), redacted UInt8, pii_types Array(LowCardinality(String)) ) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/events_local', '{replica}', stored_at) PARTITION BY toYYYYMM(event_time) ORDER BY (model, model_version, deployment, event_time, request_id) TTL toDateTime(event_time) + INTERVAL 400 DAY;

CREATE TABLE IF NOT EXISTS llm_monitor.events ON CLUSTER llm_monitor AS llm_monitor.events_local ENGINE = Distributed(llm_monitor, llm_monitor, events_local, cityHash64(request_id));

CREATE TABLE IF NOT EXISTS llm_monitor.findings_local ON CLUSTER llm_monitor ( request_id String, event_time DateTime64(3, 'UTC'), stored_at DateTime64(3, 'UTC') DEFAULT now64(3), model LowCardinality(String), model_version LowCardinality(String), deployment LowCardinality(String), route LowCardinality(String), detector LowCardinality(String), detector_version LowCardinality(String), score Float32, flagged UInt8, category LowCardinality(String), spans Array(Tuple(start UInt32, end UInt32, type LowCardinality(String), field LowCardinality(String))), details Map(String, String) ) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/findings_local', '{replica}', stored_at) PARTITION BY toYYYYMM(event_time) ORDER BY (detector, model, model_version, event_time, request_id) TTL toDateTime(event_time) + INTERVAL 400 DAY;

CREATE TABLE IF NOT EXISTS llm_monitor.findings ON CLUSTER llm_monitor AS llm_monitor.findings_local ENGINE = Distributed(llm_monitor, llm_monitor, findings_local, cityHash64(request_id));

CREATE TABLE IF NOT EXISTS llm_monitor.windows_local ON CLUSTER llm_monitor ( model LowCardinality(String), model_version LowCardinality(String), deployment LowCardinality(String), window_start DateTime64(3, 'UTC'), window_end DateTime64(3, 'UTC'), events UInt64, errors UInt64, timeouts UInt64, refusals UInt64, error_rate Float64, complaints UInt64, complaint_rate Float64, latency_p50_ms Nullable(Float64), latency_p95_ms Nullable(Float64), latency_p99_ms Nullable(Float64), latency_mean_ms Nullable(Float64), latency_max_ms Nullable(Float64), input_tokens UInt64, output_tokens UInt64, cost_usd Float64, flags Map(String, UInt64), flag_rates Map(String, Float64), latency_sketch String, is_final UInt8, version UInt64 ) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/windows_local', '{replica}', version) PARTITION BY toYYYYMM(window_start) ORDER BY (model, model_version, deployment, window_start) TTL toDateTime(window_start) + INTERVAL 400 DAY;

CREATE TABLE IF NOT EXISTS llm_monitor.windows ON CLUSTER llm_monitor AS llm_monitor.windows_local ENGINE = Distributed(llm_monitor, llm_monitor, windows_local, cityHash64(model, model_version, deployment));

CREATE TABLE IF NOT EXISTS llm_monitor.dead_letters_local ON CLUSTER llm_monitor ( topic LowCardinality(String), partition UInt32, offset UInt64, key String, raw String TTL toDateTime(received_at) + INTERVAL 30 DAY, raw_bytes UInt32, raw_redacted UInt8, reason LowCardinality(String), error String, kafka_timestamp DateTime64(3, 'UTC'), received_at DateTime64(3, 'UTC'), stored_at DateTime64(3, 'UTC') DEFAULT now64(3) ) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/dead_letters_local', '{replica}', stored_at) PARTITION BY toYYYYMM(received_at) ORDER BY (topic, partition, offset) TTL toDateTime(received_at) + INTERVAL 400 DAY;

CREATE TABLE IF NOT EXISTS llm_monitor.dead_letters ON CLUSTER llm_monitor AS llm_monitor.dead_letters_local ENGINE = Distributed(llm_monitor, llm_monitor, dead_letters_local, cityHash64(topic, partition, offset));

ALTER TABLE llm_monitor.windows_local ON CLUSTER llm_monitor ADD COLUMN IF NOT EXISTS groups Map(String, Array(Float64)) AFTER flag_rates, ADD COLUMN IF NOT EXISTS bias_disparity Map(String, Float64) AFTER groups, ADD COLUMN IF NOT EXISTS bias_low Map(String, Float64) AFTER bias_disparity, ADD COLUMN IF NOT EXISTS bias_high Map(String, Float64) AFTER bias_low;

ALTER TABLE llm_monitor.windows ON CLUSTER llm_monitor ADD COLUMN IF NOT EXISTS groups Map(String, Array(Float64)) AFTER flag_rates, ADD COLUMN IF NOT EXISTS bias_disparity Map(String, Float64) AFTER groups, ADD COLUMN IF NOT EXISTS bias_low Map(String, Float64) AFTER bias_disparity, ADD COLUMN IF NOT EXISTS bias_high Map(String, Float64) AFTER bias_low;

CREATE TABLE IF NOT EXISTS llm_monitor.decisions_local ON CLUSTER llm_monitor ( idempotency_key String, decided_at DateTime64(3, 'UTC'), rule LowCardinality(String), action LowCardinality(String), outcome LowCardinality(String), model LowCardinality(String), model_version LowCardinality(String), deployment LowCardinality(String), observed Float64, bound_low Float64, bound_high Float64, threshold Float64, n UInt64, window_start DateTime64(3, 'UTC'), window_end DateTime64(3, 'UTC'), windows UInt16, confidence Float64, dry_run UInt8, detail String ) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/decisions_local', '{replica}', decided_at) PARTITION BY toYYYYMM(decided_at) ORDER BY (model, deployment, rule, idempotency_key, outcome, window_start) TTL toDateTime(decided_at) + INTERVAL 400 DAY;

CREATE TABLE IF NOT EXISTS llm_monitor.decisions ON CLUSTER llm_monitor AS llm_monitor.decisions_local ENGINE = Distributed(llm_monitor, llm_monitor, decisions_local, cityHash64(model, deployment));

CREATE TABLE IF NOT EXISTS llm_monitor.actions_local ON CLUSTER llm_monitor ( idempotency_key String, action LowCardinality(String), url String, attempt UInt32, at DateTime64(3, 'UTC'), status_code UInt16, error String, latency_ms Float64, outcome LowCardinality(String) ) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/actions_local', '{replica}', at) PARTITION BY toYYYYMM(at) ORDER BY (idempotency_key, url, attempt) TTL toDateTime(at) + INTERVAL 400 DAY;

CREATE TABLE IF NOT EXISTS llm_monitor.actions ON CLUSTER llm_monitor AS llm_monitor.actions_local ENGINE = Distributed(llm_monitor, llm_monitor, actions_local, cityHash64(idempotency_key));

CREATE TABLE IF NOT EXISTS llm_monitor.killswitch_local ON CLUSTER llm_monitor ( model LowCardinality(String), deployment LowCardinality(String), engaged UInt8, reason String, actor LowCardinality(String), changed_at DateTime64(3, 'UTC'), incident_id String, idempotency_key String ) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/killswitch_local', '{replica}') ORDER BY (model, deployment, changed_at);

CREATE TABLE IF NOT EXISTS llm_monitor.killswitch ON CLUSTER llm_monitor AS llm_monitor.killswitch_local ENGINE = Distributed(llm_monitor, llm_monitor, killswitch_local, cityHash64(model, deployment));

CREATE TABLE IF NOT EXISTS llm_monitor.audit_log_local ON CLUSTER llm_monitor ( at DateTime64(3, 'UTC'), remote String, method LowCardinality(String), path String, target String, outcome LowCardinality(String), detail String ) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/audit_log_local', '{replica}') PARTITION BY toYYYYMM(at) ORDER BY (at, path, remote, target, outcome);

CREATE TABLE IF NOT EXISTS llm_monitor.audit_log ON CLUSTER llm_monitor AS llm_monitor.audit_log_local ENGINE = Distributed(llm_monitor, llm_monitor, audit_log_local, cityHash64(at, path, remote));

CREATE TABLE IF NOT EXISTS llm_monitor.incidents_local ON CLUSTER llm_monitor ( incident_id String, opened_at DateTime64(3, 'UTC'), action LowCardinality(String), rule LowCardinality(String), model LowCardinality(String), model_version LowCardinality(String), deployment LowCardinality(String), evidence_from DateTime64(3, 'UTC'), evidence_to DateTime64(3, 'UTC'), summary String, idempotency_key String ) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/incidents_local', '{replica}') ORDER BY incident_id;

CREATE TABLE IF NOT EXISTS llm_monitor.incidents ON CLUSTER llm_monitor AS llm_monitor.incidents_local ENGINE = Distributed(llm_monitor, llm_monitor, incidents_local, cityHash64(incident_id));

CREATE TABLE IF NOT EXISTS llm_monitor.incident_evidence_local ON CLUSTER llm_monitor ( incident_id String, kind LowCardinality(String), key String, at DateTime64(3, 'UTC'), row String ) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/incident_evidence_local', '{replica}') ORDER BY (incident_id, kind, key);

CREATE TABLE IF NOT EXISTS llm_monitor.incident_evidence ON CLUSTER llm_monitor AS llm_monitor.incident_evidence_local ENGINE = Distributed(llm_monitor, llm_monitor, incident_evidence_local, cityHash64(incident_id));

CREATE TABLE IF NOT EXISTS llm_monitor.events_minute_local ON CLUSTER llm_monitor ( minute DateTime('UTC'), model LowCardinality(String), model_version LowCardinality(String), deployment LowCardinality(String), events SimpleAggregateFunction(sum, UInt64), errors SimpleAggregateFunction(sum, UInt64), complaints SimpleAggregateFunction(sum, UInt64), input_tokens SimpleAggregateFunction(sum, UInt64), output_tokens SimpleAggregateFunction(sum, UInt64), cost_usd SimpleAggregateFunction(sum, Float64), latency AggregateFunction(quantilesIf(0.5, 0.95, 0.99), Float64, UInt8) ) ENGINE = ReplicatedAggregatingMergeTree('/clickhouse/tables/{shard}/{database}/events_minute_local', '{replica}') PARTITION BY toYYYYMM(minute) ORDER BY (model, model_version, deployment, minute) TTL minute + INTERVAL 400 DAY;

CREATE TABLE IF NOT EXISTS llm_monitor.events_minute ON CLUSTER llm_monitor AS llm_monitor.events_minute_local ENGINE = Distributed(llm_monitor, llm_monitor, events_minute_local, cityHash64(model, model_version, deployment));

CREATE MATERIALIZED VIEW IF NOT EXISTS llm_monitor.events_minute_mv ON CLUSTER llm_monitor TO llm_monitor.events_minute_local AS SELECT toStartOfMinute(event_time) AS minute, model, model_version, deployment, toUInt64(count()) AS events, toUInt64(countIf(status IN ('error', 'timeout'))) AS errors, toUInt64(sum(complaint)) AS complaints, toUInt64(sum(ifNull(input_tokens, 0))) AS input_tokens, toUInt64(sum(ifNull(output_tokens, 0))) AS output_tokens, sum(ifNull(cost_usd, 0)) AS cost_usd, quantilesIfState(0.5, 0.95, 0.99)(ifNull(latency_ms, 0), toUInt8(isNotNull(latency_ms))) AS latency FROM llm_monitor.events_local GROUP BY minute, model, model_version, deployment;

CREATE VIEW IF NOT EXISTS llm_monitor.v_minute_by_version ON CLUSTER llm_monitor AS SELECT *, if(events = 0, 0, errors / events) AS error_rate FROM ( SELECT minute, model, model_version, deployment, sum(m.events) AS events, sum(m.errors) AS errors, sum(m.complaints) AS complaints, sum(m.input_tokens) AS input_tokens, sum(m.output_tokens) AS output_tokens, sum(m.cost_usd) AS cost_usd, quantilesIfMerge(0.5, 0.95, 0.99)(m.latency) AS latency_p50_p95_p99_ms FROM llm_monitor.events_minute AS m GROUP BY minute, model, model_version, deployment );

CREATE TABLE IF NOT EXISTS llm_monitor.findings_minute_local ON CLUSTER llm_monitor ( minute DateTime('UTC'), model LowCardinality(String), model_version LowCardinality(String), deployment LowCardinality(String), detector LowCardinality(String), category LowCardinality(String), scored UInt64, flagged UInt64 ) ENGINE = ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/{database}/findings_minute_local', '{replica}') PARTITION BY toYYYYMM(minute) ORDER BY (detector, model, model_version, deployment, category, minute) TTL minute + INTERVAL 400 DAY;

CREATE TABLE IF NOT EXISTS llm_monitor.findings_minute ON CLUSTER llm_monitor AS llm_monitor.findings_minute_local ENGINE = Distributed(llm_monitor, llm_monitor, findings_minute_local, cityHash64(model, model_version, deployment));

CREATE MATERIALIZED VIEW IF NOT EXISTS llm_monitor.findings_minute_mv ON CLUSTER llm_monitor TO llm_monitor.findings_minute_local AS SELECT toStartOfMinute(event_time) AS minute, model, model_version, deployment, detector, category, toUInt64(count()) AS scored, toUInt64(countIf(flagged)) AS flagged FROM llm_monitor.findings_local GROUP BY minute, model, model_version, deployment, detector, category;

CREATE VIEW IF NOT EXISTS llm_monitor.v_pii_leak_ledger ON CLUSTER llm_monitor AS SELECT event_time, request_id, model, model_version, deployment, route, arrayJoin(splitByChar(',', details['leaked_types'])) AS type, length(spans) AS spans FROM llm_monitor.findings FINAL WHERE detector = 'pii' AND category = 'leak' AND details['leaked_types'] != '';

CREATE VIEW IF NOT EXISTS llm_monitor.v_incidents ON CLUSTER llm_monitor AS SELECT i.incident_id AS incident_id, i.opened_at AS opened_at, i.action AS action, i.rule AS rule, i.model AS model, i.model_version AS model_version, i.deployment AS deployment, i.summary AS summary, ifNull(e.events, 0) AS evidence_events, ifNull(e.findings, 0) AS evidence_findings, ifNull(e.windows, 0) AS evidence_windows, ifNull(a.delivered, 0) AS webhooks_delivered, ifNull(a.failed, 0) AS webhooks_failed FROM llm_monitor.incidents AS i FINAL LEFT JOIN ( SELECT incident_id, countIf(kind = 'event') AS events, countIf(kind = 'finding') AS findings, countIf(kind = 'window') AS windows FROM llm_monitor.incident_evidence FINAL GROUP BY incident_id ) AS e ON e.incident_id = i.incident_id LEFT JOIN ( SELECT idempotency_key, countIf(outcome = 'delivered') AS delivered, countIf(outcome = 'gave_up') AS failed FROM llm_monitor.actions FINAL GROUP BY idempotency_key ) AS a ON a.idempotency_key = i.idempotency_key;

CREATE VIEW IF NOT EXISTS llm_monitor.v_detector_agreement ON CLUSTER llm_monitor AS SELECT pair.1 AS detector_a, pair.2 AS detector_b, countIf(has(flagged, pair.1) AND has(flagged, pair.2)) AS both_flagged, countIf(has(flagged, pair.1) OR has(flagged, pair.2)) AS either_flagged, if(either_flagged = 0, 0, both_flagged / either_flagged) AS jaccard, count() AS events_scored_by_both FROM ( SELECT request_id, groupUniqArray(detector) AS scored, groupUniqArrayIf(detector, flagged) AS flagged FROM llm_monitor.findings FINAL WHERE NOT startsWith(request_id, 'window:') GROUP BY request_id ) ARRAY JOIN arrayFilter( p -> p.1 < p.2, arrayFlatten(arrayMap(a -> arrayMap(b -> (a, b), scored), scored)) ) AS pair GROUP BY detector_a, detector_b;

ALTER TABLE llm_monitor.events_local ON CLUSTER llm_monitor MODIFY COLUMN prompt TTL toDateTime(least(greatest(greatest(event_time, stored_at) + INTERVAL 30 DAY, toDateTime64('1970-01-01 00:00:00', 3, 'UTC')), toDateTime64('2106-02-07 06:28:15', 3, 'UTC')));

ALTER TABLE llm_monitor.events_local ON CLUSTER llm_monitor MODIFY COLUMN response TTL toDateTime(least(greatest(greatest(event_time, stored_at) + INTERVAL 30 DAY, toDateTime64('1970-01-01 00:00:00', 3, 'UTC')), toDateTime64('2106-02-07 06:28:15', 3, 'UTC')));

ALTER TABLE llm_monitor.events_local ON CLUSTER llm_monitor MODIFY COLUMN samples TTL toDateTime(least(greatest(greatest(event_time, stored_at) + INTERVAL 30 DAY, toDateTime64('1970-01-01 00:00:00', 3, 'UTC')), toDateTime64('2106-02-07 06:28:15', 3, 'UTC')));

ALTER TABLE llm_monitor.events_local ON CLUSTER llm_monitor MODIFY COLUMN context TTL toDateTime(least(greatest(greatest(event_time, stored_at) + INTERVAL 30 DAY, toDateTime64('1970-01-01 00:00:00', 3, 'UTC')), toDateTime64('2106-02-07 06:28:15', 3, 'UTC')));

ALTER TABLE llm_monitor.events_local ON CLUSTER llm_monitor MODIFY COLUMN extra TTL toDateTime(least(greatest(greatest(event_time, stored_at) + INTERVAL 30 DAY, toDateTime64('1970-01-01 00:00:00', 3, 'UTC')), toDateTime64('2106-02-07 06:28:15', 3, 'UTC')));

ALTER TABLE llm_monitor.events_local ON CLUSTER llm_monitor MODIFY TTL toDateTime(least(greatest(greatest(event_time, stored_at) + INTERVAL 400 DAY, toDateTime64('1970-01-01 00:00:00', 3, 'UTC')), toDateTime64('2106-02-07 06:28:15', 3, 'UTC')));

ALTER TABLE llm_monitor.findings_local ON CLUSTER llm_monitor MODIFY TTL toDateTime(least(greatest(greatest(event_time, stored_at) + INTERVAL 400 DAY, toDateTime64('1970-01-01 00:00:00', 3, 'UTC')), toDateTime64('2106-02-07 06:28:15', 3, 'UTC')));

ALTER TABLE llm_monitor.windows_local ON CLUSTER llm_monitor ADD COLUMN IF NOT EXISTS stored_at DateTime64(3, 'UTC') DEFAULT now64(3);

ALTER TABLE llm_monitor.windows ON CLUSTER llm_monitor ADD COLUMN IF NOT EXISTS stored_at DateTime64(3, 'UTC') DEFAULT now64(3);

ALTER TABLE llm_monitor.windows_local ON CLUSTER llm_monitor MODIFY TTL toDateTime(least(greatest(greatest(window_start, stored_at) + INTERVAL 400 DAY, toDateTime64('1970-01-01 00:00:00', 3, 'UTC')), toDateTime64('2106-02-07 06:28:15', 3, 'UTC')));

ALTER TABLE llm_monitor.dead_letters_local ON CLUSTER llm_monitor MODIFY COLUMN raw TTL toDateTime(least(greatest(greatest(received_at, stored_at) + INTERVAL 30 DAY, toDateTime64('1970-01-01 00:00:00', 3, 'UTC')), toDateTime64('2106-02-07 06:28:15', 3, 'UTC')));

ALTER TABLE llm_monitor.dead_letters_local ON CLUSTER llm_monitor MODIFY TTL toDateTime(least(greatest(greatest(received_at, stored_at) + INTERVAL 400 DAY, toDateTime64('1970-01-01 00:00:00', 3, 'UTC')), toDateTime64('2106-02-07 06:28:15', 3, 'UTC')));

ALTER TABLE llm_monitor.decisions_local ON CLUSTER llm_monitor MODIFY TTL toDateTime(least(greatest(decided_at + INTERVAL 400 DAY, toDateTime64('1970-01-01 00:00:00', 3, 'UTC')), toDateTime64('2106-02-07 06:28:15', 3, 'UTC')));

ALTER TABLE llm_monitor.actions_local ON CLUSTER llm_monitor MODIFY TTL toDateTime(least(greatest(at + INTERVAL 400 DAY, toDateTime64('1970-01-01 00:00:00', 3, 'UTC')), toDateTime64('2106-02-07 06:28:15', 3, 'UTC')));

ALTER TABLE llm_monitor.events_minute_local ON CLUSTER llm_monitor MODIFY TTL toDateTime(least(greatest(toDateTime64(minute, 3, 'UTC') + INTERVAL 400 DAY, toDateTime64('1970-01-01 00:00:00', 3, 'UTC')), toDateTime64('2106-02-07 06:28:15', 3, 'UTC')));

ALTER TABLE llm_monitor.findings_minute_local ON CLUSTER llm_monitor MODIFY TTL toDateTime(least(greatest(toDateTime64(minute, 3, 'UTC') + INTERVAL 400 DAY, toDateTime64('1970-01-01 00:00:00', 3, 'UTC')), toDateTime64('2106-02-07 06:28:15', 3, 'UTC')));

ALTER TABLE llm_monitor.incidents_local ON CLUSTER llm_monitor ADD COLUMN IF NOT EXISTS status LowCardinality(String), ADD COLUMN IF NOT EXISTS rules Array(String), ADD COLUMN IF NOT EXISTS revision UInt32, ADD COLUMN IF NOT EXISTS updated_at DateTime64(3, 'UTC'), ADD COLUMN IF NOT EXISTS resolved_at DateTime64(3, 'UTC'), ADD COLUMN IF NOT EXISTS timeline Array(Tuple(at_ms Int64, kind String, rule String, model_version String, action String, idempotency_key String, detail String));

ALTER TABLE llm_monitor.incidents ON CLUSTER llm_monitor ADD COLUMN IF NOT EXISTS status LowCardinality(String), ADD COLUMN IF NOT EXISTS rules Array(String), ADD COLUMN IF NOT EXISTS revision UInt32, ADD COLUMN IF NOT EXISTS updated_at DateTime64(3, 'UTC'), ADD COLUMN IF NOT EXISTS resolved_at DateTime64(3, 'UTC'), ADD COLUMN IF NOT EXISTS timeline Array(Tuple(at_ms Int64, kind String, rule String, model_version String, action String, idempotency_key String, detail String));

ALTER TABLE llm_monitor.decisions_local ON CLUSTER llm_monitor ADD COLUMN IF NOT EXISTS incident_id String;

ALTER TABLE llm_monitor.decisions ON CLUSTER llm_monitor ADD COLUMN IF NOT EXISTS incident_id String;

CREATE TABLE IF NOT EXISTS llm_monitor.findings_versions_local ON CLUSTER llm_monitor ( request_id String, event_time DateTime64(3, 'UTC'), stored_at DateTime64(3, 'UTC') DEFAULT now64(3), model LowCardinality(String), model_version LowCardinality(String), deployment LowCardinality(String), route LowCardinality(String), detector LowCardinality(String), detector_version LowCardinality(String), score Float32, flagged UInt8, category LowCardinality(String), spans Array(Tuple(start UInt32, end UInt32, type LowCardinality(String), field LowCardinality(String))), details Map(String, String) ) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/findings_versions_local', '{replica}', stored_at) PARTITION BY toYYYYMM(event_time) ORDER BY (detector, detector_version, model, model_version, event_time, request_id) TTL toDateTime(least(greatest(greatest(event_time, stored_at) + INTERVAL 400 DAY, toDateTime64('1970-01-01 00:00:00', 3, 'UTC')), toDateTime64('2106-02-07 06:28:15', 3, 'UTC')));

CREATE TABLE IF NOT EXISTS llm_monitor.findings_versions ON CLUSTER llm_monitor AS llm_monitor.findings_versions_local ENGINE = Distributed(llm_monitor, llm_monitor, findings_versions_local, cityHash64(request_id));

CREATE TABLE IF NOT EXISTS llm_monitor.backfills_local ON CLUSTER llm_monitor ( detector LowCardinality(String), detector_version String, model String, since DateTime64(3, 'UTC'), event_time DateTime64(3, 'UTC'), request_id String, events UInt64, findings UInt64, flagged UInt64, revision UInt64, updated_at DateTime64(3, 'UTC') ) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/backfills_local', '{replica}', revision) ORDER BY (detector, detector_version, model);

CREATE TABLE IF NOT EXISTS llm_monitor.backfills ON CLUSTER llm_monitor AS llm_monitor.backfills_local ENGINE = Distributed(llm_monitor, llm_monitor, backfills_local, cityHash64(detector, detector_version, model));

ALTER TABLE llm_monitor.windows_local ON CLUSTER llm_monitor ADD COLUMN IF NOT EXISTS scored Map(String, UInt64) AFTER version, ADD COLUMN IF NOT EXISTS sample_rates Map(String, Float64) AFTER scored;

ALTER TABLE llm_monitor.windows ON CLUSTER llm_monitor ADD COLUMN IF NOT EXISTS scored Map(String, UInt64) AFTER version, ADD COLUMN IF NOT EXISTS sample_rates Map(String, Float64) AFTER scored;

CREATE VIEW IF NOT EXISTS llm_monitor.v_judge_pairwise_windows ON CLUSTER llm_monitor AS SELECT event_time AS window_start, fromUnixTimestamp64Milli(toInt64OrZero(details['window_end_ms']), 'UTC') AS window_end, model, model_version AS canary_version, deployment, details['stable_versions'] AS stable_versions, score AS win_rate, toFloat64OrZero(details['low']) AS win_rate_low, toFloat64OrZero(details['high']) AS win_rate_high, toUInt32OrZero(details['n']) AS pairs, toUInt32OrZero(details['wins']) AS wins, toUInt32OrZero(details['ties']) AS ties, toUInt32OrZero(details['losses']) AS losses, toFloat64OrZero(details['confidence']) AS confidence, details['gate'] AS gate, toFloat64OrZero(details['gate_threshold']) AS gate_threshold, details['judge_model'] AS judge_model, details['judge_family'] AS judge_family, detector_version AS rubric_version FROM llm_monitor.findings FINAL WHERE detector = 'judge_pairwise' AND category = 'window';

CREATE VIEW IF NOT EXISTS llm_monitor.v_judge_grades ON CLUSTER llm_monitor AS SELECT event_time, request_id, model, model_version, deployment, route, category = 'parse_error' AS parse_error, toUInt8OrZero(details['grade']) AS grade, score, flagged, details['judge_model'] AS judge_model, details['judge_family'] AS judge_family, details['model_family'] AS model_family, details['same_family'] = 'true' AS same_family, toFloat64OrZero(details['cost_usd']) AS cost_usd, detector_version AS rubric_version FROM llm_monitor.findings FINAL WHERE detector = 'judge';

DROP TABLE IF EXISTS llm_monitor.incidents_m0010 ON CLUSTER llm_monitor SYNC;

DROP TABLE IF EXISTS llm_monitor.incidents_m0010_local ON CLUSTER llm_monitor SYNC;

CREATE TABLE IF NOT EXISTS llm_monitor.incidents_m0010_local ON CLUSTER llm_monitor ( incident_id String, opened_at DateTime64(3, 'UTC'), action LowCardinality(String), rule LowCardinality(String), model LowCardinality(String), model_version LowCardinality(String), deployment LowCardinality(String), evidence_from DateTime64(3, 'UTC'), evidence_to DateTime64(3, 'UTC'), summary String, idempotency_key String, status LowCardinality(String), rules Array(String), revision UInt32, updated_at DateTime64(3, 'UTC'), resolved_at DateTime64(3, 'UTC'), timeline Array(Tuple(at_ms Int64, kind String, rule String, model_version String, action String, idempotency_key String, detail String)) ) ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/incidents_m0010_local/{uuid}', '{replica}', revision) ORDER BY incident_id;

CREATE TABLE IF NOT EXISTS llm_monitor.incidents_m0010 ON CLUSTER llm_monitor AS llm_monitor.incidents_m0010_local ENGINE = Distributed(llm_monitor, llm_monitor, incidents_m0010_local, cityHash64(incident_id));

ALTER TABLE llm_monitor.incidents_m0010_local ON CLUSTER llm_monitor ATTACH PARTITION ID 'all' FROM llm_monitor.incidents_local;

EXCHANGE TABLES llm_monitor.incidents_local AND llm_monitor.incidents_m0010_local ON CLUSTER llm_monitor;

DROP TABLE IF EXISTS llm_monitor.incidents_m0010 ON CLUSTER llm_monitor SYNC;

DROP TABLE IF EXISTS llm_monitor.incidents_m0010_local ON CLUSTER llm_monitor SYNC;
