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
from monitor.pipeline import DeadLetter, EventRow, FindingRow, redact_raw
from monitor.windows import WindowStats

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
