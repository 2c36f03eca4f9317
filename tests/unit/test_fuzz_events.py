"""Fuzzing the event contract: whatever arrives, ``decode_batch`` never raises, every record
becomes exactly one event or one dead letter, every accepted value fits its ClickHouse column
and every dead letter fits one Kafka record.

``make test`` runs a few hundred examples per strategy. The full run (at least 100,000 inputs
in total) is by hand: ``LLM_MONITOR_FUZZ_EXAMPLES=25000 .venv/bin/pytest -q
tests/unit/test_fuzz_events.py`` (examples per strategy; each example is a batch of records).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.ingest.decode import ArrivalBounds, RawMessage, decode_batch
from monitor.ingest.dlq import DeadLetter
from monitor.ingest.events import (
    KNOWN_FIELDS,
    MAX_ABS_RATING,
    MAX_ATTRIBUTE_CHARS,
    MAX_ATTRIBUTES,
    MAX_CONTEXT,
    MAX_COST_USD,
    MAX_DURATION_MS,
    MAX_EPOCH_MS,
    MAX_EXTRA_DEPTH,
    MAX_EXTRA_FIELDS,
    MAX_MESSAGES,
    MAX_SAMPLES,
    MAX_TOKENS,
    MIN_EPOCH_MS,
    REASONS,
    Event,
)

EXAMPLES = int(os.environ.get("LLM_MONITOR_FUZZ_EXAMPLES", "250"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PRODUCER_LIMIT = 4 * 1_048_576
MAX_BYTES = 64 * 1024  # small, so that "too large" is reached without megabytes per example
NOW = 1_795_514_400_000  # 2026-11-24T10:00:00Z
BOUNDS = ArrivalBounds(max_age_s=7 * 86_400, max_future_skew_s=300)
STATS: Counter[str] = Counter()  # records, events, dead letters by reason


# --- what an accepted event must satisfy: its values fit the columns of `events` ---


def _text(value: object, *, max_chars: int | None = None, min_chars: int = 0) -> None:
    assert isinstance(value, str)
    value.encode("utf-8")  # String columns: no lone surrogates
    assert len(value) >= min_chars
    assert max_chars is None or len(value) <= max_chars


def _bounded(value: object, low: float, high: float, kind: type) -> None:
    if value is None:
        return
    assert type(value) is kind  # not bool, not a float standing for an int
    assert isinstance(value, int | float) and math.isfinite(value) and low <= value <= high


def _depth(value: Any) -> int:
    """Nesting depth of a decoded JSON value, iteratively (values may nest deeply)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            depth += 1
            stack.extend(
                (child, depth) for child in (item.values() if isinstance(item, dict) else item)
            )
        deepest = max(deepest, depth)
    return deepest


def check_fits_columns(event: Event, arrival_ms: int, bounds: ArrivalBounds) -> None:
    """Every value of ``event`` fits its column (monitor/storage/migrations/m0001_initial.py)."""
    for name in ("request_id", "model", "model_version"):
        _text(getattr(event, name), min_chars=1, max_chars=256)
    for name in ("deployment", "route", "app"):
        _text(getattr(event, name), max_chars=256)
    if event.error_type is not None:
        _text(event.error_type, max_chars=256)
    for text in (event.prompt_text, event.response or ""):
        _text(text)
    ts = event.timestamp_ms  # DateTime64(3); DateTime in TTL and partition expressions
    assert type(ts) is int and MIN_EPOCH_MS <= ts < MAX_EPOCH_MS
    assert -bounds.max_age_s * 1000 <= ts - arrival_ms <= bounds.max_future_skew_s * 1000
    _bounded(event.input_tokens, 0, MAX_TOKENS, int)  # UInt32
    _bounded(event.output_tokens, 0, MAX_TOKENS, int)
    _bounded(event.latency_ms, 0, MAX_DURATION_MS, float)  # Float64
    _bounded(event.ttft_ms, 0, MAX_DURATION_MS, float)
    _bounded(event.cost_usd, 0, MAX_COST_USD, float)
    if event.feedback is not None:
        _bounded(event.feedback.rating, -MAX_ABS_RATING, MAX_ABS_RATING, float)
    assert len(event.samples) <= MAX_SAMPLES and len(event.context) <= MAX_CONTEXT
    for text in (*event.samples, *event.context):  # Array(String)
        _text(text)
    assert event.messages is None or len(event.messages) <= MAX_MESSAGES
    assert len(event.attributes) <= MAX_ATTRIBUTES  # Map(String, String)
    for key, value in event.attributes.items():
        _text(key, max_chars=MAX_ATTRIBUTE_CHARS)
        _text(value, max_chars=MAX_ATTRIBUTE_CHARS)
    assert len(event.extra) <= MAX_EXTRA_FIELDS and not set(event.extra) & KNOWN_FIELDS
    for key, value in event.extra.items():
        _text(key)
        _text(value)
        # json, not msgspec: an unknown field is kept as its raw JSON text, and msgspec refuses
        # numbers beyond a float (1e999) that the text may hold.
        assert _depth(json.loads(value)) <= MAX_EXTRA_DEPTH
    msgspec.msgpack.encode(event)  # what the score role publishes must encode


