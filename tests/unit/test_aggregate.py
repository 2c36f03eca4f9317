"""The aggregator merges each source offset once, whatever was replayed, and closes windows by a
per-series watermark that one outlier cannot move and that idleness advances."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from detectors.base import Finding
from monitor.ingest.dlq import DeadLetter
from monitor.ingest.events import Event
from monitor.metrics import create_metrics
from monitor.windows.aggregate import WindowAggregator
from monitor.windows.stats import (
    EventSource,
    WindowPartial,
    build_partials,
    finding_partials,
    window_start,
)
from streams.aggregate import dead_letter_partial
from tests.conftest import decoded_event

T0 = 1_795_514_400_000  # a minute boundary
PARTITIONS = 3
SERIES = [("v1", "stable"), ("v1", "canary"), ("v2", "stable")]
Batch = list[tuple[Event, EventSource]]
Log = list[list[Event]]  # events per source partition; the offset is the index


def traffic(n: int, seed: int) -> Log:
    """``n`` events over four minutes, three series, spread over the partitions."""
    rng = random.Random(seed)
    log: Log = [[] for _ in range(PARTITIONS)]
    for i in range(n):
        version, deployment = rng.choice(SERIES)
        body = {"timestamp": T0 + i * 240_000 // n + rng.randrange(5000), "model": "m",
                "model_version": version, "deployment": deployment, "response": "ok",
                "status": rng.choice(["ok"] * 8 + ["error", "timeout", "refused"]),
                "input_tokens": i % 40,
                "output_tokens": rng.randrange(500), "cost_usd": rng.random() / 1000,
                "feedback": {"complaint": rng.random() < 0.1}}  # fmt: skip
        if rng.random() < 0.95:
            body["latency_ms"] = round(rng.lognormvariate(6, 1), 3)
        log[rng.randrange(PARTITIONS)].append(decoded_event(str(i), **body))
    return log


def consume(log: Log, topic: str, start: Sequence[int], size: int, seed: int) -> list[Batch]:
    """Batches of a consumer reading from offsets ``start`` to the end: fetches of 1-10 records
    from random partitions, mixed in one batch as faust's ``take_events`` mixes them."""
    rng, position = random.Random(seed), list(start)
    batches: list[Batch] = []
    batch: Batch = []
    while live := [p for p in range(len(log)) if position[p] < len(log[p])]:
        p = rng.choice(live)
        take = min(rng.randint(1, 10), len(log[p]) - position[p], size - len(batch))
        batch += [
            (log[p][o], EventSource(topic, p, o)) for o in range(position[p], position[p] + take)
        ]
        position[p] += take
        if len(batch) == size:
            batches.append(batch)
            batch = []
    return [*batches, batch] if batch else batches


def committed(start: Sequence[int], batches: list[Batch]) -> list[int]:
    """The offsets a consumer commits after ``batches``: one past the last it read."""
    position = list(start)
    for batch in batches:
        for _, source in batch:
            position[source.partition] = max(position[source.partition], source.offset + 1)
    return position


def score(batch: Batch) -> list[WindowPartial]:
    events = [e for e, _ in batch]
    findings = [Finding(e.request_id, "pii", "1", 1.0, True, "leak") for e in events
                if int(e.request_id) % 4 == 0] + [
                Finding(e.request_id, "latency_errors", "1", 1.0, True, "slow") for e in events
                if int(e.request_id) % 7 == 0]  # fmt: skip
    return build_partials(events, findings, 60, [s for _, s in batch])


def embed(batch: Batch) -> list[WindowPartial]:
    events = [e for e, _ in batch]
    findings = [Finding(e.request_id, "toxicity", "1", 0.9, True, "toxic") for e in events
                if int(e.request_id) % 5 == 0]  # fmt: skip
    k = {e.request_id: (int(e.request_id) % 21 - 10) * 731 for e in events}
    groups = {e.request_id: ("ab"[int(e.request_id) % 2],
                             [1.0, 0.0, k[e.request_id] / 1e4, (k[e.request_id] / 1e4) ** 2, 1.0,
                              float(int(e.request_id) % 5 == 0)])
              for e in events if int(e.request_id) % 3 == 0}  # fmt: skip
    return finding_partials(events, findings, 60, groups, [s for _, s in batch])


