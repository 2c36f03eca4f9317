"""One batch through the pure pipeline: DLQ records, findings, redaction, partials."""

from __future__ import annotations

import json
from collections.abc import Sequence

import msgspec

from detectors.base import DetectorRegistry, Finding
from detectors.latency_errors import LatencyErrorsDetector
from detectors.pii import PiiDetector, PiiScanner
from monitor.ingest.decode import RawMessage
from monitor.ingest.events import Event
from monitor.scoring.pipeline import Pipeline
from monitor.scoring.rows import ScoredBatch
from streams.score import prepare


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


class Explodes:
    """A detector with a bug that one event's prompt triggers."""

    name = "explodes"
    version = "1"

    def score(self, batch: Sequence[Event]) -> list[Finding]:
        if any(e.prompt == "boom" for e in batch):
            raise ZeroDivisionError("detector bug")
        return []


def test_an_unstorable_token_count_is_a_dead_letter_not_a_crash() -> None:
    parts = prepare(
        pipeline(), [message(1, event(1)), message(2, event(2, input_tokens=2**64 + 1))]
    )
    (part,) = parts
    assert [d.reason for d in part.result.dead_letters] == ["schema"]
    assert "4294967295" in part.result.dead_letters[0].error
    assert len(part.result.scored.events) == 1 and len(part.scored) == 1


def test_a_record_that_breaks_a_detector_is_dead_lettered_alone() -> None:
    registry = DetectorRegistry([PiiDetector(), Explodes()])
    p = Pipeline(registry, window_s=60, wall_clock_ms=lambda: 42)
    msgs = [message(i, event(i, prompt="boom" if i == 5 else "hi")) for i in range(8)]
    parts = prepare(p, msgs)
    letters = [d for part in parts for d in part.result.dead_letters]
    assert [(d.offset, d.reason) for d in letters] == [(5, "unprocessable")]
    assert "ZeroDivisionError: detector bug" in letters[0].error
    stored = [r.request_id for part in parts for r in part.result.scored.events]
    assert sorted(stored) == sorted(f"r{i}" for i in range(8) if i != 5)
    assert sum(part.received for part in parts) == 8
    assert sum(p.events for part in parts for p in part.result.partials) == 7


def test_scored_rows_are_split_under_the_record_limit_and_an_oversize_row_dead_lettered() -> None:
    msgs = [message(i, event(i, response="word " * 400)) for i in range(20)]
    msgs.append(message(20, event(20, response="word " * 5000)))
    parts = prepare(pipeline(), msgs, record_limit=8000)
    letters = [d for part in parts for d in part.result.dead_letters]
    assert [(d.offset, d.reason) for d in letters] == [(20, "too_large")]
    records = [r for part in parts for r in part.scored]
    assert len(records) > 1 and all(len(r) <= 8000 for r in records)
    batches = [msgspec.msgpack.decode(r, type=ScoredBatch) for r in records]
    rows = [row.request_id for b in batches for row in b.events]
    assert sorted(rows) == sorted(f"r{i}" for i in range(20))
    for b in batches:  # each finding travels with its row
        assert {f.finding.request_id for f in b.findings} <= {row.request_id for row in b.events}
    assert sum(len(b.findings) for b in batches) == 20  # every prompt has an email: one PII each


def test_dead_letters_and_partials_are_encoded_for_the_producer() -> None:
    huge = message(1, b'{"prompt": "' + b"x" * 3_200_000 + b'"}')
    (part,) = prepare(pipeline(), [huge, message(2, event(2))])
    ((key, value),) = part.dead_letters
    assert key == b"k" and len(value) < 4 * 1_048_576
    assert len(part.partials) == 1
