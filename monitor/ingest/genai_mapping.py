"""GenAI spans to events: which spans are LLM calls, and which attribute fills which field.

The table (docs/otlp.md) is ``SpanMapping``: data, overridable in config (``otlp.mapping``).
Each field lists the attribute names to try, first present wins, so current OpenTelemetry GenAI
names, their deprecated predecessors and OpenInference's names all map to one event. Content
(prompt, messages, response) comes from the structured ``gen_ai.input.messages`` /
``gen_ai.output.messages``, else the deprecated attributes and span events, else OpenInference;
it is code (``GenAiMapper``), since each convention shapes it differently.

Pure: a ``SpanView`` (one span, decoded from either OTLP encoding by monitor/ingest/otlp.py)
in, the event as a JSON-ready dict out, or None when the span is not an LLM call. Validation
stays where it is for every event (monitor/ingest/events.py): this module only maps names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import msgspec
from pydantic import BaseModel, Field

from monitor.ingest.events import MAX_ATTRIBUTE_CHARS, MAX_MESSAGES

# Attribute values as decoded from OTLP's AnyValue: str, bool, int, float, bytes, a list of
# values (arrayValue) or a str-keyed dict of values (kvlistValue), or None (an empty value).
Attributes = Mapping[str, object]

MAX_LABEL_CHARS: Final = 256  # Label / Identifier fields of the event contract
MESSAGE_EVENT_ROLES: Final = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}
CHOICE_EVENT: Final = "gen_ai.choice"
PROMPT_EVENT: Final = "gen_ai.content.prompt"  # semconv <= 1.27: attribute gen_ai.prompt
COMPLETION_EVENT: Final = "gen_ai.content.completion"  # attribute gen_ai.completion
EVENT_BODY_ATTRIBUTE: Final = "gen_ai.event.content"  # an event's body, as JSON text
MESSAGE_KEYS: Final = frozenset({"role", "content", "parts", "message"})


class SpanMapping(BaseModel):
    """Which spans are LLM calls and where each event field comes from (docs/otlp.md).

    Every list is tried in order; the first attribute present wins. ``deployment`` and ``app``
    are read from the resource first, then the span."""

    operations: list[str] = Field(
        default_factory=lambda: ["chat", "text_completion", "generate_content"],
        description="gen_ai.operation.name values that make a span an LLM call",
    )
    operation_attribute: str = "gen_ai.operation.name"
    openinference_kinds: list[str] = Field(
        default_factory=lambda: ["LLM"], description="openinference.span.kind values (route 'llm')"
    )
    legacy_system: bool = Field(
        default=True,
        description="a span without gen_ai.operation.name but with gen_ai.system and a request "
        "model (semantic conventions before 1.27) is a chat call",
    )
    model: list[str] = Field(
        default_factory=lambda: ["gen_ai.request.model", "gen_ai.response.model", "llm.model_name"]
    )
    default_model: str = Field(default="unknown", min_length=1, max_length=MAX_LABEL_CHARS)
    model_version: list[str] = Field(
        default_factory=lambda: ["gen_ai.response.model"], description="else the model"
    )
    deployment: list[str] = Field(
        default_factory=lambda: ["deployment.environment.name", "deployment.environment"]
    )
    default_deployment: str = Field(default="stable", max_length=MAX_LABEL_CHARS)
    app: list[str] = Field(default_factory=lambda: ["service.name"])
    ttft_seconds: list[str] = Field(
        default_factory=lambda: ["gen_ai.response.time_to_first_chunk"],
        description="time to first chunk, in seconds (ttft_ms is 1000 times it)",
    )
    input_tokens: list[str] = Field(
        default_factory=lambda: [
            "gen_ai.usage.input_tokens",
            "gen_ai.usage.prompt_tokens",
            "llm.token_count.prompt",
        ]  # fmt: skip
    )
    output_tokens: list[str] = Field(
        default_factory=lambda: [
            "gen_ai.usage.output_tokens",
            "gen_ai.usage.completion_tokens",
            "llm.token_count.completion",
        ]  # fmt: skip
    )
    error_type: list[str] = Field(default_factory=lambda: ["error.type"])
    attributes: dict[str, list[str]] = Field(
        default_factory=lambda: {
            "gen_ai.provider.name": ["gen_ai.provider.name", "gen_ai.system", "llm.provider"],
            "gen_ai.response.finish_reasons": ["gen_ai.response.finish_reasons"],
            "gen_ai.conversation.id": ["gen_ai.conversation.id", "session.id"],
        },
        description="event attribute <- span attributes (lists are joined with ',')",
    )


@dataclass(frozen=True, slots=True)
class SpanEventView:
    """One span event: its name and attributes."""

    name: str
    attributes: Attributes


@dataclass(frozen=True, slots=True)
class SpanView:
    """One span, whichever encoding it came in: ids in lowercase hex, times in Unix ns."""

    trace_id: str
    span_id: str
    name: str
    start_ns: int
    end_ns: int
    attributes: Attributes
    events: Sequence[SpanEventView]
    error: bool  # status code ERROR
    status_message: str


@dataclass(frozen=True, slots=True)
class Content:
    """What a span says was sent and answered; each part None when the span does not say."""

    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    response: str | None = None


class GenAiMapper:
    """Maps spans to events with one ``SpanMapping`` (the defaults when none is given)."""

    def __init__(self, mapping: SpanMapping | None = None) -> None:
        self.mapping = mapping or SpanMapping()
        m = self.mapping
        self._operations = frozenset(m.operations)
        self._openinference = frozenset(m.openinference_kinds)
        self._attributes = [(key, tuple(names)) for key, names in m.attributes.items()]

    def route(self, attributes: Attributes) -> str | None:
        """The span's route when it is an LLM call (its operation name), else None."""
        operation = attributes.get(self.mapping.operation_attribute)
        if isinstance(operation, str):
            return operation if operation in self._operations else None
        kind = attributes.get("openinference.span.kind")
        if isinstance(kind, str) and kind in self._openinference:
            return kind.lower()
        if (
            self.mapping.legacy_system
            and isinstance(attributes.get("gen_ai.system"), str)
            and isinstance(attributes.get("gen_ai.request.model"), str)
        ):
            return "chat"
        return None

    def event(self, span: SpanView, resource: Attributes) -> dict[str, object] | None:
        """The event for ``span`` (a JSON-ready dict), or None when it is not an LLM call."""
        attrs, m = span.attributes, self.mapping
        route = self.route(attrs)
        if route is None:
            return None
        model = _label(first_text(attrs, m.model)) or m.default_model
        event: dict[str, object] = {
            "request_id": span.trace_id + span.span_id,
            "timestamp": span.start_ns // 1_000_000,
            "model": model,
            "model_version": _label(first_text(attrs, m.model_version)) or model,
            "deployment": _label(
                first_text(resource, m.deployment) or first_text(attrs, m.deployment)
            )
            or m.default_deployment,
            "route": _label(route),
            "app": _label(first_text(resource, m.app) or first_text(attrs, m.app)),
        }
        if span.end_ns >= span.start_ns > 0:
            event["latency_ms"] = (span.end_ns - span.start_ns) / 1e6
        ttft_s = first_number(attrs, m.ttft_seconds)
        if ttft_s is not None:
            event["ttft_ms"] = ttft_s * 1000
        for field, names in (("input_tokens", m.input_tokens), ("output_tokens", m.output_tokens)):
            tokens = first_int(attrs, names)
            if tokens is not None:
                event[field] = tokens
        error_type = first_text(attrs, m.error_type)
        if span.error or error_type is not None:
            event["status"] = "error"
            event["error_type"] = _label(error_type or span.status_message or "error")
        attributes = self._event_attributes(attrs)
        if attributes:
            event["attributes"] = attributes
        content = span_content(span)
        if content.messages is not None:
            event["messages"] = content.messages
        elif content.prompt is not None:
            event["prompt"] = content.prompt
        if content.response is not None:
            event["response"] = content.response
        return event

    def _event_attributes(self, attrs: Attributes) -> dict[str, str]:
        out = {}
        for key, names in self._attributes:
            for name in names:
                value = attrs.get(name)
                if value is None:
                    continue
                if isinstance(value, list):
                    text = ",".join(v if isinstance(v, str) else _json_text(v) for v in value)
                else:
                    text = value if isinstance(value, str) else _json_text(value)
                out[key] = text[:MAX_ATTRIBUTE_CHARS]
                break
        return out


