"""``incidents`` keeps the highest revision of each incident: ReplacingMergeTree(revision).

Migration 0003 made ``incidents`` a ReplacingMergeTree without a version column, and 0006 made
every change of an incident a new row, its ``revision`` one higher. Without a version column,
a merge (and ``FINAL``) keeps the row inserted last, which is not always the newest revision:
the policy may store revisions out of order (a retried batch, two sink workers), and the
postmortem or ``v_incidents`` would then show an incident open that has resolved.

ClickHouse cannot change a table's engine in place, so the table is rebuilt, in five steps,
each safe to run again whatever step a previous attempt stopped at:

1. drop ``incidents_m0010``, the leftover of an interrupted attempt: either an incomplete copy
   (``incidents`` still holds every row), or, after the exchange, the old table (every row of
   which is already in ``incidents``);
2. create ``incidents_m0010`` with the columns of 0003 and 0006, in their order, and
   ``ReplacingMergeTree(revision)``;
3. copy every part of ``incidents`` into it (``ATTACH PARTITION ... FROM``: hard links, no
   rewrite; the table has one partition, ``all``);
4. ``EXCHANGE`` the two tables, atomically: ``incidents`` (and ``v_incidents``, which reads it
   by name) is now the new table;
5. drop the old one.

Run it with the sink workers of the previous release stopped (``llm-monitor migrate``, or the
first upgraded sink on start): an incident row an old worker inserts between steps 3 and 4 is
dropped with the old table.
"""

from monitor.storage.migrations.m0006_incident_grouping import _TIMELINE

STATEMENTS = [
    "DROP TABLE IF EXISTS {db}.incidents_m0010 SYNC",
    f"""
    CREATE TABLE IF NOT EXISTS {{db}}.incidents_m0010 (
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
        idempotency_key String,
        status LowCardinality(String),
        rules Array(String),
        revision UInt32,
        updated_at DateTime64(3, 'UTC'),
        resolved_at DateTime64(3, 'UTC'),
        timeline {_TIMELINE}
    )
    ENGINE = ReplacingMergeTree(revision)
    ORDER BY incident_id
    """,
    "ALTER TABLE {db}.incidents_m0010 ATTACH PARTITION ID 'all' FROM {db}.incidents",
    "EXCHANGE TABLES {db}.incidents AND {db}.incidents_m0010",
    "DROP TABLE IF EXISTS {db}.incidents_m0010 SYNC",
]