ROLES: dict[str, tuple[str, Callable[[Batch], list[WindowPartial]]]] = {
    "score": ("llm.events", score),
    "embed": ("llm.embed", embed),
}


def clean(log: Log, role: str, size: int = 100) -> list[WindowPartial]:
    topic, build = ROLES[role]
    return [p for b in consume(log, topic, [0] * PARTITIONS, size, seed=1) for p in build(b)]


@dataclass
class Crash:
    """A worker reading batches of ``before`` sends the partials of ``sent`` batches (and
    ``cut`` partials of the next) but committed only ``kept`` of them; the new owner resumes
    from the committed offsets with batches of ``after``; with ``zombie`` the old worker
    sends that many more batches, interleaved with the new owner's."""

    before: int
    after: int
    sent: int
    kept: int
    cut: int = 0
    zombie: int = 0

    def deliveries(self, log: Log, role: str, seed: int) -> list[WindowPartial]:
        topic, build = ROLES[role]
        first = consume(log, topic, [0] * PARTITIONS, self.before, seed)
        out = [p for b in first[: self.sent] for p in build(b)]
        out += build(first[self.sent])[: self.cut]
        restart = committed([0] * PARTITIONS, first[: self.kept])
        owner = [p for b in consume(log, topic, restart, self.after, seed + 1) for p in build(b)]
        zombie = [p for b in first[self.sent : self.sent + self.zombie] for p in build(b)]
        return out + interleave(owner, zombie, random.Random(seed))


def interleave(
    a: list[WindowPartial], b: list[WindowPartial], rng: random.Random
) -> list[WindowPartial]:
    """A random merge of two producers' sends, each in its own order."""
    out, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        if j == len(b) or (i < len(a) and rng.random() < 0.5):
            out.append(a[i])
            i += 1
        else:
            out.append(b[j])
            j += 1
    return out


def aggregator(store: dict[str, bytes] | None = None) -> WindowAggregator:
    return WindowAggregator(
        {} if store is None else store, allowed_lateness_s=0, version_clock=lambda: 1,
        clock=lambda: 0.0,
    )  # fmt: skip


def windows(agg: WindowAggregator, deliveries: list[WindowPartial]) -> dict[str, bytes]:
    """Every window's stats, encoded, after merging ``deliveries`` in order."""
    for part in deliveries:
        agg.add(part)
    return {key: msgspec.msgpack.encode(agg.snapshot(key)) for key in sorted(agg.store)}


@pytest.fixture(scope="module")
def log() -> Log:
    return traffic(1500, seed=7)


@pytest.fixture(scope="module")
def truth(log: Log) -> dict[str, bytes]:
    """One clean pass of both roles, each event read and merged once."""
    return windows(aggregator(), clean(log, "score") + clean(log, "embed", size=64))


CRASHES = {
    "split batches": Crash(before=100, after=37, sent=6, kept=4),
    "merged batches": Crash(before=40, after=250, sent=12, kept=7),
    "crash mid-send": Crash(before=90, after=90, sent=5, kept=3, cut=2),
    "nothing committed": Crash(before=120, after=55, sent=4, kept=0, cut=1),
    "zombie": Crash(before=70, after=110, sent=5, kept=2, zombie=6),
    "zombie, small batches": Crash(before=13, after=29, sent=30, kept=20, cut=1, zombie=25),
}


@pytest.mark.parametrize("role", ["score", "embed"])
@pytest.mark.parametrize("name", CRASHES)
def test_replays_give_the_windows_of_a_clean_pass(
    log: Log, truth: dict[str, bytes], role: str, name: str
) -> None:
    other = "embed" if role == "score" else "score"
    agg = aggregator()
    crashed = CRASHES[name].deliveries(log, role, seed=3)
    deliveries = interleave(crashed, clean(log, other, size=150), random.Random(4))
    assert windows(agg, deliveries) == truth  # byte for byte
    assert agg.replayed_events > 0 and agg.event_merges > 0


