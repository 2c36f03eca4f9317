"""The event contract: one JSON object per LLM call, decoded and validated with msgspec.

Field names follow DESIGN.md (OpenTelemetry GenAI names where one exists). Unknown fields are
kept in ``Event.extra`` as raw JSON fragments, never rejected. Every failure raises
``SchemaError`` with a bounded ``reason`` code so the DLQ and metrics can group by it.

What validation accepts, storage can hold (monitor/storage/migrations): token counts fit
``UInt32``, times fit ``DateTime`` (the TTL and partition expressions convert to it), floats
are finite and within ranges a real call can have, list and map sizes are bounded. The bounds
are msgspec ``Meta`` constraints, checked in C while decoding, so they cost nearly nothing.
Event time relative to arrival is checked per batch (``monitor.ingest.decode``).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Final, Literal

import msgspec

from monitor.errors import SchemaError

Status = Literal["ok", "error", "timeout", "refused"]

# Bounded reason codes: they become Prometheus label values and DLQ columns.
REASON_TOO_LARGE: Final = "too_large"
REASON_INVALID_UTF8: Final = "invalid_utf8"
REASON_INVALID_JSON: Final = "invalid_json"
REASON_NOT_AN_OBJECT: Final = "not_an_object"
REASON_SCHEMA: Final = "schema"
REASON_NON_FINITE: Final = "non_finite"
REASON_TIMESTAMP: Final = "invalid_timestamp"
REASON_TIMESTAMP_RANGE: Final = "timestamp_out_of_range"
REASON_TOO_DEEP: Final = "too_deep"
REASON_TOO_MANY_ITEMS: Final = "too_many_items"
REASON_UNDECODABLE: Final = "undecodable"  # an unexpected error while decoding the record
REASON_UNPROCESSABLE: Final = "unprocessable"  # a valid event that failed scoring or encoding
REASONS: Final = (
    REASON_TOO_LARGE,
    REASON_INVALID_UTF8,
    REASON_INVALID_JSON,
    REASON_NOT_AN_OBJECT,
    REASON_SCHEMA,
    REASON_NON_FINITE,
    REASON_TIMESTAMP,
    REASON_TIMESTAMP_RANGE,
    REASON_TOO_DEEP,
    REASON_TOO_MANY_ITEMS,
    REASON_UNDECODABLE,
    REASON_UNPROCESSABLE,
)

# Event time: DateTime64(3) holds more, but the TTL and partition expressions go through
# DateTime (UInt32 seconds, up to 2106); 2100 leaves room for a window end and a TTL interval.
MIN_EPOCH_MS: Final = 0  # 1970-01-01T00:00:00Z
MAX_EPOCH_MS: Final = 4_102_444_800_000  # 2100-01-01T00:00:00Z, exclusive
MAX_TOKENS: Final = 2**32 - 1  # UInt32 columns
# A day: no LLM call takes longer (timeouts are minutes); larger values are unit mistakes
# (micro- or nanoseconds) and would stretch a window's DDSketch over thousands of bins.
MAX_DURATION_MS: Final = 86_400_000.0
# Far above what one call costs today (cents to a few dollars), far below a unit mistake's
# effect on a window's cost sum.
MAX_COST_USD: Final = 10_000.0
# Covers the usual scales (thumbs -1/+1, 1-5 stars, 0-10, 0-100 percent).
MAX_ABS_RATING: Final = 100.0
MAX_MESSAGES: Final = 1000
MAX_SAMPLES: Final = 64
MAX_CONTEXT: Final = 256
MAX_ATTRIBUTES: Final = 64
MAX_ATTRIBUTE_CHARS: Final = 1024
MAX_EXTRA_FIELDS: Final = 256
MAX_EXTRA_DEPTH: Final = 32  # nesting of one unknown field's value

Identifier = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Label = Annotated[str, msgspec.Meta(max_length=256)]
DurationMs = Annotated[float, msgspec.Meta(ge=0, le=MAX_DURATION_MS)]
CostUsd = Annotated[float, msgspec.Meta(ge=0, le=MAX_COST_USD)]
Rating = Annotated[float, msgspec.Meta(ge=-MAX_ABS_RATING, le=MAX_ABS_RATING)]
Tokens = Annotated[int, msgspec.Meta(ge=0, le=MAX_TOKENS)]
AttributeText = Annotated[str, msgspec.Meta(max_length=MAX_ATTRIBUTE_CHARS)]
Attributes = Annotated[dict[AttributeText, AttributeText], msgspec.Meta(max_length=MAX_ATTRIBUTES)]


class Message(msgspec.Struct, frozen=True):
    """One chat message, as in OpenAI-style ``messages``."""

    role: Label
    content: str = ""


class Feedback(msgspec.Struct, frozen=True):
    """User feedback attached to the call, if the app collects it."""

    complaint: bool = False
    rating: Rating | None = None


class Event(msgspec.Struct, kw_only=True):
    """One LLM request/response. ``timestamp`` is normalised to epoch milliseconds (UTC)."""

    request_id: Identifier
    timestamp: str | int
    model: Identifier
    model_version: Identifier
    deployment: Label = "stable"
    route: Label = ""
    app: Label = ""
    prompt: str | None = None
    messages: Annotated[list[Message], msgspec.Meta(max_length=MAX_MESSAGES)] | None = None
    response: str | None = None
    samples: Annotated[list[str], msgspec.Meta(max_length=MAX_SAMPLES)] = msgspec.field(
        default_factory=list
    )
    context: Annotated[list[str], msgspec.Meta(max_length=MAX_CONTEXT)] = msgspec.field(
        default_factory=list
    )
    latency_ms: DurationMs | None = None
    ttft_ms: DurationMs | None = None
    input_tokens: Tokens | None = None
    output_tokens: Tokens | None = None
    cost_usd: CostUsd | None = None
    status: Status = "ok"
    error_type: Label | None = None
    attributes: Attributes = msgspec.field(default_factory=dict)
    feedback: Feedback | None = None
    extra: dict[str, str] = msgspec.field(default_factory=dict)

    @property
    def timestamp_ms(self) -> int:
        """Event time in epoch milliseconds (validated at decode time)."""
        assert isinstance(self.timestamp, int)  # noqa: S101 - normalised by decode_event
        return self.timestamp

    @property
    def prompt_text(self) -> str:
        """The prompt as one string: ``prompt`` or the concatenated ``messages`` contents."""
        if self.prompt is not None:
            return self.prompt
        if self.messages:
            return "\n".join(m.content for m in self.messages)
        return ""

    @property
    def series(self) -> tuple[str, str, str]:
        """The (model, model_version, deployment) triple windows are kept for."""
        return (self.model, self.model_version, self.deployment)


KNOWN_FIELDS: Final = frozenset(f for f in Event.__struct_fields__ if f != "extra")

_NON_FINITE_LITERAL = re.compile(rb"[:\[,]\s*-?(?:NaN|Infinity)\s*[,}\]]")
_TOO_MANY_ITEMS = re.compile(r"Expected `(?:array|object)` of length <=")
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_INNERMOST_PAIR = re.compile(r"\[\]|\{\}")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MS: Final = timedelta(milliseconds=1)
_decode_event = msgspec.json.Decoder(Event).decode
_decode_fields = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode


def decode_event(raw: bytes, *, max_bytes: int = 1_000_000) -> Event:
    """Decode and validate raw Kafka bytes into an Event, or raise SchemaError with a reason.

    Pure validation: it does not know when the record arrived (``decode_batch`` bounds event
    time relative to arrival)."""
    if len(raw) > max_bytes:
        raise SchemaError(REASON_TOO_LARGE, f"event is {len(raw)} bytes, limit is {max_bytes}")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SchemaError(REASON_INVALID_UTF8, f"invalid UTF-8 at byte {exc.start}") from exc
    fields = _json_object(raw)
    try:
        event = _decode_event(raw)
    except msgspec.ValidationError as exc:
        raise SchemaError(_validation_reason(str(exc)), str(exc)) from exc
    event.timestamp = parse_timestamp(event.timestamp)
    event.extra = _extra_fields(fields)
    return event


def _json_object(raw: bytes) -> dict[str, msgspec.Raw]:
    """The top-level JSON object, each value a raw fragment; SchemaError when it is not one."""
    try:
        return _decode_fields(raw)
    except msgspec.ValidationError as exc:
        raise SchemaError(REASON_NOT_AN_OBJECT, "event must be a JSON object") from exc
    except msgspec.DecodeError as exc:
        if _NON_FINITE_LITERAL.search(raw):
            raise SchemaError(REASON_NON_FINITE, "NaN/Infinity are not valid JSON numbers") from exc
        raise SchemaError(REASON_INVALID_JSON, str(exc)) from exc
    except RecursionError as exc:
        raise SchemaError(REASON_TOO_DEEP, "JSON nests deeper than the decoder allows") from exc


def _validation_reason(message: str) -> str:
    if "Number out of range" in message:
        return REASON_NON_FINITE
    if _TOO_MANY_ITEMS.match(message):
        return REASON_TOO_MANY_ITEMS
    return REASON_SCHEMA


def _extra_fields(fields: dict[str, msgspec.Raw]) -> dict[str, str]:
    """Unknown fields as JSON text: at most MAX_EXTRA_FIELDS, each nested MAX_EXTRA_DEPTH."""
    if fields.keys() <= KNOWN_FIELDS:  # the common case: one C-level set comparison
        return {}
    extra = {k: bytes(v).decode("utf-8") for k, v in fields.items() if k not in KNOWN_FIELDS}
    if len(extra) > MAX_EXTRA_FIELDS:
        raise SchemaError(
            REASON_TOO_MANY_ITEMS, f"{len(extra)} unknown fields, limit {MAX_EXTRA_FIELDS}"
        )
    for key, value in extra.items():
        # Fewer brackets than the limit cannot nest deeper: the exact check is rarely needed.
        brackets = value.count("[") + value.count("{")
        if brackets > MAX_EXTRA_DEPTH and nests_deeper(value, MAX_EXTRA_DEPTH):
            raise SchemaError(
                REASON_TOO_DEEP, f"field {key[:32]!r} nests deeper than {MAX_EXTRA_DEPTH} levels"
            )
    return extra


def nests_deeper(fragment: str, limit: int) -> bool:
    """Whether a valid JSON fragment nests arrays/objects deeper than ``limit``.

    Strings are blanked out, then each pass removes the innermost ``[]``/``{}`` pairs: every
    step is a C-level regex pass, never a Python loop over characters."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", fragment))
    for _ in range(limit):
        if not brackets:
            return False
        brackets = _INNERMOST_PAIR.sub("", brackets)
    return bool(brackets)


