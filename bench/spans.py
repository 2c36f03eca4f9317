"""Span ingest vs the JSON event path, on the same events, in one process.

Run: ``.venv/bin/python -m bench.spans [--events N] [--spans-per-record K] [--other-spans R]``.

The generator's traffic (monitor/devtools/generate.py: seeded incidents, PII, errors) becomes
GenAI spans (one chat span each, current attribute names, structured messages), each beside
``R`` spans that are not LLM calls (an HTTP handler, ...), ``K`` GenAI spans to a record, as
the Collector batches them: an ExportTraceServiceRequest per record, protobuf (generated types)
and OTLP/JSON (hex ids). The baseline is the very events the span path maps them to, as JSON
event records: so both sides score identical events (checked) and only the ingest differs.

Two figures per encoding, each the median of ``--repeats`` passes (interleaved):

* **decode**: records to valid events: ``decode_batch`` over the event records vs
  ``expand_records`` (decode the OTLP, map every GenAI span, skip the others) then
  ``decode_batch`` over what it yields (which is what the worker does);
* **score**: the whole score-role pass (``Pipeline.process``: decode, PII and latency/error
  detectors, redaction, window partials) per batch of ``--batch`` events.

Ratios are span-path throughput over the JSON path's (1.0: as fast; 0.5: half as fast).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from monitor.config import Settings
from monitor.devtools.generate import generate_events
from monitor.ingest.decode import RawMessage, decode_batch
from monitor.ingest.events import Event, decode_event
from monitor.ingest.genai_mapping import GenAiMapper
from monitor.ingest.otlp import expand_records
from monitor.scoring.pipeline import Pipeline
from monitor.scoring.registry import build_registry

TOPIC_EVENTS, TOPIC_SPANS = "llm.events", "otlp_spans"
MS = 1_000_000


def _value(value: object) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    return AnyValue(string_value=str(value))


def _attributes(values: dict[str, object]) -> list[KeyValue]:
    return [KeyValue(key=k, value=_value(v)) for k, v in values.items() if v is not None]


def _ids(request_id: str) -> tuple[bytes, bytes]:
    digest = hashlib.sha256(request_id.encode()).digest()
    return digest[:16], digest[16:24]


def genai_span(event: Event) -> tuple[Span, dict[str, object]]:
    """The chat span an instrumented app would emit for ``event``, and its resource."""
    trace_id, span_id = _ids(event.request_id)
    start = event.timestamp_ms * MS
    messages = [{"role": "user", "parts": [{"type": "text", "content": event.prompt_text}]}]
    output = [{"role": "assistant", "parts": [{"type": "text", "content": event.response or ""}]}]
    attributes: dict[str, object] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": event.model,
        "gen_ai.response.model": event.model_version,
        "gen_ai.usage.input_tokens": event.input_tokens,
        "gen_ai.usage.output_tokens": event.output_tokens,
        "gen_ai.response.time_to_first_chunk": (event.ttft_ms or 0) / 1000 or None,
        "gen_ai.input.messages": json.dumps(messages),
        "gen_ai.output.messages": json.dumps(output),
        "error.type": event.error_type or (None if event.status == "ok" else event.status),
    }
    span = Span(
        trace_id=trace_id, span_id=span_id, name=f"chat {event.model}",
        kind=Span.SPAN_KIND_CLIENT, start_time_unix_nano=start,
        end_time_unix_nano=start + int((event.latency_ms or 0) * MS),
        attributes=_attributes(attributes),
        status=Status(
            code=Status.STATUS_CODE_ERROR if event.status != "ok" else Status.STATUS_CODE_UNSET
        ),
    )  # fmt: skip
    resource: dict[str, object] = {
        "service.name": event.app, "deployment.environment.name": event.deployment,
    }  # fmt: skip
    return span, resource


def other_span(parent: Span, index: int) -> Span:
    """A span around the LLM call that is not one (the HTTP handler, a query, ...)."""
    span_id = hashlib.sha256(parent.span_id + bytes([index])).digest()[:8]
    return Span(
        trace_id=parent.trace_id, span_id=span_id,
        name="POST /v1/answer", kind=Span.SPAN_KIND_SERVER,
        start_time_unix_nano=parent.start_time_unix_nano - 5 * MS,
        end_time_unix_nano=parent.end_time_unix_nano + 5 * MS,
        attributes=_attributes({"http.request.method": "POST", "http.response.status_code": 200}),
    )  # fmt: skip


def otlp_records(
    events: Sequence[Event], spans_per_record: int, other_spans: int
) -> list[ExportTraceServiceRequest]:
    """``spans_per_record`` GenAI spans (and their other spans) per request, one resource
    (service, deployment) per group of spans sharing it, as the Collector batches them."""
    requests = []
    for start in range(0, len(events), spans_per_record):
        by_resource: dict[tuple[str, str], list[Span]] = {}
        resources: dict[tuple[str, str], dict[str, object]] = {}
        for event in events[start : start + spans_per_record]:
            span, resource = genai_span(event)
            key = (event.app, event.deployment)
            resources[key] = resource
            group = by_resource.setdefault(key, [])
            group.extend(other_span(span, i) for i in range(other_spans))
            group.append(span)
        requests.append(ExportTraceServiceRequest(resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=_attributes(resources[key])),
                scope_spans=[ScopeSpans(spans=spans)],
            )
            for key, spans in by_resource.items()
        ]))  # fmt: skip
    return requests


def to_json(request: ExportTraceServiceRequest) -> bytes:
    """OTLP/JSON as the Collector writes it: hex ids, enums as integers, int64 as strings."""
    body = json_format.MessageToDict(request, use_integers_for_enums=True)
    for resource_spans in body.get("resourceSpans", []):
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                for key in ("traceId", "spanId"):
                    span[key] = base64.b64decode(span[key]).hex()
    return json.dumps(body, separators=(",", ":")).encode()


def messages(values: Sequence[bytes], topic: str) -> list[RawMessage]:
    return [RawMessage(v, None, topic, 0, i, 0) for i, v in enumerate(values)]


def medians(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each run, the runs interleaved (a, b, c, a, b, c, ...) so a change in
    the machine's load touches every side alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--spans-per-record", type=int, default=50)
    parser.add_argument("--other-spans", type=int, default=1, help="non-LLM spans per LLM span")
    parser.add_argument("--batch", type=int, default=1000, help="events per scoring batch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    source = [
        decode_event(value) for _, value in generate_events(args.events, seed=args.seed,
                                                             bad_fraction=0.0)
    ]  # fmt: skip
    requests = otlp_records(source, args.spans_per_record, args.other_spans)
    proto = messages([r.SerializeToString() for r in requests], TOPIC_SPANS)
    as_json = messages([to_json(r) for r in requests], TOPIC_SPANS)
    mapper = GenAiMapper()
    mapped = expand_records(proto, mapper)
    if [m.value for m in expand_records(as_json, mapper).messages] != [
        m.value for m in mapped.messages
    ]:
        raise SystemExit("the two encodings map to different events")
    baseline = messages([m.value for m in mapped.messages], TOPIC_EVENTS)  # the same events
    count = len(baseline)
    if count != len(source):
        raise SystemExit(f"{count} events from {len(source)} GenAI spans")

    def decode_events() -> None:
        decode_batch(baseline, max_bytes=1_000_000, now_ms=lambda: 0)

    def decode_spans(records: list[RawMessage]) -> Callable[[], None]:
        def run() -> None:
            batch = expand_records(records, mapper)
            decode_batch(batch.messages, max_bytes=1_000_000, now_ms=lambda: 0)

        return run

    pipeline = Pipeline(build_registry(Settings()), window_s=60)

    def score(records: list[RawMessage], spans: bool) -> Callable[[], None]:
        per_record = max(1, args.batch // args.spans_per_record) if spans else args.batch

        def run() -> None:
            for start in range(0, len(records), per_record):
                chunk = records[start : start + per_record]
                pipeline.process(expand_records(chunk, mapper).messages if spans else chunk)

        return run

    decode = medians(
        {"json_events": decode_events, "otlp_proto": decode_spans(proto),
         "otlp_json": decode_spans(as_json)},
        args.repeats,
    )  # fmt: skip
    scored = medians(
        {"json_events": score(baseline, False), "otlp_proto": score(proto, True),
         "otlp_json": score(as_json, True)},
        args.repeats,
    )  # fmt: skip
    bytes_per_event = {
        "json_events": sum(len(m.value) for m in baseline) / count,
        "otlp_proto": sum(len(m.value) for m in proto) / count,
        "otlp_json": sum(len(m.value) for m in as_json) / count,
    }
    result: dict[str, Any] = {
        "events": count,
        "spans_per_record": args.spans_per_record,
        "other_spans_per_event": args.other_spans,
        "bytes_per_event": {k: round(v) for k, v in bytes_per_event.items()},
        "decode_us_per_event": {k: round(v / count * 1e6, 2) for k, v in decode.items()},
        "decode_ratio_proto": round(decode["json_events"] / decode["otlp_proto"], 3),
        "decode_ratio_json": round(decode["json_events"] / decode["otlp_json"], 3),
        "score_events_per_s": {k: round(count / v) for k, v in scored.items()},
        "score_ratio_proto": round(scored["json_events"] / scored["otlp_proto"], 3),
        "score_ratio_json": round(scored["json_events"] / scored["otlp_json"], 3),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