def test_an_aggregator_restored_from_its_changelog_skips_what_it_replays(
    log: Log, truth: dict[str, bytes]
) -> None:
    deliveries = clean(log, "score") + clean(log, "embed", size=64)
    first = aggregator()
    for part in deliveries[:40]:
        first.add(part)
    restored = dict(first.store)  # the changelog holds every write, committed offsets trail
    second = aggregator(restored)
    assert windows(second, deliveries[25:]) == truth
    assert second.replayed_events > 0


def test_the_fast_path_merges_whole_partials_when_nothing_is_replayed(log: Log) -> None:
    agg = aggregator()
    deliveries = clean(log, "score") + clean(log, "embed", size=64)
    windows(agg, deliveries)
    assert agg.whole_merges == len(deliveries)
    assert agg.event_merges == 0 and agg.replayed_events == 0
    assert sum(msgspec.msgpack.decode(agg.store[k])["events"] for k in agg.store) == 1500


def test_a_replay_of_a_whole_partial_is_skipped_without_a_write() -> None:
    (part,) = build_partials([decoded_event("a", timestamp=T0)], [], 60,
                             [EventSource("llm.events", 0, 5)])  # fmt: skip
    store: dict[str, bytes] = {}
    agg = WindowAggregator(store, allowed_lateness_s=0)
    assert agg.add(part).counted == 1
    before = dict(store)
    merge = agg.add(part)
    assert (merge.counted, merge.replayed, merge.changed) == (0, 1, False)
    assert store == before


# Watermarks ---------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def partial(version: str, at_ms: int, n: int = 1, deployment: str = "stable") -> WindowPartial:
    """``n`` events of series (m, ``version``, ``deployment``), the latest at ``at_ms``."""
    return WindowPartial(
        model="m", model_version=version, deployment=deployment,
        window_start_ms=window_start(at_ms, 60), window_s=60, events=n, max_event_time_ms=at_ms,
    )  # fmt: skip


def key(version: str, minute: int) -> str:
    return f"m|{version}|stable|{T0 + minute * 60_000}"


def test_one_far_future_event_closes_and_starves_nothing() -> None:
    agg = WindowAggregator({}, allowed_lateness_s=10, retention_s=120, clock=Clock())
    far = T0 + 400 * 86_400_000  # a year ahead
    assert agg.add(partial("a", far)).counted == 1  # the outlier comes first, in series a
    for t in range(0, 150_000, 5000):
        agg.add(partial("a", T0 + t, n=2))
        agg.add(partial("b", T0 + t, n=2))
    assert sorted(agg.due()) == [key("a", 0), key("a", 1), key("b", 0), key("b", 1)]
    later = [agg.add(partial(v, T0 + 170_000, n=3)) for v in ("a", "b")]
    assert [m.counted for m in later] == [3, 3]  # nobody's later events are left out as late
    assert agg.late_events == 0
    assert key("a", 2) not in agg.due()  # the outlier's own series keeps its current window
    for _ in range(2):  # another far event, in another partial: now the watermark follows
        agg.add(partial("a", far + 1000))
    assert key("a", 2) in agg.due() and key("b", 2) not in agg.due()


