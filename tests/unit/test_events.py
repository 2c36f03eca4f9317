"""The event contract: valid shapes decode, every kind of bad input gets its own reason."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from monitor.errors import SchemaError
from monitor.ingest.events import Event, decode_event, encode_event, json_schema

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
        (raw(attributes={f"k{i}": "v" for i in range(100)}), "schema"),
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
    latency=st.one_of(st.none(), st.floats(min_value=0, max_value=1e9)),
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