def check_batch(values: list[bytes], key: bytes | None = b"k") -> None:
    """The properties, for one batch of raw record values."""
    messages = [RawMessage(v, key, "llm.events", 0, i, NOW) for i, v in enumerate(values)]
    batch = decode_batch(messages, max_bytes=MAX_BYTES, now_ms=lambda: NOW, bounds=BOUNDS)
    dead_offsets = {d.offset for d in batch.dead_letters}
    assert len(dead_offsets) == len(batch.dead_letters)
    assert len(batch.events) + len(batch.dead_letters) == len(values)
    for event in batch.events:
        check_fits_columns(event, NOW, BOUNDS)
        assert MIN_EPOCH_MS <= batch.produced_at_ms[event.request_id] < MAX_EPOCH_MS
    for letter in batch.dead_letters:
        check_dead_letter(letter, messages[letter.offset])
    STATS["records"] += len(values)
    STATS["events"] += len(batch.events)
    STATS.update(f"dead:{d.reason}" for d in batch.dead_letters)


def check_dead_letter(letter: DeadLetter, message: RawMessage) -> None:
    assert letter.reason in REASONS
    assert message.value.startswith(letter.raw) and len(letter.error) <= 1200
    letter.error.encode("utf-8")
    assert len(msgspec.json.encode(letter)) < PRODUCER_LIMIT


# --- inputs: a valid event with some fields overridden by values the schema may refuse ---

EDGE_INTS = [-(2**64) - 1, -(2**63), -1, 0, 1, 2**31, MAX_TOKENS, MAX_TOKENS + 1, 2**63,
             2**64 + 1, 10**30, MAX_EPOCH_MS - 1, MAX_EPOCH_MS, NOW]  # fmt: skip
EDGE_FLOATS = [-0.0, 5e-324, 1e-300, MAX_DURATION_MS, MAX_DURATION_MS * 1.0000001, 1e308,
               -1e308, math.nan, math.inf, -math.inf, MAX_COST_USD, MAX_ABS_RATING]  # fmt: skip
EDGE_TIMES = ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:30Z", "2027-12-01T00:00:00Z",
              "1969-12-31T23:59:59.999Z", "2026-11-24T10:00:00", "yesterday", ""]  # fmt: skip
EDGE_VALUES: list[Any] = [
    *EDGE_INTS, *EDGE_FLOATS, *EDGE_TIMES, None, True, [], {}, "\ud800", "x" * 300,
    ["s"] * (MAX_SAMPLES + 1), ["c"] * (MAX_CONTEXT + 1), [{"role": "u"}] * (MAX_MESSAGES + 1),
    {f"k{i}": "v" for i in range(MAX_ATTRIBUTES + 1)}, {"k": "v" * (MAX_ATTRIBUTE_CHARS + 1)},
    {"complaint": True, "rating": 101}, {"rating": -1}, json.loads("[" * 33 + "]" * 33),
    json.loads("[" * 32 + "]" * 32), json.loads('{"a":' * 40 + "1" + "}" * 40),
]  # fmt: skip
FIELDS = [*sorted(KNOWN_FIELDS), "trace", "extra", "nested"]
ints = st.one_of(st.sampled_from(EDGE_INTS), st.integers(-10, 10**13))
floats = st.one_of(st.sampled_from(EDGE_FLOATS), st.floats(0, 1e9))
GOOD_TEXTS = ["", "a", "bob@example.com", "\x00", "é" * 300, "🙂", "[[[{", '"\\', "\u2028", "NaN",
              "2026-11-24T10:00:00Z"]  # fmt: skip
BAD_TEXTS = ["\ud800", "\udfff\ud800", "x" * 1025]  # lone surrogates; too long for a label
good_texts = st.one_of(st.sampled_from(GOOD_TEXTS), st.text(max_size=6))
texts = st.one_of(good_texts, st.sampled_from(BAD_TEXTS))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), ints, floats, texts),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(texts, inner, max_size=3)),
    max_leaves=4,
)


def rfc3339(ms: int, offset_min: int) -> str:
    tz = timezone(timedelta(minutes=offset_min))
    return datetime.fromtimestamp(ms / 1000, UTC).astimezone(tz).isoformat()


