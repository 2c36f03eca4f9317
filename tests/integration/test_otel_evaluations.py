"""Findings out as OTLP log records, end to end: a real worker with
``otlp.publish_evaluations`` on, events from the event path and from OTLP spans (the real SDK),
and the ``otlp_logs`` topic read back as the Collector's Kafka receiver reads it: one
``ExportLogsServiceRequest`` per record, one ``gen_ai.evaluation.result`` per stored finding,
on the span it judges when the event came from one."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from monitor.client import produce
from monitor.devtools.generate import generate_events
from monitor.otel.evaluations import EVENT_NAME
from tests.conftest import WorkerHarness
from tests.e2e.test_pipeline_e2e import query, split
from tests.genai_spans import traffic

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

LOGS = "otlp_logs"


async def read_logs(bootstrap: str) -> list[tuple[bytes, ExportLogsServiceRequest]]:
    """Every record of the logs topic so far, decoded: (key, request)."""
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await reader.start()
    try:
        await reader.topics()
        partitions = [
            TopicPartition(LOGS, p) for p in sorted(reader.partitions_for_topic(LOGS) or ())
        ]
        if not partitions:
            return []
        reader.assign(partitions)
        await reader.seek_to_beginning(*partitions)
        out = []
        while batches := await reader.getmany(timeout_ms=1000, max_records=10_000):
            for records in batches.values():
                out += [
                    (r.key or b"", ExportLogsServiceRequest.FromString(r.value)) for r in records
                ]
        return out
    finally:
        await reader.stop()


def attrs(record: LogRecord) -> dict[str, Any]:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in record.attributes}


def test_every_stored_finding_is_published_on_its_span(workers: WorkerHarness) -> None:
    spans = traffic(2)
    events = list(generate_events(60, seed=11, bad_fraction=0.0))
    valid, _ = split(events)
    expected = valid + spans.genai_spans
    workers.env_overrides["LLM_MONITOR_OTLP__PUBLISH_EVALUATIONS"] = "true"
    workers.start()
    asyncio.run(produce(workers.bootstrap, "otlp_spans", [(b"", r) for r in spans.proto_records()]))
    asyncio.run(produce(workers.bootstrap, "llm.events", events))

    def published() -> float:
        return workers.metric("llm_monitor_otel_evaluations_total", outcome="published")

    workers.wait_for(
        lambda: (
            workers.metric("llm_monitor_sink_rows_total", table="events") >= expected
            and published() >= workers.metric("llm_monitor_sink_rows_total", table="findings") > 0
        ),
        timeout_s=180,
        what=f"{expected} events stored and every stored finding published",
    )
    count = int(published())
    assert workers.metric("llm_monitor_otel_evaluations_total", outcome="undecodable") == 0

    logs: list[tuple[bytes, ExportLogsServiceRequest]] = []

    def all_read() -> bool:
        nonlocal logs
        logs = asyncio.run(read_logs(workers.bootstrap))
        return sum(len(s.log_records) for _, r in logs for rl in r.resource_logs
                   for s in rl.scope_logs) >= count  # fmt: skip

    workers.wait_for(all_read, timeout_s=60, what=f"{count} log records on {LOGS}")
    workers.stop_all()

    span_ids = {e.request_id for e in spans.expected}
    event_ids = {json.loads(value)["request_id"] for _, value in events}
    published_pairs: set[tuple[str, str]] = set()
    on_spans = 0
    for key, request in logs:
        [resource_logs] = request.resource_logs
        service = {kv.key: kv.value.string_value for kv in resource_logs.resource.attributes}
        assert service == {"service.name": "llm-monitor"}
        request_ids = set()
        for scope in resource_logs.scope_logs:
            for record in scope.log_records:
                a = attrs(record)
                assert record.event_name == EVENT_NAME and a["event.name"] == EVENT_NAME
                assert 0.0 <= a["gen_ai.evaluation.score.value"] <= 1.0
                assert a["gen_ai.evaluation.score.label"] == (
                    "fail" if a["llm_monitor.flagged"] else "pass"
                )
                request_id = a["llm_monitor.request_id"]
                request_ids.add(request_id)
                if record.trace_id:
                    assert request_id == record.trace_id.hex() + record.span_id.hex()
                    assert request_id in span_ids and key == record.trace_id.hex().encode()
                    assert "gen_ai.response.id" not in a
                    on_spans += 1
                else:
                    assert request_id in event_ids and key == request_id.encode()
                    assert record.span_id == b"" and a["gen_ai.response.id"] == request_id
                published_pairs.add((request_id, a["gen_ai.evaluation.name"]))
        assert len(request_ids) == 1  # one event's findings per record
    assert on_spans > 0

    stored = query(workers, "SELECT request_id, detector FROM llm_monitor.findings FINAL")
    assert published_pairs == {(r["request_id"], r["detector"]) for r in stored}
