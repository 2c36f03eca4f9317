"""Batched inserts of pipeline output into ClickHouse. Pure conversion plus one insert per table.

Idempotency comes from the table engines (ReplacingMergeTree over deterministic keys), so a
batch that is retried or replayed from Kafka collapses instead of duplicating.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import msgspec
from clickhouse_connect.driver.client import Client

from detectors.pii import PiiScanner
from monitor.ingest.dlq import DeadLetter, DeadLetterRow
from monitor.policy.records import (
    ActionAttempt,
    AuditEntry,
    Decision,
    Incident,
    KillSwitchState,
    PolicyRecords,
)
from monitor.scoring.rows import EventRow, FindingRow
from monitor.storage.columns import columns_of
from monitor.windows.stats import WindowStats

# Every table the writer inserts into, and its row type: the struct declares the columns
# (monitor/storage/columns.py derives names, order and values from it).
TABLES: Final[dict[str, type[msgspec.Struct]]] = {
    "events": EventRow,
    "findings": FindingRow,
    "findings_versions": FindingRow,  # backfills and shadow detectors (migration 0007)
    "windows": WindowStats,
    "dead_letters": DeadLetterRow,
    "decisions": Decision,
    "actions": ActionAttempt,
    "killswitch": KillSwitchState,
    "audit_log": AuditEntry,
    "incidents": Incident,
}

# Evidence: the series' events, flagged findings and windows in the incident's span, as JSON
# rows. Constant statements: every value is a bound parameter.
EVIDENCE_STATEMENTS = (
    "INSERT INTO {db:Identifier}.incident_evidence (incident_id, kind, key, at, row) "
    "SELECT {id:String}, 'event', request_id, event_time, formatRowNoNewline('JSONEachRow', *) "
    "FROM {db:Identifier}.events FINAL "
    "WHERE model = {model:String} AND deployment = {deployment:String} "
    "AND event_time BETWEEN {start:DateTime64(3)} AND {end:DateTime64(3)}",
    "INSERT INTO {db:Identifier}.incident_evidence (incident_id, kind, key, at, row) "
    "SELECT {id:String}, 'finding', concat(detector, ':', request_id), event_time, "
    "formatRowNoNewline('JSONEachRow', *) FROM {db:Identifier}.findings FINAL "
    "WHERE model = {model:String} AND deployment = {deployment:String} "
    "AND flagged AND event_time BETWEEN {start:DateTime64(3)} AND {end:DateTime64(3)}",
    "INSERT INTO {db:Identifier}.incident_evidence (incident_id, kind, key, at, row) "
    "SELECT {id:String}, 'window', concat(model_version, '@', toString(window_start)), "
    "window_start, formatRowNoNewline('JSONEachRow', * EXCEPT (latency_sketch)) "
    "FROM {db:Identifier}.windows FINAL "
    "WHERE model = {model:String} AND deployment = {deployment:String} "
    "AND window_end >= {start:DateTime64(3)} AND window_start <= {end:DateTime64(3)}",
)


def _dt(epoch_ms: int) -> datetime:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC)


def table_rows(table: str, rows: Iterable[msgspec.Struct]) -> list[Sequence[Any]]:
    """The insert values of ``rows`` (of ``TABLES[table]``) in the table's column order: what
    ``insert_rows`` takes. Pure, so callers can build them before they take a lock."""
    return list(map(columns_of(TABLES[table]).values, rows))


class ClickHouseWriter:
    """Inserts rows for one database. Synchronous: callers run it off the event loop."""

    def __init__(self, client: Client, database: str, *, redact: bool = True) -> None:
        self.client = client
        self.database = database
        self.redact = redact
        self._scanner = PiiScanner()

    def _insert(self, table: str, rows: Sequence[msgspec.Struct]) -> int:
        """One insert of ``rows`` (of ``TABLES[table]``) with the columns derived from the type."""
        return self.insert_rows(table, table_rows(table, rows))

    def insert_rows(self, table: str, values: Sequence[Sequence[Any]]) -> int:
        """One insert of values built as ``table_rows`` builds them; nothing is sent for none."""
        if values:
            self.client.insert(
                f"{self.database}.{table}",
                values,
                column_names=list(columns_of(TABLES[table]).names),
            )
        return len(values)

    def write_events(self, rows: Sequence[EventRow]) -> int:
        return self._insert("events", rows)

    def write_findings(self, rows: Sequence[FindingRow]) -> int:
        return self._insert("findings", rows)

    def write_windows(self, stats: Sequence[WindowStats]) -> int:
        return self._insert("windows", stats)

    def write_policy(self, batches: Sequence[PolicyRecords]) -> dict[str, int]:
        """Each record kind into its table; returns rows per table."""
        return {
            "decisions": self._insert("decisions", [d for b in batches for d in b.decisions]),
            "actions": self._insert("actions", [a for b in batches for a in b.attempts]),
            "killswitch": self._insert("killswitch", [k for b in batches for k in b.killswitch]),
            "audit_log": self._insert("audit_log", [a for b in batches for a in b.audit]),
            "incidents": self._insert("incidents", [i for b in batches for i in b.incidents]),
        }

    def copy_evidence(self, incident: Incident) -> int:
        """Copy the incident's events, findings and windows into ``incident_evidence``."""
        params = {
            "db": self.database, "id": incident.incident_id, "model": incident.model,
            "deployment": incident.deployment, "start": _dt(incident.evidence_from_ms),
            "end": _dt(incident.evidence_to_ms),
        }  # fmt: skip
        for statement in EVIDENCE_STATEMENTS:
            self.client.command(statement, parameters=params)
        rows = self.client.query(
            "SELECT count() FROM {db:Identifier}.incident_evidence FINAL "
            "WHERE incident_id = {id:String}",
            parameters=params,
        ).result_rows
        return int(rows[0][0])

    def write_dead_letters(self, letters: Sequence[DeadLetter]) -> int:
        """The stored copies: ``raw`` redacted unless redaction is off."""
        scanner = self._scanner if self.redact else None
        return self._insert("dead_letters", [DeadLetterRow.of(d, scanner) for d in letters])
