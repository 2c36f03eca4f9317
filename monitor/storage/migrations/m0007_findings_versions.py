"""Detector versions side by side: backfilled findings and the backfills' progress.

``findings`` is keyed ``(detector, model, model_version, event_time, request_id)``: without
``detector_version`` in the key, a second version's finding for an event replaces the first
one at the next merge (and under ``FINAL`` at once). So findings of versions that do not run
live go to their own table:

- ``findings_versions``: the columns of ``findings``, keyed with ``detector_version``, so any
  number of versions of one detector can score the same events. ``llm-monitor backfill``
  writes here (monitor/history/). Nothing here feeds windows, the per-minute rollups or the
  policy: those count the live version only.
- ``backfills``: one row per (detector, version, model filter, "" for every model): the range
  start (``since``), the last ``(event_time, request_id)`` scored, and counts. It is the
  backfill's resumable checkpoint, and it tells ``llm-monitor compare`` which events a
  version scored even where it found nothing (detectors return findings only for the events
  they matched). ``revision`` grows with every save; the highest wins.
"""

from monitor.storage.migrations.m0005_ttl_clamped import METRICS, expires

STATEMENTS = [
    f"""
    CREATE TABLE IF NOT EXISTS {{db}}.findings_versions (
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
    ORDER BY (detector, detector_version, model, model_version, event_time, request_id)
    TTL {expires("greatest(event_time, stored_at)", METRICS)}
    """,
    """
    CREATE TABLE IF NOT EXISTS {db}.backfills (
        detector LowCardinality(String),
        detector_version String,
        model String,
        since DateTime64(3, 'UTC'),
        event_time DateTime64(3, 'UTC'),
        request_id String,
        events UInt64,
        findings UInt64,
        flagged UInt64,
        revision UInt64,
        updated_at DateTime64(3, 'UTC')
    )
    ENGINE = ReplacingMergeTree(revision)
    ORDER BY (detector, detector_version, model)
    """,
]
