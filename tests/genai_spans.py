"""GenAI traces made by the real OpenTelemetry SDK, encoded by its own OTLP encoder.

``traffic`` records a mix the span ingest must tell apart, as instrumented apps emit it: chat
spans with the current GenAI attributes (structured messages), with the deprecated ones (usage
prompt/completion tokens, ``gen_ai.prompt``/``gen_ai.completion`` events, message and choice
events, no operation name), OpenInference's LLM spans, error spans, a PII leak in a response,
and the spans around them that are not LLM calls (HTTP handlers, a database query, an
embeddings call). ``proto_record`` / ``json_record`` encode the spans as the Collector's Kafka
exporter (``otlp_proto``) and its file exporter (OTLP/JSON, hex ids) write them.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode, Tracer

LEAKED_EMAIL = "jane.doe@corp-example.com"
MS = 1_000_000  # nanoseconds


@dataclass
class Expected:
    """What one GenAI span must become."""

    request_id: str
    fields: dict[str, Any]


@dataclass
class Traffic:
    """Finished spans per resource, and what every GenAI span must map to."""

    spans: list[list[ReadableSpan]] = field(default_factory=list)
    expected: list[Expected] = field(default_factory=list)
    other_spans: int = 0  # spans that are not LLM calls

    @property
    def genai_spans(self) -> int:
        return len(self.expected)

    def proto_records(self) -> list[bytes]:
        return [proto_record(spans) for spans in self.spans]

    def json_records(self) -> list[bytes]:
        return [json_record(spans) for spans in self.spans]


def provider(service: str, **resource: str) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider(
        resource=Resource.create({"service.name": service, **resource})
    )
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return tracer_provider, exporter


def request_id(span: ReadableSpan) -> str:
    context = span.get_span_context()
    assert context is not None
    return f"{context.trace_id:032x}{context.span_id:016x}"


def _timed(tracer: Tracer, name: str, start_ns: int, duration_ms: float, **attrs: Any) -> Any:
    """A span started at ``start_ns``; the caller ends it at start + ``duration_ms``."""
    span = tracer.start_span(name, start_time=start_ns, attributes=attrs or None)
    return span, start_ns + int(duration_ms * MS)


def traffic(n: int = 1, *, start_ns: int | None = None) -> Traffic:
    """``n`` rounds of the mix, each round's spans in two resources (two records)."""
    out = Traffic()
    base = start_ns if start_ns is not None else time.time_ns() - 60_000 * MS
    for round_ in range(n):
        at = base + round_ * 1_000 * MS
        _current(out, at)
        _deprecated(out, at)
    return out