in_bounds = st.integers(NOW - BOUNDS.max_age_s * 1000, NOW + BOUNDS.max_future_skew_s * 1000)
around_now = st.integers(NOW - 8 * 86_400_000, NOW + 600_000)  # both arrival bounds and beyond
timestamps = st.one_of(
    around_now,
    st.builds(rfc3339, around_now, st.integers(-840, 840)),
    st.builds(lambda d: d.isoformat(), st.datetimes(timezones=st.just(UTC))),  # any year
)
valid_events = st.fixed_dictionaries(
    {
        "request_id": st.one_of(st.uuids().map(str), st.text(min_size=1, max_size=6)),
        "timestamp": st.one_of(in_bounds, st.builds(rfc3339, in_bounds, st.integers(-840, 840))),
        "model": st.sampled_from(["chat", "m"]),
        "model_version": st.sampled_from(["v1", "2026-11-20"]),
    },
    optional={
        "deployment": st.sampled_from(["stable", "canary"]),
        "prompt": good_texts,
        "response": good_texts,
        "context": st.lists(good_texts, max_size=2),
        "latency_ms": st.floats(0, MAX_DURATION_MS),
        "input_tokens": st.integers(0, MAX_TOKENS),
        "cost_usd": st.floats(0, MAX_COST_USD),
        "status": st.sampled_from(["ok", "error", "timeout", "refused"]),
        "attributes": st.dictionaries(good_texts, good_texts, max_size=2),
        "feedback": st.fixed_dictionaries({"rating": st.floats(-MAX_ABS_RATING, MAX_ABS_RATING)}),
        "trace": st.lists(st.integers(0, 9), max_size=3),
    },
)
DROP = object()  # an override that removes the field
KEEP = object()  # no timestamp override
overrides = st.lists(
    st.tuples(
        st.sampled_from(FIELDS),
        st.one_of(st.sampled_from(EDGE_VALUES), timestamps, json_values, st.just(DROP)),
    ),
    max_size=3,
)


def build(body: dict[str, Any], changes: list[tuple[str, Any]], timestamp: Any) -> dict[str, Any]:
    body = dict(body, timestamp=timestamp) if timestamp is not KEEP else dict(body)
    for name, value in changes:
        if value is DROP:
            body.pop(name, None)
        else:
            body[name] = value
    return body


def serialise(body: Any, ascii_only: bool) -> bytes:
    """JSON as a real producer might write it: NaN/Infinity literals, lone surrogates escaped
    (ascii) or raw (which makes invalid UTF-8)."""
    return json.dumps(body, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


valid_records = st.builds(serialise, valid_events, st.booleans())
records = st.builds(
    serialise,
    st.builds(build, valid_events, overrides, st.one_of(st.just(KEEP), timestamps)),
    st.booleans(),
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A record cut, spliced, bit-flipped or with a number swapped for a bad one."""
    value = draw(records)
    how = draw(st.sampled_from(["cut", "splice", "flip", "number", "deep", "wide"]))
    at = draw(st.integers(0, len(value)))
    if how == "cut":
        return value[:at]
    if how == "splice":
        return value[:at] + draw(st.binary(max_size=20)) + value[at:]
    if how == "flip":
        return value[:at] + bytes([draw(st.integers(0, 255))]) + value[at + 1 :]
    if how == "number":
        bad = draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-0",
                                    b"18446744073709551617", b"1" + b"0" * 5000]))  # fmt: skip
        return value.replace(b"0", bad, 1)
    depth = draw(st.integers(0, 3000))
    if how == "deep":
        return value[:-1] + b', "deep": ' + b"[" * depth + b"]" * depth + b"}"
    return value[:-1] + b"".join(b', "x%d": %d' % (i, i) for i in range(depth // 10)) + b"}"


non_objects = st.one_of(
    st.builds(lambda v: json.dumps(v).encode(), json_values),
    st.integers(0, 5000).map(lambda d: b"[" * d + b"]" * d),
    st.integers(0, 5000).map(lambda d: b'{"a":' * d + b"1" + b"}" * d),
    st.binary(max_size=64),
)


@st.composite
def huge(draw: st.DrawFn) -> bytes:
    """Records around and far over the size limits (up to 5 MB; built, not drawn byte by byte)."""
    size = draw(st.sampled_from([MAX_BYTES - 200, MAX_BYTES, 3_200_000, 5_000_000]))
    filler = draw(st.sampled_from([b"x", b"\xff", b"["]))
    return b'{"request_id": "r", "timestamp": %d, "model": "m", "model_version": "v", "prompt": "' % NOW + filler * size + b'"}'  # fmt: skip


@FUZZ
@given(st.lists(st.one_of(valid_records, records), min_size=1, max_size=4))
def test_generated_events(values: list[bytes]) -> None:
    check_batch(values)


@FUZZ
@given(st.lists(mutated(), min_size=1, max_size=4))
def test_mutated_events(values: list[bytes]) -> None:
    check_batch(values)


@FUZZ
@given(st.lists(st.one_of(non_objects, records), min_size=1, max_size=4))
def test_non_objects_and_garbage(values: list[bytes]) -> None:
    check_batch(values)


@settings(FUZZ, max_examples=max(10, EXAMPLES // 25))
@given(st.lists(st.one_of(huge(), records), min_size=1, max_size=3), st.binary(max_size=8))
def test_huge_records_and_keys(values: list[bytes], key: bytes) -> None:
    check_batch(values, key=key * 2000)


def test_the_fuzz_saw_both_outcomes() -> None:
    """Runs last in this module: the strategies reached both events and dead letters."""
    if STATS["records"]:
        assert 0 < STATS["events"] < STATS["records"]
        print(f"fuzz: {dict(STATS.most_common())}")