def parse_timestamp(value: str | int) -> int:
    """RFC 3339 string or epoch milliseconds → epoch milliseconds; SchemaError otherwise.

    The instant must lie in [1970-01-01, 2100-01-01) UTC, the range storage can hold."""
    if isinstance(value, int):
        ms = value
    else:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError as exc:
            raise SchemaError(REASON_TIMESTAMP, f"not RFC 3339: {value[:64]!r}") from exc
        if parsed.tzinfo is None:
            raise SchemaError(
                REASON_TIMESTAMP, f"RFC 3339 timestamp needs a UTC offset: {value[:64]!r}"
            )
        try:
            ms = (parsed - _EPOCH) // _MS
        except (OverflowError, ValueError) as exc:  # e.g. year 1 with a +14:00 offset
            raise SchemaError(REASON_TIMESTAMP_RANGE, f"{value[:64]!r} is out of range") from exc
    if not MIN_EPOCH_MS <= ms < MAX_EPOCH_MS:
        raise SchemaError(
            REASON_TIMESTAMP_RANGE,
            f"timestamp {str(value)[:64]} is outside [1970-01-01, 2100-01-01) UTC",
        )
    return ms


def encode_event(event: Event) -> bytes:
    """Serialise an Event back to JSON, unknown fields re-inlined at the top level."""
    body = msgspec.structs.asdict(event)
    extra = body.pop("extra")
    out = msgspec.json.encode(body)
    if not extra:
        return out
    tail = b",".join(msgspec.json.encode(k) + b":" + v.encode() for k, v in extra.items())
    return out[:-1] + b"," + tail + b"}"


def json_schema() -> dict[str, object]:
    """The JSON Schema of the event contract (also shipped as monitor/ingest/schema/event.json).

    What JSON Schema cannot say: the nesting limit of unknown fields, and the bound of event
    time relative to arrival (settings ``pipeline.max_event_age_s``/``max_future_skew_s``)."""
    schema = msgspec.json.schema(Event)
    defs = schema["$defs"]
    event_def = defs["Event"]
    event_def["properties"].pop("extra", None)
    event_def["additionalProperties"] = True
    event_def["maxProperties"] = len(KNOWN_FIELDS) + MAX_EXTRA_FIELDS
    event_def["properties"]["timestamp"] = {
        "description": (
            "RFC 3339 string with offset, or epoch milliseconds; in [1970-01-01, 2100-01-01) "
            "UTC and within the configured age and future skew of its arrival"
        ),
        "anyOf": [
            {"type": "string", "format": "date-time"},
            {"type": "integer", "minimum": MIN_EPOCH_MS, "maximum": MAX_EPOCH_MS - 1},
        ],
    }
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "llm-monitor event"
    return schema