def first_text(attrs: Attributes, names: Sequence[str]) -> str | None:
    """The first non-empty string among ``names``."""
    for name in names:
        value = attrs.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def first_int(attrs: Attributes, names: Sequence[str]) -> int | None:
    """The first integer among ``names`` (an integral float or a digit string counts)."""
    for name in names:
        value = attrs.get(name)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
    return None


def first_number(attrs: Attributes, names: Sequence[str]) -> float | None:
    """The first int or float among ``names``."""
    for name in names:
        value = attrs.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def _label(value: str | None) -> str:
    return (value or "")[:MAX_LABEL_CHARS]


def _json_text(value: object) -> str:
    if isinstance(value, bytes):
        return value.hex()
    return msgspec.json.encode(value).decode()


# --- content -------------------------------------------------------------------------------


def span_content(span: SpanView) -> Content:
    """Prompt side and response side, each from the first convention that has it: structured
    ``gen_ai.*.messages``, deprecated attributes, span events, then OpenInference."""
    attrs = span.attributes
    messages, prompt = _input_messages(attrs), None
    if messages is None:
        messages, prompt = _deprecated_prompt(attrs)
    if messages is None and prompt is None:
        messages, prompt = _event_prompt(span.events)
    if messages is None and prompt is None:
        messages = _indexed_messages(attrs, "llm.input_messages.", ".message.role",
                                     ".message.content")  # fmt: skip
        if messages is None:
            prompt = _text(attrs.get("input.value"))
    response = _output_text(attrs)
    if response is None:
        response = _deprecated_completion(attrs)
    if response is None:
        response = _event_completion(span.events)
    if response is None:
        output = _indexed_messages(attrs, "llm.output_messages.", ".message.role",
                                   ".message.content")  # fmt: skip
        response = _joined(output) if output else _text(attrs.get("output.value"))
    return Content(messages=messages, prompt=prompt, response=response)