def _current(out: Traffic, at: int) -> None:
    """A canary chat app on current conventions, plus OpenInference and non-LLM spans."""
    tracer_provider, exporter = provider("chat-app", **{"deployment.environment.name": "canary"})
    tracer = tracer_provider.get_tracer("chat-app")
    handler, _ = _timed(tracer, "POST /v1/chat", at, 2000, **{"http.request.method": "POST"})
    with trace.use_span(handler, end_on_exit=False):
        chat, end = _timed(
            tracer, "chat gpt-4o", at + 10 * MS, 850,
            **{
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.response.model": "gpt-4o-2024-08-06",
                "gen_ai.usage.input_tokens": 42,
                "gen_ai.usage.output_tokens": 17,
                "gen_ai.response.finish_reasons": ["stop"],
                "gen_ai.conversation.id": "conv-1",
                "gen_ai.response.time_to_first_chunk": 0.125,
                "gen_ai.system_instructions": json.dumps(
                    [{"type": "text", "content": "You are a helpful assistant."}]
                ),
                "gen_ai.input.messages": json.dumps(
                    [{"role": "user", "parts": [{"type": "text", "content": "What is OTLP?"}]}]
                ),
                "gen_ai.output.messages": json.dumps([{
                    "role": "assistant", "finish_reason": "stop",
                    "parts": [{"type": "text", "content": "A protocol for telemetry."}],
                }]),
            },
        )  # fmt: skip
        chat.end(end)
        out.expected.append(Expected(request_id(chat), {
            "model": "gpt-4o", "model_version": "gpt-4o-2024-08-06", "deployment": "canary",
            "app": "chat-app", "route": "chat", "latency_ms": 850.0, "ttft_ms": 125.0,
            "input_tokens": 42, "output_tokens": 17, "status": "ok",
            "prompt": "You are a helpful assistant.\nWhat is OTLP?",
            "response": "A protocol for telemetry.",
            "attributes": {"gen_ai.provider.name": "openai",
                           "gen_ai.response.finish_reasons": "stop",
                           "gen_ai.conversation.id": "conv-1"},
        }))  # fmt: skip

        leak, end = _timed(
            tracer, "chat gpt-4o", at + 900 * MS, 400,
            **{
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.usage.input_tokens": 12,
                "gen_ai.usage.output_tokens": 20,
                # structured (an OTLP kvlist), not JSON text: the SDK sends either
                "gen_ai.input.messages": [
                    {"role": "user", "parts": [{"type": "text", "content": "Who runs billing?"}]}
                ],
                "gen_ai.output.messages": [{
                    "role": "assistant",
                    "parts": [{"type": "text", "content": f"Write to {LEAKED_EMAIL} today."}],
                }],
            },
        )  # fmt: skip
        leak.end(end)
        out.expected.append(Expected(request_id(leak), {
            "model": "gpt-4o", "model_version": "gpt-4o", "deployment": "canary",
            "latency_ms": 400.0, "input_tokens": 12, "output_tokens": 20, "status": "ok",
            "prompt": "Who runs billing?", "leak": True,
        }))  # fmt: skip

        failed, end = _timed(
            tracer, "chat gpt-4o", at + 1400 * MS, 30_000,
            **{"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o",
               "error.type": "RateLimitError"},
        )  # fmt: skip
        failed.set_status(Status(StatusCode.ERROR, "429 Too Many Requests"))
        failed.end(end)
        out.expected.append(Expected(request_id(failed), {
            "model": "gpt-4o", "deployment": "canary", "latency_ms": 30_000.0,
            "status": "error", "error_type": "RateLimitError", "prompt": "", "response": None,
        }))  # fmt: skip

        timeout, end = _timed(
            tracer, "text_completion davinci", at + 1500 * MS, 60_000,
            **{"gen_ai.operation.name": "text_completion", "gen_ai.request.model": "davinci"},
        )  # fmt: skip
        timeout.set_status(Status(StatusCode.ERROR, "deadline exceeded"))
        timeout.end(end)
        out.expected.append(Expected(request_id(timeout), {
            "model": "davinci", "route": "text_completion", "status": "error",
            "error_type": "deadline exceeded",
        }))  # fmt: skip

        openinference, end = _timed(
            tracer, "ChatCompletion", at + 1600 * MS, 250,
            **{
                "openinference.span.kind": "LLM",
                "llm.model_name": "claude-3-5-sonnet",
                "llm.provider": "anthropic",
                "llm.token_count.prompt": 9,
                "llm.token_count.completion": 4,
                "llm.input_messages.0.message.role": "system",
                "llm.input_messages.0.message.content": "Be brief.",
                "llm.input_messages.1.message.role": "user",
                "llm.input_messages.1.message.content": "Say hi",
                "output.value": "Hi!",
            },
        )  # fmt: skip
        openinference.end(end)
        out.expected.append(Expected(request_id(openinference), {
            "model": "claude-3-5-sonnet", "route": "llm", "input_tokens": 9, "output_tokens": 4,
            "prompt": "Be brief.\nSay hi", "response": "Hi!",
            "attributes": {"gen_ai.provider.name": "anthropic"},
        }))  # fmt: skip

        for name, attrs in (
            ("SELECT users", {"db.system.name": "postgresql"}),
            ("embeddings text-embedding-3-small",
             {"gen_ai.operation.name": "embeddings",
              "gen_ai.request.model": "text-embedding-3-small"}),
        ):  # fmt: skip
            other, end = _timed(tracer, name, at + 1700 * MS, 5, **attrs)
            other.end(end)
            out.other_spans += 1
    handler.end(at + 2000 * MS)
    out.other_spans += 1
    out.spans.append(list(exporter.get_finished_spans()))


