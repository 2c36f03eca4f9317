"""One batch through the pure pipeline: DLQ records, findings, redaction, partials."""

from __future__ import annotations

import json

from detectors.base import DetectorRegistry
from detectors.latency_errors import LatencyErrorsDetector
from detectors.pii import PiiDetector, PiiScanner
from monitor.ingest.decode import RawMessage
from monitor.scoring.pipeline import Pipeline


def message(offset: int, value: bytes) -> RawMessage:
    return RawMessage(value, b"k", "llm.events", 2, offset, 1_795_514_400_000)


def event(i: int, **extra: object) -> bytes:
    body = {"request_id": f"r{i}", "timestamp": 1_795_514_400_000 + i, "model": "m",
            "model_version": "v1", "prompt": "I am bob@example.com", "response": "Hi!",
            "latency_ms": 120.0, **extra}  # fmt: skip
    return json.dumps(body).encode()


def pipeline(redact: bool = True) -> Pipeline:
    registry = DetectorRegistry([PiiDetector(), LatencyErrorsDetector(slow_ms=1000)])
    return Pipeline(registry, redact_pii=redact, window_s=60, wall_clock_ms=lambda: 42)


def test_bad_messages_become_dead_letters_with_raw_bytes_and_origin() -> None:
    result = pipeline().process([message(7, b"{oops"), message(8, event(1))])
    (dead,) = result.dead_letters
    assert (dead.raw, dead.reason, dead.topic, dead.partition, dead.offset) == (
        b"{oops", "invalid_json", "llm.events", 2, 7,
    )  # fmt: skip
    assert dead.received_at_ms == 42
    assert len(result.scored.events) == 1


def test_text_is_redacted_before_it_leaves_the_pipeline() -> None:
    raw = event(1, response="Call Dana at (415) 555-2671", context=["card 4111111111111111"],
                trace="bob@example.com")  # fmt: skip
    row = pipeline().process([message(1, raw)]).scored.events[0]
    assert row.prompt == "I am <EMAIL>"
    assert row.response == "Call Dana at <PHONE>"
    assert row.context == ["card <CREDIT_CARD>"]
    assert row.extra == {"trace": '"<EMAIL>"'}
    assert row.pii_types == ["CREDIT_CARD", "EMAIL", "PHONE"]


def test_redaction_can_be_turned_off() -> None:
    row = pipeline(redact=False).process([message(1, event(1))]).scored.events[0]
    assert row.prompt == "I am bob@example.com" and not row.redacted


def test_redaction_happens_even_without_the_pii_detector() -> None:
    p = Pipeline(DetectorRegistry([LatencyErrorsDetector()]), redact_pii=True)
    assert p.process([message(1, event(1))]).scored.events[0].prompt == "I am <EMAIL>"


def test_a_partial_pii_detector_does_not_weaken_redaction() -> None:
    registry = DetectorRegistry([PiiDetector(PiiScanner(["PHONE"]))])
    row = Pipeline(registry).process([message(1, event(1))]).scored.events[0]
    assert row.prompt == "I am <EMAIL>"


def test_findings_and_partials_follow_the_events() -> None:
    msgs = [message(1, event(1, status="error")), message(2, event(2, latency_ms=5000.0)),
            message(3, event(3, response="mail carol@example.org"))]  # fmt: skip
    result = pipeline().process(msgs)
    by = {(f.finding.detector, f.finding.category) for f in result.scored.findings}
    assert by == {("latency_errors", "error"), ("latency_errors", "slow"), ("pii", "pii"),
                  ("pii", "leak")}  # fmt: skip
    (part,) = result.partials
    assert (part.events, part.errors, part.flags) == (3, 1, {"latency_errors": 2, "pii": 1})
