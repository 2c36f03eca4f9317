"""Span ingest: the GenAI mapping table, both OTLP encodings from the real SDK, records refused.

Tables of span attributes -> expected event fields (presidio-style), then the SDK's own OTLP
encoder (``encode_spans``) for protobuf and OTLP/JSON, then the seam with the event path:
positions, dead letters, and windows that count every span of a record once, replays included.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import msgspec
import pytest

from monitor.config import Settings
from monitor.errors import SchemaError
from monitor.ingest.decode import RawMessage
from monitor.ingest.events import Event, decode_event
from monitor.ingest.genai_mapping import GenAiMapper, SpanEventView, SpanMapping, SpanView
from monitor.ingest.otlp import (
    REASON_INVALID_OTLP,
    SPANS_PER_RECORD,
    expand_records,
    is_json,
    json_id,
    record_key,
    record_offset,
    span_position,
    spans_to_events,
)
from monitor.scoring.pipeline import Pipeline
from monitor.scoring.registry import build_registry
from monitor.windows.aggregate import WindowAggregator
from tests.genai_spans import LEAKED_EMAIL, json_record, proto_record, traffic

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"
START = 1_700_000_000_000 * 1_000_000  # ns
RESOURCE = {"service.name": "shop", "deployment.environment.name": "canary"}


def span(attributes: Mapping[str, object], *, events: tuple[SpanEventView, ...] = (),
         error: bool = False, status_message: str = "", duration_ms: float = 500.0) -> SpanView:  # fmt: skip
    return SpanView(
        trace_id=TRACE, span_id=SPAN, name="chat", start_ns=START,
        end_ns=START + int(duration_ms * 1e6), attributes=attributes, events=events,
        error=error, status_message=status_message,
    )  # fmt: skip


def mapped(
    attributes: Mapping[str, object],
    resource: Mapping[str, object] | None = None,
    mapping: SpanMapping | None = None,
    **kwargs: Any,
) -> Event | None:
    """The span's event through the real validator, or None when it is not an LLM call."""
    event = GenAiMapper(mapping).event(
        span(attributes, **kwargs), RESOURCE if resource is None else resource
    )
    return None if event is None else decode_event(msgspec.json.encode(event))


CHAT: dict[str, object] = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o"}

