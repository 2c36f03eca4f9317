"""Batched inserts of pipeline output into ClickHouse. Pure conversion plus one insert per table.

Idempotency comes from the table engines (ReplacingMergeTree over deterministic keys), so a
batch that is retried or replayed from Kafka collapses instead of duplicating.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from clickhouse_connect.driver.client import Client

from detectors.pii import PiiScanner
from monitor.ingest.dlq import DeadLetter, redact_raw
from monitor.policy.records import Incident, PolicyRecords
from monitor.scoring.rows import EventRow, FindingRow
from monitor.windows.stats import WindowStats

EVENT_COLUMNS = (
    "request_id", "event_time", "produced_at", "model", "model_version", "deployment", "route",
    "app", "prompt", "response", "samples", "context", "extra", "latency_ms", "ttft_ms",
    "input_tokens", "output_tokens", "cost_usd", "status", "error_type", "attributes",
    "complaint", "rating", "redacted", "pii_types",
)  # fmt: skip
FINDING_COLUMNS = (
    "request_id", "event_time", "model", "model_version", "deployment", "route", "detector",
    "detector_version", "score", "flagged", "category", "spans", "details",
)  # fmt: skip
WINDOW_COLUMNS = (
    "model", "model_version", "deployment", "window_start", "window_end", "events", "errors",
    "timeouts", "refusals", "error_rate", "complaints", "complaint_rate", "latency_p50_ms",
    "latency_p95_ms", "latency_p99_ms", "latency_mean_ms", "latency_max_ms", "input_tokens",
    "output_tokens", "cost_usd", "flags", "flag_rates", "groups", "bias_disparity", "bias_low",
    "bias_high", "latency_sketch", "is_final", "version",
)  # fmt: skip
DEAD_LETTER_COLUMNS = (
    "topic", "partition", "offset", "key", "raw", "raw_bytes", "raw_redacted", "reason", "error",
    "kafka_timestamp", "received_at",
)  # fmt: skip


DECISION_COLUMNS = (
    "idempotency_key", "decided_at", "rule", "action", "outcome", "model", "model_version",
    "deployment", "observed", "bound_low", "bound_high", "threshold", "n", "window_start",
    "window_end", "windows", "confidence", "dry_run", "detail",
)  # fmt: skip
ACTION_COLUMNS = (
    "idempotency_key", "action", "url", "attempt", "at", "status_code", "error", "latency_ms",
    "outcome",
)  # fmt: skip
KILLSWITCH_COLUMNS = (
    "model", "deployment", "engaged", "reason", "actor", "changed_at", "incident_id",
    "idempotency_key",
)  # fmt: skip
AUDIT_COLUMNS = ("at", "remote", "method", "path", "target", "outcome", "detail")
INCIDENT_COLUMNS = (
    "incident_id", "opened_at", "action", "rule", "model", "model_version", "deployment",
    "evidence_from", "evidence_to", "summary", "idempotency_key",
)  # fmt: skip
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


def event_values(row: EventRow) -> list[Any]:
    return [
        row.request_id, _dt(row.event_time_ms), _dt(row.produced_at_ms), row.model,
        row.model_version, row.deployment, row.route, row.app, row.prompt, row.response,
        row.samples, row.context, row.extra, row.latency_ms, row.ttft_ms, row.input_tokens,
        row.output_tokens, row.cost_usd, row.status, row.error_type, row.attributes,
        int(row.complaint), row.rating, int(row.redacted), row.pii_types,
    ]  # fmt: skip


def finding_values(row: FindingRow) -> list[Any]:
    f = row.finding
    return [
        f.request_id, _dt(row.event_time_ms), row.model, row.model_version, row.deployment,
        row.route, f.detector, f.detector_version, f.score, int(f.flagged), f.category,
        [(s.start, s.end, s.type, s.field) for s in f.spans], f.details,
    ]  # fmt: skip


def window_values(w: WindowStats) -> list[Any]:
    return [
        w.model, w.model_version, w.deployment, _dt(w.window_start_ms), _dt(w.window_end_ms),
        w.events, w.errors, w.timeouts, w.refusals, w.error_rate, w.complaints,
        w.complaint_rate, w.latency_p50_ms, w.latency_p95_ms, w.latency_p99_ms,
        w.latency_mean_ms, w.latency_max_ms, w.input_tokens, w.output_tokens, w.cost_usd,
        w.flags, w.flag_rates, w.groups, w.bias_disparity, w.bias_low, w.bias_high,
        w.latency_sketch, int(w.is_final), w.version,
    ]  # fmt: skip


class ClickHouseWriter:
    """Inserts rows for one database. Synchronous: callers run it off the event loop."""

    def __init__(self, client: Client, database: str, *, redact: bool = True) -> None:
        self.client = client
        self.database = database
        self.redact = redact
        self._scanner = PiiScanner()

    def _insert(self, table: str, rows: list[list[Any]], columns: Sequence[str]) -> int:
        if rows:
            self.client.insert(f"{self.database}.{table}", rows, column_names=list(columns))
        return len(rows)

    def write_events(self, rows: Sequence[EventRow]) -> int:
        return self._insert("events", [event_values(r) for r in rows], EVENT_COLUMNS)

    def write_findings(self, rows: Sequence[FindingRow]) -> int:
        return self._insert("findings", [finding_values(r) for r in rows], FINDING_COLUMNS)

    def write_windows(self, stats: Sequence[WindowStats]) -> int:
        return self._insert("windows", [window_values(w) for w in stats], WINDOW_COLUMNS)

    def write_policy(self, batches: Sequence[PolicyRecords]) -> dict[str, int]:
        """Each record kind into its table; returns rows per table."""
        decisions = [d for b in batches for d in b.decisions]
        attempts = [a for b in batches for a in b.attempts]
        states = [k for b in batches for k in b.killswitch]
        audit = [a for b in batches for a in b.audit]
        incidents = [i for b in batches for i in b.incidents]
        return {
            "decisions": self._insert("decisions", [[
                d.idempotency_key, _dt(d.decided_at_ms), d.rule, d.action, d.outcome, d.model,
                d.model_version, d.deployment, d.observed, d.bound_low, d.bound_high,
                d.threshold, d.n, _dt(d.window_start_ms), _dt(d.window_end_ms), d.windows,
                d.confidence, int(d.dry_run), d.detail,
            ] for d in decisions], DECISION_COLUMNS),
            "actions": self._insert("actions", [[
                a.idempotency_key, a.action, a.url, a.attempt, _dt(a.at_ms), a.status_code,
                a.error, a.latency_ms, a.outcome,
            ] for a in attempts], ACTION_COLUMNS),
            "killswitch": self._insert("killswitch", [[
                k.model, k.deployment, int(k.engaged), k.reason, k.actor, _dt(k.changed_at_ms),
                k.incident_id, k.idempotency_key,
            ] for k in states], KILLSWITCH_COLUMNS),
            "audit_log": self._insert("audit_log", [[
                _dt(a.at_ms), a.remote, a.method, a.path, a.target, a.outcome,
                a.detail,
            ] for a in audit], AUDIT_COLUMNS),
            "incidents": self._insert("incidents", [[
                i.incident_id, _dt(i.opened_at_ms), i.action, i.rule, i.model, i.model_version,
                i.deployment, _dt(i.evidence_from_ms), _dt(i.evidence_to_ms), i.summary,
                i.idempotency_key,
            ] for i in incidents], INCIDENT_COLUMNS),
        }  # fmt: skip

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
        rows = []
        for d in letters:
            raw = (
                redact_raw(d.raw, self._scanner)
                if self.redact
                else d.raw.decode("utf-8", errors="replace")
            )
            key = (d.key or b"").decode("utf-8", errors="replace")
            rows.append([
                d.topic, d.partition, d.offset, key, raw, len(d.raw), int(self.redact), d.reason,
                d.error, _dt(d.kafka_timestamp_ms), _dt(d.received_at_ms),
            ])  # fmt: skip
        return self._insert("dead_letters", rows, DEAD_LETTER_COLUMNS)