def _input_messages(attrs: Attributes) -> list[dict[str, str]] | None:
    """``gen_ai.system_instructions`` (as a system message) and ``gen_ai.input.messages``."""
    raw_messages = attrs.get("gen_ai.input.messages")
    raw_system = attrs.get("gen_ai.system_instructions")
    if raw_messages is None and raw_system is None:
        return None
    messages = []
    if raw_system is not None:
        system = _parts_text(_structured(raw_system))
        if system:
            messages.append({"role": "system", "content": system})
    messages.extend(_messages(_structured(raw_messages)))
    return messages


def _output_text(attrs: Attributes) -> str | None:
    raw = attrs.get("gen_ai.output.messages")
    if raw is None:
        return None
    return _joined(_messages(_structured(raw)))


def _deprecated_prompt(attrs: Attributes) -> tuple[list[dict[str, str]] | None, str | None]:
    """``gen_ai.prompt`` (text, or OpenAI-style messages as JSON) or its indexed form
    ``gen_ai.prompt.N.role`` / ``.content`` (OpenLLMetry)."""
    value = attrs.get("gen_ai.prompt")
    if value is not None:
        return _text_or_messages(value)
    return _indexed_messages(attrs, "gen_ai.prompt.", ".role", ".content"), None


def _deprecated_completion(attrs: Attributes) -> str | None:
    value = attrs.get("gen_ai.completion")
    if value is not None:
        messages, text = _text_or_messages(value)
        return _joined(messages) if messages is not None else text
    indexed = _indexed_messages(attrs, "gen_ai.completion.", ".role", ".content")
    return _joined(indexed) if indexed else None


def _event_prompt(
    events: Sequence[SpanEventView],
) -> tuple[list[dict[str, str]] | None, str | None]:
    """``gen_ai.{system,user,assistant,tool}.message`` events, or ``gen_ai.content.prompt``."""
    messages = []
    for event in events:
        role = MESSAGE_EVENT_ROLES.get(event.name)
        if role is not None:
            body = _event_body(event.attributes)
            messages.append({
                "role": _label(_text(body.get("role")) or role),
                "content": _content_text(body.get("content")) or "",
            })  # fmt: skip
        elif event.name == PROMPT_EVENT and "gen_ai.prompt" in event.attributes:
            return _text_or_messages(event.attributes["gen_ai.prompt"])
    return (messages or None), None