# (case, span attributes, expected event fields)
FIELD_TABLE: list[tuple[str, dict[str, object], dict[str, object]]] = [
    ("request model", CHAT, {"model": "gpt-4o", "model_version": "gpt-4o", "route": "chat"}),
    ("response model is the version",
     {**CHAT, "gen_ai.response.model": "gpt-4o-2024-08-06"},
     {"model": "gpt-4o", "model_version": "gpt-4o-2024-08-06"}),
    ("response model when no request model",
     {"gen_ai.operation.name": "chat", "gen_ai.response.model": "gpt-4o-2024-08-06"},
     {"model": "gpt-4o-2024-08-06", "model_version": "gpt-4o-2024-08-06"}),
    ("no model at all", {"gen_ai.operation.name": "chat"}, {"model": "unknown"}),
    ("openinference model", {"openinference.span.kind": "LLM", "llm.model_name": "llama-3"},
     {"model": "llama-3", "route": "llm"}),
    ("text completion", {**CHAT, "gen_ai.operation.name": "text_completion"},
     {"route": "text_completion"}),
    ("generate content", {**CHAT, "gen_ai.operation.name": "generate_content"},
     {"route": "generate_content"}),
    ("legacy gen_ai.system, no operation name",
     {"gen_ai.system": "openai", "gen_ai.request.model": "gpt-4"},
     {"route": "chat", "attributes": {"gen_ai.provider.name": "openai"}}),
    ("tokens", {**CHAT, "gen_ai.usage.input_tokens": 11, "gen_ai.usage.output_tokens": 7},
     {"input_tokens": 11, "output_tokens": 7}),
    ("deprecated tokens",
     {**CHAT, "gen_ai.usage.prompt_tokens": 11, "gen_ai.usage.completion_tokens": 7},
     {"input_tokens": 11, "output_tokens": 7}),
    ("current tokens win",
     {**CHAT, "gen_ai.usage.input_tokens": 1, "gen_ai.usage.prompt_tokens": 2},
     {"input_tokens": 1}),
    ("openinference tokens",
     {"openinference.span.kind": "LLM", "llm.token_count.prompt": 3,
      "llm.token_count.completion": 4}, {"input_tokens": 3, "output_tokens": 4}),
    ("tokens as strings", {**CHAT, "gen_ai.usage.input_tokens": "12"}, {"input_tokens": 12}),
    ("latency from start and end", CHAT, {"latency_ms": 500.0, "timestamp": START // 1_000_000}),
    ("ttft in seconds", {**CHAT, "gen_ai.response.time_to_first_chunk": 0.25}, {"ttft_ms": 250.0}),
    ("error.type", {**CHAT, "error.type": "timeout"}, {"status": "error", "error_type": "timeout"}),
    ("ok by default", CHAT, {"status": "ok", "error_type": None}),
    ("attributes", {**CHAT, "gen_ai.provider.name": "openai", "gen_ai.system": "ignored",
                    "gen_ai.response.finish_reasons": ["stop", "length"],
                    "gen_ai.conversation.id": "c-9"},
     {"attributes": {"gen_ai.provider.name": "openai",
                     "gen_ai.response.finish_reasons": "stop,length",
                     "gen_ai.conversation.id": "c-9"}}),
    ("deprecated provider", {**CHAT, "gen_ai.system": "anthropic"},
     {"attributes": {"gen_ai.provider.name": "anthropic"}}),
    ("resource deployment and app", CHAT, {"deployment": "canary", "app": "shop"}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [pytest.param(a, e, id=case) for case, a, e in FIELD_TABLE],
)
def test_mapping_table(attributes: dict[str, object], expected: dict[str, object]) -> None:
    event = mapped(attributes)
    assert event is not None
    assert event.request_id == TRACE + SPAN
    for name, value in expected.items():
        assert getattr(event, name) == value, name


@pytest.mark.parametrize(
    ("resource", "deployment", "app"),
    [
        ({"deployment.environment.name": "canary", "service.name": "a"}, "canary", "a"),
        ({"deployment.environment": "blue"}, "blue", ""),
        ({}, "stable", ""),
    ],
)
def test_deployment_and_app_come_from_the_resource(
    resource: dict[str, object], deployment: str, app: str
) -> None:
    event = mapped(CHAT, resource)
    assert event is not None
    assert (event.deployment, event.app) == (deployment, app)


def test_span_status_error_is_an_error_with_its_message() -> None:
    event = mapped(CHAT, error=True, status_message="upstream 503")
    assert event is not None
    assert (event.status, event.error_type) == ("error", "upstream 503")


@pytest.mark.parametrize(
    "attributes",
    [
        {"http.request.method": "GET"},
        {"gen_ai.operation.name": "embeddings", "gen_ai.request.model": "e5"},
        {"gen_ai.operation.name": "execute_tool", "gen_ai.system": "openai",
         "gen_ai.request.model": "gpt-4o"},
        {"openinference.span.kind": "RETRIEVER"},
        {"gen_ai.system": "openai"},  # legacy without a request model: not enough to tell
    ],
    ids=["http", "embeddings", "tool", "retriever", "system-only"],
)  # fmt: skip
def test_spans_that_are_not_llm_calls_map_to_nothing(attributes: dict[str, object]) -> None:
    assert mapped(attributes) is None


def message_event(name: str, **attributes: object) -> SpanEventView:
    return SpanEventView(name, attributes)


# (case, span attributes, span events, expected prompt text, expected response)
CONTENT_TABLE: list[tuple[str, dict[str, object], tuple[SpanEventView, ...], str, str | None]] = [
    ("structured messages as JSON text",
     {"gen_ai.system_instructions": json.dumps([{"type": "text", "content": "Be terse."}]),
      "gen_ai.input.messages": json.dumps([
          {"role": "user", "parts": [{"type": "text", "content": "Hi"},
                                     {"type": "image", "uri": "x"}]},
          {"role": "assistant", "parts": [{"type": "tool_call", "name": "f"}]},
          {"role": "tool", "parts": [{"type": "tool_call_response", "content": "42"}]}]),
      "gen_ai.output.messages": json.dumps([
          {"role": "assistant", "parts": [{"type": "text", "content": "Hello"}]}])},
     (), "Be terse.\nHi\n\n42", "Hello"),
    ("structured messages as OTLP values",
     {"gen_ai.input.messages": [{"role": "user", "parts": [{"type": "text", "content": "Q"}]}],
      "gen_ai.output.messages": [{"role": "assistant",
                                  "parts": [{"type": "text", "content": "A"}]}]},
     (), "Q", "A"),
    ("deprecated prompt and completion text",
     {"gen_ai.prompt": "tell me", "gen_ai.completion": "told"}, (), "tell me", "told"),
    ("deprecated prompt as OpenAI messages",
     {"gen_ai.prompt": json.dumps([{"role": "system", "content": "S"},
                                   {"role": "user", "content": "U"}]),
      "gen_ai.completion": json.dumps([{"role": "assistant", "content": "C"}])},
     (), "S\nU", "C"),
    ("JSON-looking text that is no message stays text",
     {"gen_ai.prompt": '{"email": "x@y.io"}'}, (), '{"email": "x@y.io"}', None),
    ("OpenLLMetry indexed prompt",
     {"gen_ai.prompt.0.role": "user", "gen_ai.prompt.0.content": "P",
      "gen_ai.completion.0.role": "assistant", "gen_ai.completion.0.content": "R"},
     (), "P", "R"),
    ("content events (semconv 1.26)", {},
     (message_event("gen_ai.content.prompt", **{"gen_ai.prompt": "old prompt"}),
      message_event("gen_ai.content.completion", **{"gen_ai.completion": "old answer"})),
     "old prompt", "old answer"),
    ("message and choice events", {},
     (message_event("gen_ai.system.message", content="Sys"),
      message_event("gen_ai.user.message", content="User"),
      message_event("gen_ai.assistant.message", content="Before"),
      message_event("gen_ai.choice", index=0, **{"message.content": "Choice one"}),
      message_event("gen_ai.choice", **{"gen_ai.event.content":
                                        json.dumps({"message": {"content": "Choice two"}})})),
     "Sys\nUser\nBefore", "Choice one\nChoice two"),
    ("OpenInference messages",
     {"llm.input_messages.0.message.role": "user", "llm.input_messages.0.message.content": "I",
      "llm.output_messages.0.message.role": "assistant",
      "llm.output_messages.0.message.content": "O"},
     (), "I", "O"),
    ("OpenInference input and output values",
     {"input.value": "in", "output.value": "out"}, (), "in", "out"),
    ("no content", {}, (), "", None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("attributes", "events", "prompt", "response"),
    [pytest.param(a, e, p, r, id=case) for case, a, e, p, r in CONTENT_TABLE],
)
def test_content_table(
    attributes: dict[str, object],
    events: tuple[SpanEventView, ...],
    prompt: str,
    response: str | None,
) -> None:
    event = mapped({**CHAT, **attributes}, events=events)
    assert event is not None
    assert (event.prompt_text, event.response) == (prompt, response)


def test_structured_messages_keep_their_roles() -> None:
    event = mapped({**CHAT, "gen_ai.input.messages": json.dumps([
        {"role": "user", "parts": [{"type": "text", "content": "a"}]},
        {"role": "assistant", "parts": [{"type": "text", "content": "b"}]},
    ])})  # fmt: skip
    assert event is not None and event.messages is not None
    assert [(m.role, m.content) for m in event.messages] == [("user", "a"), ("assistant", "b")]


def test_the_mapping_is_overridable() -> None:
    mapping = SpanMapping(
        operations=["chat", "embeddings"], model=["acme.model"], default_deployment="prod",
        attributes={"team": ["acme.team"]},
    )  # fmt: skip
    attributes = {"gen_ai.operation.name": "embeddings", "acme.model": "m1", "acme.team": "x"}
    event = mapped(attributes, {}, mapping)
    assert event is not None
    assert (event.model, event.route, event.deployment) == ("m1", "embeddings", "prod")
    assert event.attributes == {"team": "x"}
    assert mapped(CHAT, mapping=mapping) is not None
    assert mapped(CHAT, mapping=SpanMapping(operations=["generate_content"])) is None


def test_the_mapping_is_set_from_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_MONITOR_OTLP__MAPPING__MODEL", '["acme.model"]')
    assert Settings().otlp.mapping.model == ["acme.model"]


# --- the SDK's own encodings ---------------------------------------------------------------


def test_sdk_spans_map_the_same_in_both_encodings() -> None:
    mix = traffic(1)
    for spans in mix.spans:
        proto, json_ = spans_to_events(proto_record(spans)), spans_to_events(json_record(spans))
        assert proto.events == json_.events
        assert proto.spans == json_.spans == len(spans)
    assert is_json(json_record(mix.spans[0])) and not is_json(proto_record(mix.spans[0]))


def test_sdk_spans_one_event_per_genai_span_as_expected() -> None:
    mix = traffic(1)
    events: dict[str, Event] = {}
    ignored = 0
    for record in mix.proto_records():
        decoded = spans_to_events(record)
        ignored += decoded.ignored
        for item in decoded.events:
            events[item.request_id] = decode_event(item.value)
    assert ignored == mix.other_spans
    assert sorted(events) == sorted(e.request_id for e in mix.expected)
    for expected in mix.expected:
        event = events[expected.request_id]
        for name, value in expected.fields.items():
            if name == "prompt":
                assert event.prompt_text == value
            elif name == "leak":
                assert LEAKED_EMAIL in (event.response or "")
            else:
                assert getattr(event, name) == value, (expected.request_id, name)


def test_base64_ids_from_protobufs_own_json_mapping_are_read_too() -> None:
    from google.protobuf import json_format
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    spans = traffic(1).spans[0]
    as_base64 = json.dumps(json_format.MessageToDict(encode_spans(spans))).encode()
    assert spans_to_events(as_base64).events == spans_to_events(proto_record(spans)).events


def test_whitespace_before_json_is_still_json() -> None:
    record = json_record(traffic(1).spans[1])
    assert spans_to_events(b"\n  " + record).events == spans_to_events(record).events


def test_json_ids() -> None:
    assert json_id(TRACE.upper(), 16, "traceId") == TRACE
    assert json_id("", 16, "traceId") == ""
    for bad in ("zz" * 16, "abc", "q" * 24):
        with pytest.raises(SchemaError) as info:
            json_id(bad, 16, "traceId")
        assert info.value.reason == REASON_INVALID_OTLP


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\x0a\xff\xff\xff\xff\x0f", REASON_INVALID_OTLP),  # truncated protobuf
        (b"not otlp at all", REASON_INVALID_OTLP),
        (b"", REASON_INVALID_OTLP),  # an empty request: no span
        (b'{"resourceSpans": [', "invalid_json"),
        (b'{"request_id": "r1", "model": "m"}', REASON_INVALID_OTLP),  # an event, not OTLP
        (b'{"resourceSpans": "no"}', REASON_INVALID_OTLP),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "xyz"}]}]}]}',
         REASON_INVALID_OTLP),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "soon"}]}]}]}',
         REASON_INVALID_OTLP),
    ],
    ids=["truncated", "garbage", "empty", "bad-json", "an-event", "wrong-type", "bad-id",
         "bad-time"],
)  # fmt: skip
def test_records_that_do_not_decode_are_refused(raw: bytes, reason: str) -> None:
    with pytest.raises(SchemaError) as info:
        spans_to_events(raw)
    assert info.value.reason == reason


