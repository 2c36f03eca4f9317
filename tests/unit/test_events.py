"""The event contract: valid shapes decode, every kind of bad input gets its own reason."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.errors import SchemaError
from monitor.ingest import decode as decode_module
from monitor.ingest.decode import (
    MAX_DEAD_LETTER_KEY,
    MAX_DEAD_LETTER_RAW,
    ArrivalBounds,
    RawMessage,
    decode_batch,
)
from monitor.ingest.events import (
    MAX_EXTRA_DEPTH,
    REASONS,
    Event,
    decode_event,
    encode_event,
    json_schema,
    nests_deeper,
)

BASE: dict[str, Any] = {
    "request_id": "req-1",
    "timestamp": "2026-11-24T10:00:00Z",
    "model": "chat",
    "model_version": "v1",
}


def raw(**fields: Any) -> bytes:
    return json.dumps({**BASE, **fields}).encode()


def test_minimal_event_decodes_with_defaults() -> None:
    event = decode_event(raw())
    assert event.timestamp_ms == 1_795_514_400_000
    assert event.deployment == "stable"
    assert event.status == "ok"


def test_epoch_millis_and_offsets_normalise_to_the_same_instant() -> None:
    a = decode_event(raw(timestamp=1_795_514_400_000))
    b = decode_event(raw(timestamp="2026-11-24T11:00:00+01:00"))
    assert a.timestamp_ms == b.timestamp_ms == 1_795_514_400_000


def test_unknown_fields_are_kept() -> None:
    event = decode_event(raw(trace_id="abc", nested={"a": [1, 2]}))
    assert event.extra == {"trace_id": '"abc"', "nested": '{"a": [1, 2]}'}


def test_messages_join_into_prompt_text() -> None:
    event = decode_event(
        raw(messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
    )
    assert event.prompt_text == "be brief\nhi"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"request_id": "x", ', "invalid_json"),
        (b"[1, 2, 3]", "not_an_object"),
        (b'{"request_id": "\xff"}', "invalid_utf8"),
        (json.dumps({"request_id": "x"}).encode(), "schema"),
        (raw(model_version=3), "schema"),
        (raw(status="exploded"), "schema"),
        (raw(latency_ms=-1), "schema"),
        (raw(request_id=""), "schema"),
        (raw(timestamp="yesterday"), "invalid_timestamp"),
        (raw(timestamp="2026-11-24T10:00:00"), "invalid_timestamp"),
        (raw(latency_ms=1).replace(b"1}", b"NaN}"), "non_finite"),
        (raw(latency_ms=1).replace(b"1}", b"1e999}"), "non_finite"),
        (raw(attributes={f"k{i}": "v" for i in range(100)}), "too_many_items"),
        (raw(attributes={"k": "v" * 1025}), "schema"),
        (raw(input_tokens=2**32), "schema"),
        (raw(output_tokens=2**64 + 1), "schema"),
        (raw(input_tokens=-1), "schema"),
        (raw(latency_ms=1e308), "schema"),
        (raw(ttft_ms=86_400_001), "schema"),
        (raw(cost_usd=10_001), "schema"),
        (raw(feedback={"rating": -101}), "schema"),
        (raw(feedback={"rating": 1}).replace(b"1}", b"Infinity}"), "non_finite"),
        (raw(timestamp="0001-01-01T00:00:00+14:00"), "timestamp_out_of_range"),
        (raw(timestamp="9999-12-31T23:59:30Z"), "timestamp_out_of_range"),
        (raw(timestamp="1969-12-31T23:59:59Z"), "timestamp_out_of_range"),
        (raw(timestamp=-1), "timestamp_out_of_range"),
        (raw(timestamp=4_102_444_800_000), "timestamp_out_of_range"),
        (raw(timestamp=2**64 + 1), "timestamp_out_of_range"),
        (raw(timestamp=10**30), "timestamp_out_of_range"),
        (raw(timestamp=0).replace(b": 0,", b": 1" + b"0" * 5000 + b","), "schema"),
        (raw(samples=["s"] * 65), "too_many_items"),
        (raw(context=["c"] * 257), "too_many_items"),
        (raw(messages=[{"role": "user"}] * 1001), "too_many_items"),
        (raw(**{f"x{i}": 1 for i in range(257)}), "too_many_items"),
        (raw(trace=json.loads("[" * 33 + "]" * 33)), "too_deep"),
        (raw()[:-1] + b', "deep": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "too_deep"),
        (raw()[:-1] + b', "s": "\\ud800"}', "invalid_json"),
    ],
)
def test_bad_input_gets_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(SchemaError) as info:
        decode_event(payload)
    assert info.value.reason == reason


def test_oversized_event_is_rejected_before_parsing() -> None:
    with pytest.raises(SchemaError) as info:
        decode_event(raw(prompt="x" * 2000), max_bytes=1000)
    assert info.value.reason == "too_large"


def test_json_schema_ships_and_allows_unknown_fields() -> None:
    from importlib import resources

    shipped = json.loads(
        resources.files("monitor.ingest").joinpath("schema/event.json").read_text()
    )
    assert shipped == json_schema()
    event = shipped["$defs"]["Event"]
    assert event["additionalProperties"] is True
    assert set(event["required"]) == {"request_id", "timestamp", "model", "model_version"}


texts = st.text(min_size=1, max_size=40)


@given(
    request_id=texts,
    model=texts,
    prompt=st.one_of(st.none(), st.text(max_size=200)),
    latency=st.one_of(st.none(), st.floats(min_value=0, max_value=86_400_000)),
    attributes=st.dictionaries(st.text(max_size=20), st.text(max_size=20), max_size=5),
    extra_value=st.one_of(st.integers(), st.text(max_size=20), st.lists(st.booleans())),
)
def test_round_trip(
    request_id: str,
    model: str,
    prompt: str | None,
    latency: float | None,
    attributes: dict[str, str],
    extra_value: object,
) -> None:
    event = Event(
        request_id=request_id,
        timestamp=1_700_000_000_000,
        model=model,
        model_version="v",
        prompt=prompt,
        latency_ms=latency,
        attributes=attributes,
        extra={"custom": msgspec.json.encode(extra_value).decode()},
    )
    decoded = decode_event(encode_event(event))
    assert decoded == event


def test_values_at_the_bounds_are_accepted() -> None:
    event = decode_event(
        raw(
            timestamp=4_102_444_799_999,
            input_tokens=2**32 - 1,
            latency_ms=86_400_000,
            cost_usd=10_000,
            feedback={"rating": -100},
            samples=["s"] * 64,
            trace=json.loads("[" * 32 + "]" * 32),
        )  # fmt: skip
    )
    assert event.input_tokens == 2**32 - 1
    assert event.timestamp_ms == 4_102_444_799_999


def test_reasons_are_few_and_distinct() -> None:
    assert len(set(REASONS)) == len(REASONS) <= 16


@pytest.mark.parametrize(
    ("fragment", "deeper"),
    [
        ("[]", False),
        ('"[[[[[[[[[["', False),  # brackets inside strings do not nest
        ('{"a": "\\"[[[", "b": [[]]}', False),
        ("[" * MAX_EXTRA_DEPTH + "]" * MAX_EXTRA_DEPTH, False),
        ("[" * (MAX_EXTRA_DEPTH + 1) + "]" * (MAX_EXTRA_DEPTH + 1), True),
        ("[{" * 17 + "}]" * 17, True),  # 34 levels, alternating
        ("[" + "[]," * 100 + "[]]", False),  # many brackets, shallow
    ],
)
def test_nesting_depth_is_exact(fragment: str, deeper: bool) -> None:
    assert nests_deeper(fragment, MAX_EXTRA_DEPTH) is deeper


NOW = 1_795_514_400_000  # 2026-11-24T10:00:00Z
BOUNDS = ArrivalBounds(max_age_s=3600, max_future_skew_s=300)


def message(offset: int, value: bytes, key: bytes | None = b"k") -> RawMessage:
    return RawMessage(value, key, "llm.events", 0, offset, NOW)


def batch(*values: bytes, bounds: ArrivalBounds | None = BOUNDS) -> decode_module.DecodedBatch:
    messages = [message(i, v) for i, v in enumerate(values)]
    return decode_batch(messages, max_bytes=1_000_000, now_ms=lambda: NOW, bounds=bounds)


def test_event_time_is_bounded_relative_to_arrival() -> None:
    result = batch(
        raw(request_id="now", timestamp=NOW),
        raw(request_id="skewed", timestamp=NOW + 300_000),
        raw(request_id="future", timestamp="2027-12-01T00:00:00Z"),
        raw(request_id="old", timestamp=NOW - 3_600_001),
    )
    assert [e.request_id for e in result.events] == ["now", "skewed"]
    future, old = result.dead_letters
    assert (future.reason, old.reason) == ("timestamp_out_of_range", "timestamp_out_of_range")
    assert "pipeline.max_future_skew_s is 300" in future.error
    assert "2027-12-01T00:00:00.000+00:00" in future.error
    assert "pipeline.max_event_age_s is 3600" in old.error


def test_without_bounds_any_storable_time_is_accepted() -> None:
    result = batch(raw(timestamp="2027-12-01T00:00:00Z"), bounds=None)
    assert len(result.events) == 1


def test_any_error_while_decoding_is_that_records_dead_letter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = decode_event

    def flaky(value: bytes, *, max_bytes: int) -> Event:
        if b"boom" in value:
            raise RuntimeError("unexpected " + "x" * 5000)
        return real(value, max_bytes=max_bytes)

    monkeypatch.setattr(decode_module, "decode_event", flaky)
    result = batch(raw(request_id="a"), raw(request_id="boom"), raw(request_id="c"))
    assert [e.request_id for e in result.events] == ["a", "c"]
    (dead,) = result.dead_letters
    assert dead.reason == "undecodable"
    assert dead.error.startswith("RuntimeError: unexpected") and len(dead.error) == 1000


def test_huge_records_keep_a_prefix_and_their_length() -> None:
    value = b'{"prompt": "' + b"x" * 3_200_000 + b'"}'
    letter = decode_batch(
        [message(0, value, key=b"k" * 10_000)], max_bytes=1_000_000, now_ms=lambda: NOW
    ).dead_letters[0]
    assert letter.reason == "too_large"
    assert letter.raw == value[:MAX_DEAD_LETTER_RAW]
    assert letter.key == b"k" * MAX_DEAD_LETTER_KEY
    assert f"of {len(value)} bytes" in letter.error and "of 10000 bytes" in letter.error
    assert len(msgspec.json.encode(letter)) < 3 * 1_048_576


def test_an_unstorable_kafka_timestamp_becomes_the_arrival_time() -> None:
    messages = [RawMessage(raw(), None, "llm.events", 0, 0, -1)]
    result = decode_batch(messages, max_bytes=1_000_000, now_ms=lambda: NOW)
    assert result.produced_at_ms == {"req-1": NOW}


def test_a_deep_batch_member_does_not_stop_the_rest() -> None:
    deep = b'{"a": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    result = batch(raw(request_id="a", timestamp=NOW), deep, raw(request_id="b", timestamp=NOW))
    assert [e.request_id for e in result.events] == ["a", "b"]
    assert [d.reason for d in result.dead_letters] == ["too_deep"]
