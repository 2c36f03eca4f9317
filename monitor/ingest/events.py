"""The event contract: one JSON object per LLM call, decoded and validated with msgspec.

Field names follow DESIGN.md (OpenTelemetry GenAI names where one exists). Unknown fields are
kept in ``Event.extra`` as raw JSON fragments, never rejected. Every failure raises
``SchemaError`` with a bounded ``reason`` code so the DLQ and metrics can group by it.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
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
REASONS: Final = (
    REASON_TOO_LARGE,
    REASON_INVALID_UTF8,
    REASON_INVALID_JSON,
    REASON_NOT_AN_OBJECT,
    REASON_SCHEMA,
    REASON_NON_FINITE,
    REASON_TIMESTAMP,
)

MAX_ATTRIBUTES: Final = 64
MAX_ATTRIBUTE_CHARS: Final = 1024

Identifier = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Label = Annotated[str, msgspec.Meta(max_length=256)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Count = Annotated[int, msgspec.Meta(ge=0)]


class Message(msgspec.Struct, frozen=True):
    """One chat message, as in OpenAI-style ``messages``."""

    role: Label
    content: str = ""


class Feedback(msgspec.Struct, frozen=True):
    """User feedback attached to the call, if the app collects it."""

    complaint: bool = False
    rating: float | None = None


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
    messages: list[Message] | None = None
    response: str | None = None
    samples: list[str] = msgspec.field(default_factory=list)
    context: list[str] = msgspec.field(default_factory=list)
    latency_ms: NonNegative | None = None
    ttft_ms: NonNegative | None = None
    input_tokens: Count | None = None
    output_tokens: Count | None = None
    cost_usd: NonNegative | None = None
    status: Status = "ok"
    error_type: Label | None = None
    attributes: dict[str, str] = msgspec.field(default_factory=dict)
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
_decode_event = msgspec.json.Decoder(Event).decode
_decode_fields = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode


def decode_event(raw: bytes, *, max_bytes: int = 1_000_000) -> Event:
    """Decode and validate raw Kafka bytes into an Event, or raise SchemaError with a reason."""
    if len(raw) > max_bytes:
        raise SchemaError(REASON_TOO_LARGE, f"event is {len(raw)} bytes, limit is {max_bytes}")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SchemaError(REASON_INVALID_UTF8, f"invalid UTF-8 at byte {exc.start}") from exc
    try:
        fields = _decode_fields(raw)
    except msgspec.ValidationError as exc:
        raise SchemaError(REASON_NOT_AN_OBJECT, "event must be a JSON object") from exc
    except msgspec.DecodeError as exc:
        if _NON_FINITE_LITERAL.search(raw):
            raise SchemaError(REASON_NON_FINITE, "NaN/Infinity are not valid JSON numbers") from exc
        raise SchemaError(REASON_INVALID_JSON, str(exc)) from exc
    try:
        event = _decode_event(raw)
    except msgspec.ValidationError as exc:
        reason = REASON_NON_FINITE if "Number out of range" in str(exc) else REASON_SCHEMA
        raise SchemaError(reason, str(exc)) from exc
    _check_finite(event)
    _check_attributes(event)
    event.timestamp = parse_timestamp(event.timestamp)
    event.extra = {k: bytes(v).decode("utf-8") for k, v in fields.items() if k not in KNOWN_FIELDS}
    return event


def parse_timestamp(value: str | int) -> int:
    """RFC 3339 string or epoch milliseconds → epoch milliseconds; SchemaError otherwise."""
    if isinstance(value, int):
        if not 0 <= value < 32_503_680_000_000:  # before year 3000
            raise SchemaError(REASON_TIMESTAMP, f"epoch milliseconds out of range: {value}")
        return value
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise SchemaError(REASON_TIMESTAMP, f"not RFC 3339: {value[:64]!r}") from exc
    if parsed.tzinfo is None:
        raise SchemaError(REASON_TIMESTAMP, f"RFC 3339 timestamp needs a UTC offset: {value!r}")
    return int(parsed.timestamp() * 1000)


def _check_finite(event: Event) -> None:
    for name in ("latency_ms", "ttft_ms", "cost_usd"):
        value = getattr(event, name)
        if value is not None and not math.isfinite(value):
            raise SchemaError(REASON_NON_FINITE, f"{name} must be finite, got {value}")
    rating = event.feedback.rating if event.feedback else None
    if rating is not None and not math.isfinite(rating):
        raise SchemaError(REASON_NON_FINITE, "feedback.rating must be finite")


def _check_attributes(event: Event) -> None:
    if len(event.attributes) > MAX_ATTRIBUTES:
        raise SchemaError(
            REASON_SCHEMA, f"attributes has {len(event.attributes)} keys, limit {MAX_ATTRIBUTES}"
        )
    for key, value in event.attributes.items():
        if len(key) > MAX_ATTRIBUTE_CHARS or len(value) > MAX_ATTRIBUTE_CHARS:
            raise SchemaError(
                REASON_SCHEMA, f"attribute {key[:32]!r} longer than {MAX_ATTRIBUTE_CHARS} chars"
            )


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
    """The JSON Schema of the event contract (also shipped as monitor/ingest/schema/event.json)."""
    schema = msgspec.json.schema(Event)
    defs = schema["$defs"]
    event_def = defs["Event"]
    event_def["properties"].pop("extra", None)
    event_def["additionalProperties"] = True
    event_def["properties"]["timestamp"] = {
        "description": "RFC 3339 string with offset, or epoch milliseconds",
        "anyOf": [{"type": "string", "format": "date-time"}, {"type": "integer", "minimum": 0}],
    }
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "llm-monitor event"
    return schema