def test_record_key_is_the_first_trace_id() -> None:
    spans = traffic(1).spans[0]
    context = spans[0].get_span_context()
    assert context is not None
    assert record_key(json_record(spans)) == f"{context.trace_id:032x}".encode()
    assert record_key(b"nope") == b""


# --- the seam with the event path ----------------------------------------------------------


def records(payloads: list[bytes], first_offset: int = 0) -> list[RawMessage]:
    return [
        RawMessage(value, None, "otlp_spans", 0, first_offset + i, 1_700_000_000_000)
        for i, value in enumerate(payloads)
    ]


def test_expand_gives_each_span_a_position_and_refuses_records_whole() -> None:
    mix = traffic(1)
    batch = expand_records(records([*mix.proto_records(), b"garbage"], first_offset=7))
    positions = [m.offset for m in batch.messages]
    assert positions == sorted(set(positions))  # strictly increasing
    assert {record_offset(p) for p in positions} == {7, 8}
    assert len(batch.messages) == mix.genai_spans and batch.ignored == mix.other_spans
    assert all(m.key == decode_event(m.value).request_id.encode() for m in batch.messages)
    [letter] = batch.dead_letters
    assert (letter.offset, letter.raw, letter.reason) == (
        span_position(9, 0),
        b"garbage",
        REASON_INVALID_OTLP,
    )
    assert span_position(9, 0) == 9 * SPANS_PER_RECORD


