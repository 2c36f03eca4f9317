"""OTLP trace records in, events out: one event per GenAI span, as the JSON the event path reads.

A record is one ``ExportTraceServiceRequest`` (what the Collector's Kafka exporter writes), in
either OTLP encoding, told apart per record: JSON when its first non-blank byte is ``{`` (a
protobuf ``ExportTraceServiceRequest`` never starts so: 0x7B would be field 15, wire type 3),
else protobuf. Protobuf decodes with opentelemetry-proto's generated types; JSON with msgspec
structs that mirror the OTLP/JSON mapping (lowerCamelCase names, hex trace/span ids, 64-bit
integers as strings), typed and checked in C: protobuf's own ``json_format.ParseDict`` costs
about 125 µs a span, 40 times the decode of an event, and reads hex ids as base64.

Each GenAI span becomes the event ``monitor.ingest.genai_mapping`` maps it to, encoded as JSON,
so validation, scoring, redaction and storage are the event path's, unchanged. Other spans are
counted and left out. A record that does not decode is refused as a whole (``SchemaError``).

**Positions.** Events read from one record share its Kafka offset, but everything downstream
that deduplicates by source (window partials, the embed role, the ``dead_letters`` table) needs
one strictly increasing position per event. A span's position is ``offset * SPANS_PER_RECORD +
index``, its index among all the record's spans (GenAI or not, so a mapping change never moves
a span); a record refused as a whole is at ``offset * SPANS_PER_RECORD``. Replaying a record
yields the same events at the same positions, with the same request ids (trace id + span id,
hex), so windows merge each once and rows collapse.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

import msgspec
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from monitor.errors import SchemaError
from monitor.ingest.decode import RawMessage, dead_letter
from monitor.ingest.dlq import DeadLetter
from monitor.ingest.events import REASON_INVALID_JSON, REASON_TOO_MANY_ITEMS, REASON_UNDECODABLE
from monitor.ingest.genai_mapping import Attributes, GenAiMapper, SpanEventView, SpanView

REASON_INVALID_OTLP: Final = "invalid_otlp"  # not a trace request, or one without spans
SPANS_PER_RECORD: Final = 1_000_000  # positions: offset * SPANS_PER_RECORD + span index
_JSON_START: Final = re.compile(rb"[ \t\r\n]*\{")
_STATUS_ERROR: Final = Status.STATUS_CODE_ERROR
_STATUS_ERROR_NAME: Final = "STATUS_CODE_ERROR"
_encode = msgspec.json.Encoder().encode


class SpanEvent(msgspec.Struct, frozen=True):
    """One GenAI span's event: its id, its index among the record's spans, the JSON bytes."""

    request_id: str
    index: int
    value: bytes


@dataclass
class RecordEvents:
    """What one OTLP record holds: the events of its GenAI spans and how many spans it has."""

    events: list[SpanEvent] = field(default_factory=list)
    spans: int = 0

    @property
    def ignored(self) -> int:
        """Spans that are not LLM calls."""
        return self.spans - len(self.events)


def is_json(raw: bytes) -> bool:
    """Whether a record is OTLP/JSON (else protobuf): its first non-blank byte is ``{``."""
    return _JSON_START.match(raw) is not None


def spans_to_events(raw: bytes, mapper: GenAiMapper | None = None) -> RecordEvents:
    """The events of the GenAI spans in one OTLP record (protobuf or JSON, detected).

    Raises SchemaError when the record does not decode (``invalid_otlp``, ``invalid_json``),
    holds no span at all, or more than SPANS_PER_RECORD (``too_many_items``)."""
    mapper = mapper or GenAiMapper()
    out = RecordEvents()
    spans = json_spans(raw) if is_json(raw) else proto_spans(raw)
    for index, (span, resource) in enumerate(spans):
        if index >= SPANS_PER_RECORD:
            raise SchemaError(
                REASON_TOO_MANY_ITEMS, f"more than {SPANS_PER_RECORD} spans in one record"
            )
        out.spans += 1
        event = mapper.event(span, resource)
        if event is not None:
            out.events.append(SpanEvent(str(event["request_id"]), index, _encode(event)))
    if not out.spans:
        raise SchemaError(REASON_INVALID_OTLP, "the record holds no span")
    return out


# --- protobuf ------------------------------------------------------------------------------


def proto_spans(raw: bytes) -> Iterator[tuple[SpanView, Attributes]]:
    """Every span of a protobuf ExportTraceServiceRequest with its resource's attributes."""
    try:
        request = ExportTraceServiceRequest.FromString(raw)
    except DecodeError as exc:
        raise SchemaError(REASON_INVALID_OTLP, f"not an OTLP protobuf request: {exc}") from exc
    for resource_spans in request.resource_spans:
        resource = _proto_attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield _proto_span(span), resource


def _proto_span(span: Span) -> SpanView:
    return SpanView(
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        name=span.name,
        start_ns=span.start_time_unix_nano,
        end_ns=span.end_time_unix_nano,
        attributes=_proto_attributes(span.attributes),
        events=[SpanEventView(e.name, _proto_attributes(e.attributes)) for e in span.events],
        error=span.status.code == _STATUS_ERROR,
        status_message=span.status.message,
    )


def _proto_attributes(pairs: Sequence[KeyValue]) -> dict[str, object]:
    return {pair.key: _proto_value(pair.value) for pair in pairs}


_SCALARS: Final = frozenset({"string_value", "int_value", "double_value", "bool_value",
                             "bytes_value"})  # fmt: skip


def _proto_value(value: AnyValue) -> object:
    kind = value.WhichOneof("value")
    if kind in _SCALARS:
        return getattr(value, kind)
    if kind == "array_value":
        return [_proto_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _proto_attributes(value.kvlist_value.values)
    return None


# --- JSON ----------------------------------------------------------------------------------
# The OTLP/JSON mapping (opentelemetry-proto's docs/specification.md): lowerCamelCase keys,
# trace and span ids as hex, enums as integers (their names accepted too), 64-bit integers as
# decimal strings or numbers. Fields this mapping does not need are skipped, unknown ones too.


class JsonArrayValue(msgspec.Struct):
    values: list[JsonAnyValue] = msgspec.field(default_factory=list)


class JsonKeyValueList(msgspec.Struct):
    values: list[JsonKeyValue] = msgspec.field(default_factory=list)


class JsonAnyValue(msgspec.Struct, rename="camel"):
    string_value: str | None = None
    bool_value: bool | None = None
    int_value: int | str | None = None
    double_value: float | str | None = None
    array_value: JsonArrayValue | None = None
    kvlist_value: JsonKeyValueList | None = None
    bytes_value: str | None = None


class JsonKeyValue(msgspec.Struct):
    key: str
    value: JsonAnyValue | None = None


class JsonStatus(msgspec.Struct):
    message: str = ""
    code: int | str = 0


class JsonSpanEvent(msgspec.Struct):
    name: str = ""
    attributes: list[JsonKeyValue] = msgspec.field(default_factory=list)


class JsonSpan(msgspec.Struct, rename="camel"):
    trace_id: str = ""
    span_id: str = ""
    name: str = ""
    start_time_unix_nano: int | str = 0
    end_time_unix_nano: int | str = 0
    attributes: list[JsonKeyValue] = msgspec.field(default_factory=list)
    events: list[JsonSpanEvent] = msgspec.field(default_factory=list)
    status: JsonStatus | None = None


class JsonScopeSpans(msgspec.Struct):
    spans: list[JsonSpan] = msgspec.field(default_factory=list)


class JsonResource(msgspec.Struct):
    attributes: list[JsonKeyValue] = msgspec.field(default_factory=list)


class JsonResourceSpans(msgspec.Struct, rename="camel"):
    resource: JsonResource | None = None
    scope_spans: list[JsonScopeSpans] = msgspec.field(default_factory=list)


class JsonTraceRequest(msgspec.Struct, rename="camel"):
    """An ExportTraceServiceRequest (or TracesData: the same shape) in OTLP/JSON."""

    resource_spans: list[JsonResourceSpans] = msgspec.field(default_factory=list)


_decode_json_request = msgspec.json.Decoder(JsonTraceRequest).decode


def json_spans(raw: bytes) -> Iterator[tuple[SpanView, Attributes]]:
    """Every span of an OTLP/JSON ExportTraceServiceRequest with its resource's attributes."""
    try:
        request = _decode_json_request(raw)
    except msgspec.ValidationError as exc:
        raise SchemaError(REASON_INVALID_OTLP, f"not an OTLP/JSON trace request: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise SchemaError(REASON_INVALID_JSON, str(exc)) from exc
    for resource_spans in request.resource_spans:
        resource = resource_spans.resource
        attributes = _json_attributes(resource.attributes) if resource else {}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield _json_span(span), attributes


def _json_span(span: JsonSpan) -> SpanView:
    status = span.status
    return SpanView(
        trace_id=json_id(span.trace_id, 16, "traceId"),
        span_id=json_id(span.span_id, 8, "spanId"),
        name=span.name,
        start_ns=_json_int(span.start_time_unix_nano, "startTimeUnixNano"),
        end_ns=_json_int(span.end_time_unix_nano, "endTimeUnixNano"),
        attributes=_json_attributes(span.attributes),
        events=[SpanEventView(e.name, _json_attributes(e.attributes)) for e in span.events],
        error=status is not None and status.code in (_STATUS_ERROR, _STATUS_ERROR_NAME),
        status_message=status.message if status is not None else "",
    )


def json_id(value: str, size: int, name: str) -> str:
    """A trace or span id as lowercase hex: OTLP/JSON writes hex; base64 (what protobuf's own
    JSON mapping writes) is read too, told apart by its length. Empty stays empty."""
    if not value:
        return ""
    try:
        if len(value) == 2 * size:
            return bytes.fromhex(value).hex()
        decoded = base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise SchemaError(REASON_INVALID_OTLP, f"{name} {value[:64]!r} is not hex") from exc
    if len(decoded) != size:
        raise SchemaError(
            REASON_INVALID_OTLP, f"{name} {value[:64]!r} is not {2 * size} hex digits"
        )
    return decoded.hex()


def _json_int(value: int | str, name: str) -> int:
    if isinstance(value, int):
        return value
    try:
        return int(value)
    except ValueError as exc:
        raise SchemaError(REASON_INVALID_OTLP, f"{name} {value[:64]!r} is not an integer") from exc


def _json_attributes(pairs: Sequence[JsonKeyValue]) -> dict[str, object]:
    return {pair.key: _json_value(pair.value) for pair in pairs}


def _json_value(value: JsonAnyValue | None) -> object:
    if value is None:
        return None
    if value.string_value is not None:
        return value.string_value
    if value.int_value is not None:
        return _json_int(value.int_value, "intValue")
    if value.double_value is not None:
        return _json_double(value.double_value)
    if value.bool_value is not None:
        return value.bool_value
    if value.array_value is not None:
        return [_json_value(v) for v in value.array_value.values]
    if value.kvlist_value is not None:
        return _json_attributes(value.kvlist_value.values)
    if value.bytes_value is not None:
        try:
            return base64.b64decode(value.bytes_value, validate=True)
        except (ValueError, binascii.Error) as exc:
            raise SchemaError(REASON_INVALID_OTLP, "bytesValue is not base64") from exc
    return None


def _json_double(value: float | str) -> float:
    """A double; protobuf's JSON mapping writes the non-finite ones as strings ("NaN")."""
    if isinstance(value, float | int):
        return float(value)
    try:
        return float(value)
    except ValueError as exc:
        raise SchemaError(REASON_INVALID_OTLP, f"doubleValue {value[:64]!r}") from exc


# --- records to messages -------------------------------------------------------------------


def span_position(offset: int, index: int) -> int:
    """Where span ``index`` of the record at ``offset`` sits among every event's positions."""
    return offset * SPANS_PER_RECORD + index


def record_offset(position: int) -> int:
    """The Kafka offset of the record a position (an OTLP dead letter's offset) belongs to."""
    return position // SPANS_PER_RECORD


@dataclass
class SpanBatch:
    """A batch of OTLP records as the event path takes it: one message per GenAI span (the
    event's JSON, at the span's position), the records refused, and the spans left out."""

    messages: list[RawMessage] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    records: int = 0
    ignored: int = 0


def expand_records(
    records: Sequence[RawMessage],
    mapper: GenAiMapper | None = None,
    *,
    now_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
) -> SpanBatch:
    """Every record's GenAI spans as messages of the event path, in position order; a record
    that does not decode is a dead letter (its bytes, the reason), never the batch's end."""
    mapper = mapper or GenAiMapper()
    batch = SpanBatch(records=len(records))
    for record in records:
        try:
            decoded = spans_to_events(record.value, mapper)
        except SchemaError as exc:
            reason, error = exc.reason, exc.message
        except Exception as exc:  # one record's failure is never the batch's
            reason, error = REASON_UNDECODABLE, f"{type(exc).__name__}: {exc}"
        else:
            batch.ignored += decoded.ignored
            batch.messages.extend(
                RawMessage(
                    value=event.value,
                    key=event.request_id.encode(),
                    topic=record.topic,
                    partition=record.partition,
                    offset=span_position(record.offset, event.index),
                    timestamp_ms=record.timestamp_ms,
                )
                for event in decoded.events
            )
            continue
        at = msgspec.structs.replace(record, offset=span_position(record.offset, 0))
        batch.dead_letters.append(dead_letter(at, reason, error, now_ms()))
    return batch


class _IdOnly(msgspec.Struct, rename="camel"):
    trace_id: str = ""


class _ScopeIds(msgspec.Struct):
    spans: list[_IdOnly] = msgspec.field(default_factory=list)


class _ResourceIds(msgspec.Struct, rename="camel"):
    scope_spans: list[_ScopeIds] = msgspec.field(default_factory=list)


class _RequestIds(msgspec.Struct, rename="camel"):
    resource_spans: list[_ResourceIds] = msgspec.field(default_factory=list)


_decode_ids = msgspec.json.Decoder(_RequestIds).decode


def record_key(line: bytes) -> bytes:
    """A Kafka key for an OTLP/JSON line: its first span's trace id (as the Collector's
    ``partition_traces_by_id`` keys records), or empty when it has none readable."""
    try:
        request = _decode_ids(line)
    except (msgspec.DecodeError, RecursionError):
        return b""
    for resource in request.resource_spans:
        for scope in resource.scope_spans:
            for span in scope.spans:
                return span.trace_id.encode()[:64]
    return b""
