"""Window partials: exact sums whatever the batching, per-event columns, canonical sketches."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence

import msgspec
import pytest
from ddsketch import DDSketch

from detectors.base import Finding
from monitor.ingest.events import Event, decode_event
from monitor.windows.aggregate import WindowAggregator
from monitor.windows.stats import (
    RELATIVE_ACCURACY,
    EventSource,
    PartialError,
    WindowCounts,
    WindowState,
    build_partials,
    encode_sketch,
    finalise,
    finding_partials,
    window_start,
)

T0 = 1_795_514_400_000  # a minute boundary


def event(i: int, *, ts: int, latency: float, status: str = "ok", version: str = "v1") -> Event:
    return decode_event(
        json.dumps(
            {
                "request_id": f"r{i}",
                "timestamp": ts,
                "model": "m",
                "model_version": version,
                "latency_ms": latency,
                "status": status,
                "input_tokens": i % 50,
                "output_tokens": i % 300,
                "cost_usd": i * 1.3e-5,
                "feedback": {"complaint": i % 9 == 0},
            }  # fmt: skip
        ).encode()
    )


def flag(i: int, detector: str = "pii") -> Finding:
    return Finding(f"r{i}", detector, "1", 1.0, True, "leak")


def encoded(state: WindowCounts) -> bytes:
    return msgspec.msgpack.encode(finalise(state, is_final=True, version=1))


def merged(partials: Sequence[WindowCounts]) -> WindowState:
    first = partials[0]
    state = WindowState(
        model=first.model, model_version=first.model_version, deployment=first.deployment,
        window_start_ms=first.window_start_ms, window_s=first.window_s,
    )  # fmt: skip
    for part in partials:
        state.absorb(part)
    return state


def test_window_start_is_aligned() -> None:
    assert window_start(T0 + 59_999, 60) == T0
    assert window_start(T0 + 60_000, 60) == T0 + 60_000


def test_stats_do_not_depend_on_batching_to_the_byte() -> None:
    rng = random.Random(3)
    events = [
        event(
            i,
            ts=T0 + rng.randrange(60_000),
            latency=rng.lognormvariate(6, 1),
            status="error" if i % 10 == 0 else "ok",
        )  # fmt: skip
        for i in range(1000)
    ]
    findings = [flag(i) for i in range(0, 1000, 4)] + [
        flag(i, "latency") for i in range(0, 1000, 7)
    ]
    (whole,) = build_partials(events, findings, 60)
    pieces = [build_partials(events[i : i + 77], findings, 60)[0] for i in range(0, 1000, 77)]
    rng.shuffle(pieces)
    a, b = (
        finalise(whole, is_final=True, version=1),
        finalise(merged(pieces), is_final=True, version=1),
    )
    assert encoded(whole) == encoded(merged(pieces))  # sums and sketch, to the byte
    assert (a.events, a.errors, a.flags) == (1000, 100, {"latency": 143, "pii": 250})
    assert a.error_rate == b.error_rate == 0.1
    assert a.complaints == 112 and a.input_tokens == sum(i % 50 for i in range(1000))
    assert a.cost_usd == pytest.approx(sum(i * 1.3e-5 for i in range(1000)))
    exact = sorted(e.latency_ms or 0 for e in events)[989]
    assert a.latency_p99_ms is not None
    assert abs(a.latency_p99_ms - exact) / exact < 0.03  # 1 % sketch + rank rounding


def test_a_partial_re_summed_from_its_columns_equals_the_partial() -> None:
    rng = random.Random(5)
    events = [event(i, ts=T0 + i, latency=rng.uniform(1, 9000)) for i in range(300)]
    sources = [EventSource("llm.events", i % 3, 100 + i // 3) for i in range(300)]
    (part,) = build_partials(events, [flag(i) for i in range(0, 300, 5)], 60, sources)
    assert [(r.partition, r.first, r.last, r.count) for r in part.runs] == [
        (0, 100, 199, 100), (1, 100, 199, 100), (2, 100, 199, 100),
    ]  # fmt: skip
    everything = part.select(range(len(part.columns)))
    assert encoded(merged([part])) == encoded(merged([everything]))
    first_half = part.select([i for i in range(300) if i % 100 < 50])
    assert first_half.events == 150


def test_offsets_that_do_not_increase_start_a_new_run() -> None:
    events = [event(i, ts=T0 + i, latency=10.0) for i in range(4)]
    sources = [EventSource("llm.embed", 0, o) for o in (5, 6, 3, 7)]  # a zombie interleaving
    (part,) = finding_partials(events, [flag(1)], 60, None, sources)
    assert [(r.first, r.last, r.count) for r in part.runs] == [(5, 6, 2), (3, 7, 2)]
    assert [offset for _, _, offset in part.offsets()] == [5, 6, 3, 7]
    assert part.events == 0 and part.flags == {"pii": 1}


def test_flags_only_partials_carry_groups_per_event() -> None:
    events = [event(i, ts=T0 + i, latency=10.0) for i in range(3)]
    groups = {
        "r0": ("a", [1.0, 0.0, 0.5, 0.25, 1.0, 0.0]),
        "r2": ("b", [1.0, 1.0, -0.1, 0.01, 0, 0]),
    }
    sources = [EventSource("llm.embed", 1, o) for o in range(3)]
    (part,) = finding_partials(events, [flag(2, "toxicity")], 60, groups, sources)
    assert part.group_names == ["a", "b"] and part.columns.groups == [0, -1, 1]
    assert part.groups == {"a": [1, 0, 5000, 25_000_000, 1, 0], "b": [1, 1, -1000, 1_000_000, 0, 0]}
    stats = finalise(part, is_final=False, version=1)
    assert stats.groups == {"a": [1.0, 0.0, 0.5, 0.25, 1.0, 0.0], "b": [1.0, 1.0, -0.1, 0.01, 0, 0]}
    assert part.select([1, 2]).groups == {"b": [1, 1, -1000, 1_000_000, 0, 0]}


def test_sketch_bytes_do_not_depend_on_the_order_values_arrived() -> None:
    values = [random.Random(1).lognormvariate(6, 2) for _ in range(500)]
    ascending, shuffled = DDSketch(RELATIVE_ACCURACY), DDSketch(RELATIVE_ACCURACY)
    for v in sorted(values):
        ascending.add(v)
    for v in random.Random(2).sample(values, len(values)):
        shuffled.add(v)
    assert encode_sketch(ascending) == encode_sketch(shuffled)


def test_inconsistent_columns_are_refused_before_anything_changes() -> None:
    events = [event(i, ts=T0 + i, latency=10.0) for i in range(3)]
    sources = [EventSource("llm.events", 0, o) for o in range(3)]
    (part,) = build_partials(events, [flag(1)], 60, sources)
    part.columns.flags.append(0)
    store: dict[str, bytes] = {}
    with pytest.raises(PartialError):
        WindowAggregator(store, allowed_lateness_s=0).add(part)
    assert store == {}
    (part,) = build_partials(events, [flag(1)], 60, sources)
    part.columns.flags[0] = 4  # a detector bit the partial does not name
    with pytest.raises(PartialError):
        part.check()
