"""Findings out as OpenTelemetry log records: the GenAI convention for evaluation results.

Each finding of a ``ScoredBatch`` (monitor/scoring/rows.py) becomes one ``LogRecord`` of the
event ``gen_ai.evaluation.result``: ``gen_ai.evaluation.name`` (the detector),
``gen_ai.evaluation.score.value`` (its score, in [0, 1]), ``gen_ai.evaluation.score.label``
(``fail`` when flagged, else ``pass``) and ``gen_ai.evaluation.explanation`` (from the
finding's details). The findings of one event go into one ``ExportLogsServiceRequest``, the
unit the OpenTelemetry Collector's Kafka receiver reads per record, keyed by the event's trace
id when it has one, else by its request id.

**Parenting.** Events read from spans (monitor/ingest/otlp.py) have the trace id and the span
id as their request id (48 hex characters): those records carry them in ``trace_id`` and
``span_id``, so a backend shows the verdict on the span it judges. Other events have no span:
the record names the call by ``gen_ai.response.id`` instead, as the convention asks. Every
record carries ``llm_monitor.request_id``, the key of our own ``events`` and ``findings`` rows.

Everything here is pure: bytes in, records out; producing them is streams/evaluations.py's.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable, Iterable
from typing import Final

import msgspec
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.logs.v1.logs_pb2 import SeverityNumber as _Severity
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from monitor.scoring.rows import FindingRow, ScoredBatch

EVENT_NAME: Final = "gen_ai.evaluation.result"
EVALUATION_NAME: Final = "gen_ai.evaluation.name"
SCORE_VALUE: Final = "gen_ai.evaluation.score.value"
SCORE_LABEL: Final = "gen_ai.evaluation.score.label"
EXPLANATION: Final = "gen_ai.evaluation.explanation"
REQUEST_MODEL: Final = "gen_ai.request.model"
RESPONSE_ID: Final = "gen_ai.response.id"
ERROR_TYPE: Final = "error.type"
# The event's name as an attribute too: receivers and backends older than the LogRecord's
# ``event_name`` field (OTLP 1.5) only see this one.
EVENT_NAME_ATTRIBUTE: Final = "event.name"
LABEL_FLAGGED: Final = "fail"
LABEL_CLEAR: Final = "pass"
SERVICE_NAME: Final = "llm-monitor"
SCOPE_NAME: Final = "llm_monitor.evaluations"
TRACE_ID_HEX: Final = 32
SPAN_ID_HEX: Final = 16
MS: Final = 1_000_000  # nanoseconds
_SEVERITY_INFO: Final = _Severity.SEVERITY_NUMBER_INFO
_HAS_EVENT_NAME: Final = "event_name" in LogRecord.DESCRIPTOR.fields_by_name
_scored = msgspec.msgpack.Decoder(ScoredBatch)


class SpanContext(msgspec.Struct, frozen=True):
    """The span an event was read from: trace id (16 bytes) and span id (8 bytes)."""

    trace_id: bytes
    span_id: bytes

    @property
    def trace_hex(self) -> str:
        return self.trace_id.hex()


class EvaluationRecord(msgspec.Struct, frozen=True):
    """One Kafka record of the logs topic: one event's findings as an OTLP logs request."""

    key: bytes
    value: bytes  # a serialized ExportLogsServiceRequest
    findings: int