def _deprecated(out: Traffic, at: int) -> None:
    """A stable app on older conventions: deprecated names and span events."""
    tracer_provider, exporter = provider("legacy-app", **{"deployment.environment": "stable"})
    tracer = tracer_provider.get_tracer("legacy-app")
    legacy, end = _timed(
        tracer, "openai.chat", at + 20 * MS, 1200,
        **{
            "gen_ai.system": "openai",  # no gen_ai.operation.name: semantic conventions 1.26
            "gen_ai.request.model": "gpt-3.5-turbo",
            "gen_ai.usage.prompt_tokens": 30,
            "gen_ai.usage.completion_tokens": 8,
        },
    )  # fmt: skip
    legacy.add_event("gen_ai.content.prompt", {
        "gen_ai.prompt": json.dumps([{"role": "user", "content": "Summarise the ticket"}])
    })  # fmt: skip
    legacy.add_event("gen_ai.content.completion", {
        "gen_ai.completion": json.dumps([{"role": "assistant", "content": "Printer is down."}])
    })  # fmt: skip
    legacy.end(end)
    out.expected.append(Expected(request_id(legacy), {
        "model": "gpt-3.5-turbo", "model_version": "gpt-3.5-turbo", "deployment": "stable",
        "app": "legacy-app", "route": "chat", "latency_ms": 1200.0, "input_tokens": 30,
        "output_tokens": 8, "prompt": "Summarise the ticket", "response": "Printer is down.",
        "attributes": {"gen_ai.provider.name": "openai"},
    }))  # fmt: skip

    events, end = _timed(
        tracer, "chat gpt-4o-mini", at + 1300 * MS, 300,
        **{"gen_ai.operation.name": "chat", "gen_ai.system": "openai",
           "gen_ai.request.model": "gpt-4o-mini", "gen_ai.usage.prompt_tokens": 5},
    )  # fmt: skip
    events.add_event("gen_ai.system.message", {"content": "Answer in French."})
    events.add_event("gen_ai.user.message", {"content": "Good morning"})
    events.add_event("gen_ai.choice", {
        "index": 0, "finish_reason": "stop",
        "gen_ai.event.content": json.dumps({"message": {"content": "Bonjour"}}),
    })  # fmt: skip
    events.end(end)
    out.expected.append(Expected(request_id(events), {
        "model": "gpt-4o-mini", "input_tokens": 5, "prompt": "Answer in French.\nGood morning",
        "response": "Bonjour",
    }))  # fmt: skip

    plain, end = _timed(
        tracer, "chat gpt-4o-mini", at + 1700 * MS, 100,
        **{"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
           "gen_ai.prompt": "plain prompt text", "gen_ai.completion": "plain answer"},
    )  # fmt: skip
    plain.end(end)
    out.expected.append(Expected(request_id(plain), {
        "prompt": "plain prompt text", "response": "plain answer",
    }))  # fmt: skip

    job, end = _timed(tracer, "nightly-job", at, 5)
    job.end(end)
    out.other_spans += 1
    out.spans.append(list(exporter.get_finished_spans()))


def proto_record(spans: Sequence[ReadableSpan]) -> bytes:
    """The spans as the Collector's Kafka exporter writes them (``encoding: otlp_proto``)."""
    return bytes(encode_spans(spans).SerializeToString())


def json_record(spans: Sequence[ReadableSpan]) -> bytes:
    """The spans as OTLP/JSON, as the Collector writes it: lowerCamelCase names, enums as
    integers, 64-bit integers as strings, and trace/span ids in hex (protobuf's own JSON
    mapping writes bytes as base64: the ids are rewritten)."""
    body = json_format.MessageToDict(encode_spans(spans), use_integers_for_enums=True)
    for resource_spans in body.get("resourceSpans", []):
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
                for link in span.get("links", []):
                    for key in ("traceId", "spanId"):
                        if key in link:
                            link[key] = base64.b64decode(link[key]).hex()
    return json.dumps(body, separators=(",", ":")).encode()
