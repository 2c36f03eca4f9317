"""Findings as OTLP log records (gen_ai.evaluation.result): the mapping of one finding, the
trace context read from span request ids, and whole scored records through the generated
``ExportLogsServiceRequest`` (round trip), span events from the real SDK included."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, SeverityNumber

from detectors.base import Finding
from monitor.config import Settings
from monitor.errors import ConfigError
from monitor.ingest.decode import RawMessage
from monitor.ingest.otlp import expand_records
from monitor.otel.evaluations import (
    EVENT_NAME,
    SpanContext,
    evaluation_records,
    explanation,
    log_record,
    scored_to_records,
    span_context,
)
from monitor.scoring.pipeline import Pipeline
from monitor.scoring.registry import build_registry
from monitor.scoring.rows import FindingRow, ScoredBatch
from streams.evaluations import check_evaluations
from streams.score import prepare
from tests.genai_spans import traffic

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"
EVENT_MS = 1_700_000_000_123
OBSERVED_NS = 1_700_000_005_000_000_000
_msgpack = msgspec.msgpack.Encoder()


def row(request_id: str, detector: str = "toxicity", *, flagged: bool = True,
        score: float = 0.91, category: str = "toxic",
        details: dict[str, str] | None = None) -> FindingRow:  # fmt: skip
    finding = Finding(
        request_id, detector, "1.2", score, flagged, category,
        details={"threshold": "0.800"} if details is None else details,
    )  # fmt: skip
    return FindingRow(
        finding=finding, event_time_ms=EVENT_MS, model="gpt-4o", model_version="gpt-4o-0806",
        deployment="canary", route="chat",
    )  # fmt: skip


def attributes(pairs: list[KeyValue] | LogRecord) -> dict[str, object]:
    kvs = pairs.attributes if isinstance(pairs, LogRecord) else pairs
    return {kv.key: _value(kv.value) for kv in kvs}


def _value(value: AnyValue) -> object:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@pytest.mark.parametrize(
    ("request_id", "expected"),
    [
        (TRACE + SPAN, SpanContext(bytes.fromhex(TRACE), bytes.fromhex(SPAN))),
        ((TRACE + SPAN).upper(), SpanContext(bytes.fromhex(TRACE), bytes.fromhex(SPAN))),
        ("0" * 32 + SPAN, None),  # the invalid (all-zero) trace id
        (TRACE + "0" * 16, None),  # the invalid span id
        (TRACE, None),  # a trace id alone
        (TRACE + SPAN + "00", None),
        ("z" * 48, None),  # 48 characters, not hex
        ("9f1c2a44-7b0e-4c1d-a3f2-5e8d7c6b5a49", None),  # a UUID
        ("chatcmpl-AbC123", None),
        ("", None),
    ],
)
def test_span_context_is_read_only_from_span_request_ids(
    request_id: str, expected: SpanContext | None
) -> None:
    assert span_context(request_id) == expected


@pytest.mark.parametrize(
    ("details", "expected"),
    [
        ({"grade": "2", "explanation": "Off topic."}, "Off topic."),
        ({"threshold": "0.800", "prompt_score": "0.120"}, "prompt_score=0.120, threshold=0.800"),
        ({}, ""),
    ],
)
def test_explanation(details: dict[str, str], expected: str) -> None:
    assert explanation(details) == expected


def test_a_finding_from_a_span_is_a_record_on_that_span() -> None:
    record = log_record(row(TRACE + SPAN), OBSERVED_NS)
    assert record.event_name == EVENT_NAME
    assert record.trace_id == bytes.fromhex(TRACE) and record.span_id == bytes.fromhex(SPAN)
    assert record.time_unix_nano == EVENT_MS * 1_000_000
    assert record.observed_time_unix_nano == OBSERVED_NS
    assert record.severity_number == SeverityNumber.SEVERITY_NUMBER_INFO
    assert record.severity_text == "INFO"
    assert attributes(record) == {
        "event.name": "gen_ai.evaluation.result",
        "gen_ai.evaluation.name": "toxicity",
        "gen_ai.evaluation.score.value": 0.91,
        "gen_ai.evaluation.score.label": "fail",
        "gen_ai.evaluation.explanation": "threshold=0.800",
        "gen_ai.request.model": "gpt-4o",
        "llm_monitor.request_id": TRACE + SPAN,
        "llm_monitor.model_version": "gpt-4o-0806",
        "llm_monitor.deployment": "canary",
        "llm_monitor.route": "chat",
        "llm_monitor.detector_version": "1.2",
        "llm_monitor.flagged": True,
        "llm_monitor.category": "toxic",
    }


def test_a_finding_without_a_span_names_the_call_by_response_id() -> None:
    record = log_record(
        row("req-42", "pii", flagged=False, score=0.0, category="clean", details={}), OBSERVED_NS
    )
    assert record.trace_id == b"" and record.span_id == b""
    attrs = attributes(record)
    assert attrs["gen_ai.response.id"] == attrs["llm_monitor.request_id"] == "req-42"
    assert attrs["gen_ai.evaluation.score.label"] == "pass"
    assert attrs["gen_ai.evaluation.score.value"] == 0.0
    assert "gen_ai.evaluation.explanation" not in attrs  # nothing to explain


def test_a_judge_reply_that_could_not_be_read_is_an_error() -> None:
    details = {"parse_error": "no grade", "output": "hmm"}
    attrs = attributes(log_record(row("req-1", "judge", flagged=False, score=0.0,
                                      category="parse_error", details=details), OBSERVED_NS))  # fmt: skip
    assert attrs["error.type"] == "parse_error"


def test_one_request_per_event_round_trips_through_the_generated_types() -> None:
    other = "f" * 32 + "1" * 16
    batch = ScoredBatch(
        events=[],
        findings=[
            row(TRACE + SPAN),
            row("req-7", "pii"),
            row(TRACE + SPAN, "injection"),
            row(other, "latency_errors"),
        ],  # fmt: skip
    )
    out = evaluation_records(batch, OBSERVED_NS)
    assert [(r.key, r.findings) for r in out] == [
        (TRACE.encode(), 2), (b"req-7", 1), (b"f" * 32, 1),
    ]  # fmt: skip
    request = ExportLogsServiceRequest.FromString(out[0].value)
    [resource_logs] = request.resource_logs
    assert attributes(list(resource_logs.resource.attributes)) == {"service.name": "llm-monitor"}
    [scope_logs] = resource_logs.scope_logs
    assert scope_logs.scope.name == "llm_monitor.evaluations"
    names = [attributes(r)["gen_ai.evaluation.name"] for r in scope_logs.log_records]
    assert names == ["toxicity", "injection"]
    assert {(r.trace_id.hex(), r.span_id.hex()) for r in scope_logs.log_records} == {(TRACE, SPAN)}
    assert scope_logs.log_records[0] == log_record(row(TRACE + SPAN), OBSERVED_NS)


def test_an_undecodable_scored_record_is_counted_and_skipped() -> None:
    good = _msgpack.encode(ScoredBatch(events=[], findings=[row("req-1")]))
    empty = _msgpack.encode(ScoredBatch(events=[], findings=[]))
    records, undecodable = scored_to_records([good, b"\xc1garbage", empty], lambda: OBSERVED_NS)
    assert undecodable == 1
    assert [r.key for r in records] == [b"req-1"]


def test_span_events_through_the_scorer_come_back_on_their_spans() -> None:
    """Spans from the real SDK, expanded and scored as the score role does: every finding is
    one log record, on the span its event was read from; the PII leak is a failure."""
    mix = traffic(1)
    messages = expand_records([
        RawMessage(value, None, "otlp_spans", 0, i, 1_700_000_000_000)
        for i, value in enumerate(mix.proto_records())
    ]).messages  # fmt: skip
    scored = [v for part in prepare(Pipeline(build_registry(Settings())), messages)
              for v in part.scored]  # fmt: skip
    findings = [r for v in scored for r in msgspec.msgpack.decode(v, type=ScoredBatch).findings]
    assert findings
    records, undecodable = scored_to_records(scored, lambda: OBSERVED_NS)
    assert undecodable == 0
    assert sum(r.findings for r in records) == len(findings)
    ids = {e.request_id for e in mix.expected}
    leaks = {e.request_id for e in mix.expected if "leak" in e.fields}
    seen: list[tuple[str, object, object]] = []
    for record in records:
        [resource_logs] = ExportLogsServiceRequest.FromString(record.value).resource_logs
        for log in resource_logs.scope_logs[0].log_records:
            request_id = log.trace_id.hex() + log.span_id.hex()
            assert request_id in ids and record.key == log.trace_id.hex().encode()
            attrs = attributes(log)
            seen.append((request_id, attrs["gen_ai.evaluation.name"],
                         attrs["gen_ai.evaluation.score.label"]))  # fmt: skip
    assert len(seen) == len(findings)
    assert leaks
    assert {rid for rid, name, label in seen if name == "pii" and label == "fail"} == leaks


def test_publishing_to_no_topic_is_refused() -> None:
    check_evaluations(Settings())  # off: nothing to check
    on = Settings.model_validate({"otlp": {"publish_evaluations": True}})
    assert on.kafka.otlp_logs_topic == "otlp_logs"
    check_evaluations(on)
    with pytest.raises(ConfigError, match="OTLP_LOGS_TOPIC"):
        check_evaluations(
            Settings.model_validate(
                {"otlp": {"publish_evaluations": True}, "kafka": {"otlp_logs_topic": ""}}
            )
        )


@pytest.mark.parametrize(("on", "roles"), [(True, ["all"]), (True, ["sink"]), (False, ["all"]),
                                           (True, ["score"])])  # fmt: skip
def test_the_publisher_runs_with_the_sink_role_when_on(
    on: bool, roles: list[str], tmp_path: Path
) -> None:
    from streams.app import create_app
    from streams.batches import batch_consumers

    settings = Settings.model_validate({
        "kafka": {"bootstrap_servers": "127.0.0.1:9"}, "otlp": {"publish_evaluations": on},
        "roles": roles, "data_dir": str(tmp_path),
    })  # fmt: skip
    groups = {c.group for c in batch_consumers(create_app(settings))}
    publishing = any(g.endswith("-evaluations.llm.scored") for g in groups)
    assert publishing == (on and roles != ["score"])