def span_context(request_id: str) -> SpanContext | None:
    """The trace and span ids of a request id made from a span (32 + 16 hex characters), or
    None for any other request id (and for the all-zero ids OpenTelemetry calls invalid)."""
    if len(request_id) != TRACE_ID_HEX + SPAN_ID_HEX:
        return None
    try:
        raw = binascii.unhexlify(request_id)
    except (binascii.Error, ValueError):
        return None
    trace_id, span_id = raw[: TRACE_ID_HEX // 2], raw[TRACE_ID_HEX // 2 :]
    if not any(trace_id) or not any(span_id):
        return None
    return SpanContext(trace_id, span_id)


def explanation(details: dict[str, str]) -> str:
    """Why the detector concluded what it did: the judge's own explanation when it gave one,
    else the finding's details as ``name=value`` pairs, sorted."""
    if details.get("explanation"):
        return details["explanation"]
    return ", ".join(f"{name}={value}" for name, value in sorted(details.items()))


def log_record(row: FindingRow, observed_ns: int) -> LogRecord:
    """The ``gen_ai.evaluation.result`` record of one finding, observed at ``observed_ns``."""
    f = row.finding
    context = span_context(f.request_id)
    attributes: list[tuple[str, str | float | bool]] = [
        (EVENT_NAME_ATTRIBUTE, EVENT_NAME),
        (EVALUATION_NAME, f.detector),
        (SCORE_VALUE, float(f.score)),
        (SCORE_LABEL, LABEL_FLAGGED if f.flagged else LABEL_CLEAR),
    ]
    why = explanation(f.details)
    if why:
        attributes.append((EXPLANATION, why))
    if "parse_error" in f.details:  # the judge's reply could not be read: no verdict
        attributes.append((ERROR_TYPE, "parse_error"))
    if row.model:
        attributes.append((REQUEST_MODEL, row.model))
    if context is None:
        attributes.append((RESPONSE_ID, f.request_id))
    attributes += [
        ("llm_monitor.request_id", f.request_id),
        ("llm_monitor.model_version", row.model_version),
        ("llm_monitor.deployment", row.deployment),
        ("llm_monitor.route", row.route),
        ("llm_monitor.detector_version", f.detector_version),
        ("llm_monitor.flagged", f.flagged),
        ("llm_monitor.category", f.category),
    ]
    record = LogRecord(
        time_unix_nano=row.event_time_ms * MS,
        observed_time_unix_nano=observed_ns,
        severity_number=_SEVERITY_INFO,
        severity_text="INFO",
        attributes=[_key_value(name, value) for name, value in attributes],
    )
    if _HAS_EVENT_NAME:
        record.event_name = EVENT_NAME
    if context is not None:
        record.trace_id = context.trace_id
        record.span_id = context.span_id
    return record


def logs_request(records: Iterable[LogRecord]) -> ExportLogsServiceRequest:
    """One request holding ``records`` under the monitor's resource and scope."""
    return ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                resource=Resource(attributes=[_key_value("service.name", SERVICE_NAME)]),
                scope_logs=[
                    ScopeLogs(scope=InstrumentationScope(name=SCOPE_NAME), log_records=records)
                ],
            )
        ]
    )


def evaluation_records(batch: ScoredBatch, observed_ns: int) -> list[EvaluationRecord]:
    """One record per event that has findings in ``batch``, in the order of their first
    finding, each with one log record per finding."""
    by_event: dict[str, list[FindingRow]] = {}
    for row in batch.findings:
        by_event.setdefault(row.finding.request_id, []).append(row)
    out = []
    for request_id, rows in by_event.items():
        context = span_context(request_id)
        key = context.trace_hex if context is not None else request_id
        request = logs_request(log_record(row, observed_ns) for row in rows)
        out.append(EvaluationRecord(key.encode(), request.SerializeToString(), len(rows)))
    return out


def decode_scored(value: bytes) -> ScoredBatch:
    """A record of the scored topic; raises ``msgspec.DecodeError`` (or ``ValidationError``)
    when it is not one."""
    return _scored.decode(value)


def scored_to_records(
    values: Iterable[bytes], clock_ns: Callable[[], int]
) -> tuple[list[EvaluationRecord], int]:
    """The evaluation records of a batch of scored-topic records, and how many of those
    records did not decode (the sink dead-letters them; here they are only counted)."""
    records: list[EvaluationRecord] = []
    undecodable = 0
    observed_ns = clock_ns()
    for value in values:
        try:
            batch = decode_scored(value)
        except msgspec.DecodeError:  # ValidationError is a DecodeError
            undecodable += 1
            continue
        records.extend(evaluation_records(batch, observed_ns))
    return records, undecodable


def _key_value(name: str, value: str | float | bool) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=name, value=AnyValue(bool_value=value))
    if isinstance(value, float):
        return KeyValue(key=name, value=AnyValue(double_value=value))
    return KeyValue(key=name, value=AnyValue(string_value=value))
