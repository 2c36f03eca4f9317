"""Window partials merge independently of batching; the aggregator closes and expires by watermark."""

from __future__ import annotations

import json
import random

from detectors.base import Finding
from monitor.ingest.events import Event, decode_event
from monitor.windows.aggregate import WindowAggregator
from monitor.windows.stats import WindowPartial, build_partials, finalise, window_start

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
            }  # fmt: skip
        ).encode()
    )


def flag(i: int) -> Finding:
    return Finding(f"r{i}", "pii", "1", 1.0, True, "leak")


def test_window_start_is_aligned() -> None:
    assert window_start(T0 + 59_999, 60) == T0
    assert window_start(T0 + 60_000, 60) == T0 + 60_000


def test_stats_do_not_depend_on_batching() -> None:
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
    findings = [flag(i) for i in range(0, 1000, 4)]
    whole = build_partials(events, findings, 60)
    assert len(whole) == 1
    pieces = [build_partials(events[i : i + 77], findings, 60)[0] for i in range(0, 1000, 77)]
    merged = pieces[0]
    for piece in pieces[1:]:
        merged = merged.merge(piece)
    a = finalise(whole[0], is_final=True, version=1)
    b = finalise(merged, is_final=True, version=1)
    assert (
        (a.events, a.errors, a.flags) == (b.events, b.errors, b.flags) == (1000, 100, {"pii": 250})
    )
    assert a.error_rate == 0.1
    assert a.latency_p99_ms == b.latency_p99_ms
    exact = sorted(e.latency_ms or 0 for e in events)[989]
    assert a.latency_p99_ms is not None
    assert abs(a.latency_p99_ms - exact) / exact < 0.03  # 1 % sketch + rank rounding


def partial(start_ms: int, n: int, max_time: int | None = None) -> WindowPartial:
    return WindowPartial(
        model="m", model_version="v", deployment="stable", window_start_ms=start_ms, window_s=60,
        events=n, max_event_time_ms=max_time if max_time is not None else start_ms,
    )  # fmt: skip


def test_window_closes_after_watermark_and_accepts_late_partials_until_retention() -> None:
    store: dict[str, bytes] = {}
    agg = WindowAggregator(
        store, allowed_lateness_s=30, retention_s=120, version_clock=iter(range(100)).__next__
    )
    first = partial(T0, 5, T0 + 10_000)
    agg.add(first)
    assert agg.due() == []
    agg.add(partial(T0 + 60_000, 1, T0 + 89_000))  # watermark 59 s: not yet
    assert agg.due() == []
    agg.add(partial(T0 + 60_000, 1, T0 + 90_000))  # watermark 60 s: first window due
    assert agg.due() == [first.key]
    final = agg.close(first.key)
    assert final is not None and final.is_final and final.events == 5
    assert agg.add(partial(T0, 2, T0 + 1000))  # late, within retention: merged
    late = agg.snapshot(first.key)
    assert late is not None and late.is_final and late.events == 7
    agg.add(partial(T0 + 300_000, 1, T0 + 300_000))  # watermark 270 s: first expired
    assert first.key in agg.expired()
    agg.expire(first.key)
    assert not agg.add(partial(T0, 3, T0))  # beyond retention: left out and counted
    assert agg.late_events == 3