def _event_completion(events: Sequence[SpanEventView]) -> str | None:
    """``gen_ai.choice`` events (their message content), or ``gen_ai.content.completion``."""
    texts = []
    for event in events:
        if event.name == CHOICE_EVENT:
            body = _event_body(event.attributes)
            message = body.get("message")
            content = message.get("content") if isinstance(message, dict) else None
            text = _content_text(content or body.get("message.content") or body.get("content"))
            if text:
                texts.append(text)
        elif event.name == COMPLETION_EVENT and "gen_ai.completion" in event.attributes:
            messages, text = _text_or_messages(event.attributes["gen_ai.completion"])
            return _joined(messages) if messages is not None else text
    return "\n".join(texts) if texts else None


def _event_body(attrs: Attributes) -> Mapping[str, object]:
    """An event's body: the JSON in ``gen_ai.event.content`` when present, else its attributes."""
    body = _structured(attrs.get(EVENT_BODY_ATTRIBUTE))
    return body if isinstance(body, dict) else attrs


def _indexed_messages(
    attrs: Attributes, prefix: str, role_suffix: str, content_suffix: str
) -> list[dict[str, str]] | None:
    """Messages flattened into attributes: ``{prefix}N{role_suffix}`` and ``...{content_suffix}``
    for N = 0, 1, ... (OpenInference ``llm.input_messages.N.message.content``)."""
    messages = []
    for index in range(MAX_MESSAGES + 1):
        role = attrs.get(f"{prefix}{index}{role_suffix}")
        content = attrs.get(f"{prefix}{index}{content_suffix}")
        if role is None and content is None:
            break
        messages.append({"role": _label(_text(role) or "user"), "content": _text(content) or ""})
    return messages or None


def _text_or_messages(value: object) -> tuple[list[dict[str, str]] | None, str | None]:
    """A deprecated prompt/completion value: OpenAI-style messages (JSON list) or plain text."""
    structured = _structured(value)
    if isinstance(structured, dict):
        structured = [structured]
    if isinstance(structured, list) and all(_is_message(item) for item in structured):
        return _messages(structured), None
    return None, _text(value)


def _is_message(item: object) -> bool:
    return isinstance(item, dict) and not MESSAGE_KEYS.isdisjoint(item)


def _structured(value: object) -> object:
    """A value as data: JSON text decoded (when it is JSON), anything else as it is."""
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return msgspec.json.decode(value)
        except msgspec.DecodeError:
            return value
    return value


def _messages(value: object) -> list[dict[str, str]]:
    """GenAI messages (``{"role", "parts": [...]}``) or OpenAI-style ones (``{"role",
    "content"}``, or a choice ``{"message": {...}}``) as ``{"role", "content"}``."""
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        text = _text(value)
        return [{"role": "user", "content": text}] if text else []
    messages = []
    for item in value:
        if not isinstance(item, dict):
            text = _text(item)
            if text:
                messages.append({"role": "user", "content": text})
            continue
        if isinstance(item.get("message"), dict):
            item = item["message"]
        if not _is_message(item):  # not a message after all: keep its text, never drop it
            messages.append({"role": "user", "content": _json_text(item)})
            continue
        role = _label(_text(item.get("role")) or "user")
        if "parts" in item:
            content = _parts_text(item["parts"])
        else:
            content = _content_text(item.get("content")) or ""
        messages.append({"role": role, "content": content})
    return messages


def _parts_text(parts: object) -> str:
    """The text of GenAI message parts: ``text`` parts' content (and any part's string
    ``content``), one per line; a bare string is itself the text."""
    if isinstance(parts, str):
        return parts
    if not isinstance(parts, list):
        return ""
    texts = []
    for part in parts:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and isinstance(part.get("content"), str):
            texts.append(part["content"])
    return "\n".join(texts)


def _content_text(content: object) -> str | None:
    """OpenAI-style content: a string, or a list of parts (``{"type": "text", "text": ...}``)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            p if isinstance(p, str) else str(p.get("text") or p.get("content") or "")
            for p in content
            if isinstance(p, str | dict)
        ]
        return "\n".join(t for t in texts if t)
    return None


def _joined(messages: Sequence[Mapping[str, str]] | None) -> str | None:
    if not messages:
        return None
    return "\n".join(m["content"] for m in messages if m["content"])


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return _json_text(value)