def test_windows_close_past_the_second_largest_partial_time() -> None:
    store: dict[str, bytes] = {}
    agg = WindowAggregator(store, allowed_lateness_s=30, retention_s=120, clock=Clock(),
                           version_clock=iter(range(100)).__next__)  # fmt: skip
    first = partial("v", T0 + 10_000, n=5)
    agg.add(first)
    agg.add(partial("v", T0 + 95_000))  # a single partial at 95 s: not confirmed
    assert agg.watermark_ms(("m", "v", "stable")) == T0 + 10_000 - 30_000
    agg.add(partial("v", T0 + 89_000))  # watermark 59 s
    assert agg.due() == []
    agg.add(partial("v", T0 + 90_000))  # watermark 60 s: the first window is due
    assert agg.due() == [first.key]
    final = agg.close(first.key)
    assert final is not None and final.is_final and final.events == 5
    assert agg.add(partial("v", T0 + 1000, n=2)).counted == 2  # late, within retention: merged
    late = agg.snapshot(first.key)
    assert late is not None and late.is_final and late.events == 7
    for t in (300_000, 301_000):  # watermark 271 s: the first window is past the retention
        agg.add(partial("v", T0 + t))
    assert first.key in agg.expired()
    agg.expire(first.key)
    assert agg.add(partial("v", T0, n=3)).late == 3  # beyond retention: left out and counted
    assert agg.late_events == 3


def test_an_idle_series_closes_its_windows_by_processing_time() -> None:
    clock = Clock()
    agg = WindowAggregator({}, allowed_lateness_s=30, idle_timeout_s=60, clock=clock)
    agg.add(partial("v", T0 + 10_000))
    agg.add(partial("v", T0 + 50_000))  # watermark 10 s - 30 s
    clock.now = 59.9
    assert agg.due() == []
    clock.now = 60.0  # idle: 10 s - 30 s + 60 s = 40 s
    assert agg.watermark_ms(("m", "v", "stable")) == T0 + 40_000 and agg.due() == []
    clock.now = 80.0
    assert agg.due() == [key("v", 0)]
    agg.add(partial("v", T0 + 70_000))  # traffic again: the watermark does not go back
    assert agg.watermark_ms(("m", "v", "stable")) == T0 + 60_000
    assert agg.add(partial("v", T0 + 65_000)).counted == 1


def test_restored_windows_close_after_a_restart_without_new_traffic() -> None:
    clock = Clock()
    first = WindowAggregator({}, allowed_lateness_s=0, idle_timeout_s=30, clock=clock)
    for t in (5000, 30_000, 70_000):
        first.add(partial("v", T0 + t))
    restarted = WindowAggregator(dict(first.store), allowed_lateness_s=0, idle_timeout_s=30,
                                 clock=clock)  # fmt: skip
    assert restarted.due() == []  # seeded from the restored windows: 30 s
    clock.now = 30.0
    assert restarted.due() == [key("v", 0)]
    clock.now = 90.0
    assert sorted(restarted.due()) == [key("v", 0), key("v", 1)]


# The role's dead-letter path --------------------------------------------------------------


class Topic:
    """A topic that records what is sent to it, acknowledged at once."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes | None, bytes]] = []

    async def send(self, *, key: bytes | None, value: bytes) -> asyncio.Future[None]:
        self.sent.append((key, value))
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        ack.set_result(None)
        return ack


def test_an_undecodable_partial_is_dead_lettered_with_its_bytes() -> None:
    record: Any = SimpleNamespace(
        value=b"\x93not a partial", key=b"m|v|stable|0",
        message=SimpleNamespace(topic="llm.partials", partition=2, offset=7, timestamp=1.5),
    )  # fmt: skip
    with pytest.raises(msgspec.DecodeError) as raised:
        msgspec.msgpack.decode(record.value, type=WindowPartial)
    registry = CollectorRegistry()
    dlq, metrics = Topic(), create_metrics(registry)
    asyncio.run(dead_letter_partial(dlq, record, raised.value, metrics))
    ((key, value),) = dlq.sent
    letter = msgspec.json.decode(value, type=DeadLetter)
    assert (letter.topic, letter.partition, letter.offset, letter.raw, letter.reason) == (
        "llm.partials", 2, 7, record.value, "undecodable",
    )  # fmt: skip
    assert key == record.key
    labels = {"topic": "llm.partials", "reason": "undecodable"}
    assert registry.get_sample_value("llm_monitor_internal_dead_letters_total", labels) == 1
