"""Spans from a real GenAI instrumentation library become events (issue 13).

OpenLLMetry's ``opentelemetry-instrumentation-openai`` (the official ``-v2`` package does not
install beside wrapt 2 here) instruments the real ``openai`` client,
which calls a loopback OpenAI-compatible server; the SDK's own OTLP encoder turns the finished
spans into the record the Collector's Kafka exporter would write, and the span ingest maps it.
What it checks is what an app team gets without writing a line: one event per chat call, the
model, tokens, latency, status and, with content capture on, the prompt and the answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

pytest.importorskip("openai")
instrumentation = pytest.importorskip("opentelemetry.instrumentation.openai")

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans  # noqa: E402
from opentelemetry.sdk.resources import Resource  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

from monitor.ingest.events import decode_event  # noqa: E402
from monitor.ingest.otlp import spans_to_events  # noqa: E402
from monitor.proxy.loopback import LoopbackModel  # noqa: E402

LEAK = "call me at jane.doe@corp-example.com"


@pytest.fixture
def traced(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, InMemorySpanExporter, str]]:
    """An instrumented OpenAI client pointed at a loopback model, and the span exporter."""
    import openai

    monkeypatch.setenv("TRACELOOP_TRACE_CONTENT", "true")  # prompts and answers on the spans
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": "support-bot", "deployment.environment.name": "canary"}
        )
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumentor = instrumentation.OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    model = LoopbackModel("upstream")
    base_url = model.start_in_thread()
    try:
        client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="test", max_retries=0)
        yield client, exporter, base_url
    finally:
        instrumentor.uninstrument()
        model.stop_thread()


def test_real_instrumented_calls_become_one_event_each(
    traced: tuple[Any, InMemorySpanExporter, str],
) -> None:
    import openai

    client, exporter, _ = traced
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"hello, {LEAK}"}]
    )
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "second"}], max_tokens=5
    )
    unreachable = client.with_options(base_url="http://127.0.0.1:9/v1")  # an error span
    with pytest.raises(openai.APIError):
        unreachable.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
    spans = exporter.get_finished_spans()
    assert len(spans) >= 3, [s.name for s in spans]
    record = encode_spans(spans).SerializeToString()

    mapped = spans_to_events(record)
    events = [decode_event(e.value) for e in mapped.events]
    assert len(events) == 3
    first, second, failed = sorted(events, key=lambda e: e.timestamp_ms)

    assert first.model == "gpt-4o-mini"
    assert first.deployment == "canary" and first.app == "support-bot"
    assert first.route == "chat"
    assert first.status == "ok" and failed.status == "error"
    assert first.latency_ms is not None and first.latency_ms >= 0
    assert first.input_tokens is not None and first.output_tokens is not None
    assert LEAK in first.prompt_text
    assert first.response
    assert second.status == "ok"
    assert len({first.request_id, second.request_id, failed.request_id}) == 3
    # request_id = trace id + span id, hex: the same span always yields the same event.
    span_ids = {format(s.context.trace_id, "032x") + format(s.context.span_id, "016x")
                for s in spans}  # fmt: skip
    assert {first.request_id, second.request_id, failed.request_id} <= span_ids
    assert msgspec.json.decode(mapped.events[0].value)["request_id"] in span_ids