def test_a_replayed_record_yields_the_same_events_at_the_same_positions() -> None:
    payloads = traffic(1).json_records()
    first, again = expand_records(records(payloads)), expand_records(records(payloads))
    assert first.messages == again.messages


def test_windows_count_every_span_of_a_record_once_even_when_replayed() -> None:
    """N events read from one record are N events in their window, and a replayed record (cut
    at other batch boundaries) adds none: positions, not offsets, are the dedup keys."""
    mix = traffic(3)
    messages = expand_records(records(mix.proto_records())).messages
    pipeline = Pipeline(build_registry(Settings()), window_s=3600)
    aggregator = WindowAggregator({}, allowed_lateness_s=0)
    counted = 0
    for batch in (messages, messages[:5], messages[3:], messages):
        for partial in pipeline.process(batch).partials:
            counted += aggregator.add(partial).counted
    assert counted == mix.genai_spans == len(messages)


def test_forwarded_span_events_name_the_otlp_topic_as_their_source() -> None:
    """The embed role's window contributions for span events are keyed by the OTLP topic and
    the span's position, never by llm.events offsets they could collide with."""
    from types import SimpleNamespace

    from streams.embed import decode_forwarded
    from streams.kafka import forward_headers_from, origin_offset, origin_topic

    [message] = expand_records(records(traffic(1).proto_records()[:1], first_offset=3)).messages[:1]
    record = SimpleNamespace(headers=forward_headers_from(message))
    assert (origin_topic(record), origin_offset(record)) == ("otlp_spans", message.offset)
    assert origin_topic(SimpleNamespace(headers={})) is None
    forwarded = msgspec.structs.replace(message, topic="llm.embed", offset=0)
    out = decode_forwarded(
        [forwarded, forwarded], "llm.events", [message.offset, 5], 1_000_000, ["otlp_spans", None]
    )
    assert [tuple(s) for s in out.sources] == [
        ("otlp_spans", 0, message.offset), ("llm.events", 0, 5),
    ]  # fmt: skip
