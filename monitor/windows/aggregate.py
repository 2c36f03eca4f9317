"""Merging window partials exactly once, and closing windows by a per-series watermark.

State lives in a ``MutableMapping[str, bytes]`` supplied by the caller: a faust Table backed
by a changelog topic in the worker, a dict in tests. Each value is a ``WindowState``: the
window's sums and ``hwm``, per source (stream, topic, partition), the highest source offset
merged.

**Exactly once.** A partial's ``runs`` say which source offsets it holds. Contributions for
one (window, source partition) are built in offset order by whichever worker owns that source
partition, and are routed by window key to one partials partition, so they reach the
aggregator in the order they were sent. Every offset below a committed one was delivered
before the commit (offsets commit after the sends are acknowledged), and every producer (the
owner, a new owner after a crash, a zombie still sending) delivers in increasing offsets from
a committed offset on. So the first delivery of each offset arrives before the first delivery
of any larger one: an offset at or below ``hwm`` has been merged, one above it has not. Hence:

* every run starts above ``hwm`` (the common case): the partial is merged whole, from its
  pre-built sums and sketch, as cheaply as without deduplication;
* every event is at or below ``hwm``: a replay, skipped;
* otherwise (a replay cut at other batch boundaries, a zombie producer interleaving with the
  new owner): the events above the running mark are re-summed from the partial's per-event
  columns and merged, the others skipped.

Whatever the batch boundaries before and after the crash, each source offset is merged once.
The sums and ``hwm`` are one table value, written to the changelog together; faust flushes
the changelog producer before it commits the partials offsets, so an aggregator that crashes
restores states at least as new as its committed offsets (provided recovery reads the
changelog to its last record: see streams/aggregate.py), and the partials it then replays are
at or below the restored ``hwm``: skipped. ``hwm`` is dropped with the window, after the
retention, far beyond any replay.

**Watermark per series** (model, version, deployment). A window closes (a final snapshot is
published) once its series' watermark passes its end. The watermark is the *second* largest
``max_event_time_ms`` among the partials that counted new events for the series, minus the
allowed lateness: one far-future event sits alone in its own window's partial, so it cannot
move the watermark by itself, not even its own series' (validation bounds event time against
arrival, so a clock that is wrong for many events is refused there). It never needs wall-clock
time, so replays of historical data close their windows as they go. A series that stops
receiving traffic still closes its windows: after ``idle_timeout_s`` of processing time
without a partial (an injected monotonic ``clock``), its watermark advances with processing
time (Flink-style idleness). Watermarks never go back. A window's state is kept for
``retention_s`` past its watermark: partials that arrive late still merge and re-publish the
final snapshot (ReplacingMergeTree keeps the newest); only partials of windows already expired
are left out and counted in ``late_events`` (their events are still stored in ``events``).
Watermarks live in memory: after a restart they are seeded from the restored windows.
"""

from __future__ import annotations

import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Final, NamedTuple

import msgspec

from monitor.windows.stats import (
    WindowCounts,
    WindowPartial,
    WindowState,
    WindowStats,
    finalise,
    source_key,
)

NEVER: Final = -(2**62)

Series = tuple[str, str, str]

_encode = msgspec.msgpack.encode
_decode = msgspec.msgpack.Decoder(WindowState).decode


class Merge(NamedTuple):
    """What ``WindowAggregator.add`` did with a partial."""

    counted: int = 0  # events newly counted in the window
    replayed: int = 0  # event rows skipped: merged before, from an earlier delivery
    late: int = 0  # events left out: their window expired
    changed: bool = False  # the window's state changed


@dataclass
class SeriesClock:
    """One series' event-time progress: the two largest partial maxima, when it last moved."""

    seen_at_s: float
    top: tuple[int, ...] = ()
    floor_ms: int = NEVER

    def watermark_ms(self, now_s: float, lateness_ms: int, idle_timeout_s: float) -> int:
        """The second-largest maximum less the lateness; once idle, the last confirmed time
        plus the processing time since the last partial; never below where it has been."""
        confirmed = self.top[1] - lateness_ms if len(self.top) > 1 else NEVER
        idle_s = now_s - self.seen_at_s
        if idle_s >= idle_timeout_s and self.top:
            confirmed = max(confirmed, self.top[-1] - lateness_ms + int(idle_s * 1000))
        return max(self.floor_ms, confirmed)

    def observe(
        self, max_event_time_ms: int, now_s: float, lateness_ms: int, idle_timeout_s: float
    ) -> None:
        """A partial that counted events for the series, at processing time ``now_s``."""
        self.floor_ms = self.watermark_ms(now_s, lateness_ms, idle_timeout_s)
        self.top = tuple(sorted((*self.top, max_event_time_ms), reverse=True)[:2])
        self.seen_at_s = now_s


class WindowAggregator:
    """Merges partials once each, closes windows past their series' watermark, expires them."""

    def __init__(
        self,
        store: MutableMapping[str, bytes],
        *,
        allowed_lateness_s: int,
        retention_s: int = 3600,
        idle_timeout_s: float = 60.0,
        version_clock: Callable[[], int] = time.time_ns,
        clock: Callable[[], float] = time.monotonic,
        bias_confidence: float = 0.95,
        bias_min_per_group: int = 5,
    ) -> None:
        if allowed_lateness_s < 0:
            raise ValueError(f"allowed_lateness_s must be >= 0, got {allowed_lateness_s}")
        if retention_s < 0:
            raise ValueError(f"retention_s must be >= 0, got {retention_s}")
        if idle_timeout_s <= 0:
            raise ValueError(f"idle_timeout_s must be > 0, got {idle_timeout_s}")
        self.store = store
        self.allowed_lateness_s = allowed_lateness_s
        self.retention_s = retention_s
        self.idle_timeout_s = idle_timeout_s
        self._version_clock = version_clock
        self._clock = clock
        self.bias_confidence = bias_confidence
        self.bias_min_per_group = bias_min_per_group
        self._series: dict[Series, SeriesClock] = {}
        self._windows: dict[str, tuple[Series, int]] = {}  # key -> (series, end), from store
        self._closed: set[str] = set()
        self.late_events = 0
        self.replayed_events = 0
        self.whole_merges = 0  # partials merged from their pre-built sums
        self.event_merges = 0  # partials merged event by event (replays)

    def watermark_ms(self, series: Series) -> int:
        """The series' watermark; ``NEVER`` for a series not seen yet."""
        clock = self._series.get(series)
        if clock is None:
            return NEVER
        return clock.watermark_ms(
            self._clock(), self.allowed_lateness_s * 1000, self.idle_timeout_s
        )

    def add(self, partial: WindowPartial) -> Merge:
        """Merge the events of ``partial`` not merged yet. Raises ``PartialError`` (before
        changing anything) for a partial whose columns do not hold together."""
        partial.check()
        key = partial.key
        current = self.store.get(key)
        if current is None and partial.end_ms <= self._expiry_ms(partial.series):
            self.late_events += partial.events
            return Merge(late=partial.events)
        state = _new_state(partial) if current is None else _decode(current)
        part, replayed = self._unmerged(state, partial)
        self.replayed_events += replayed
        if part is None:
            return Merge(replayed=replayed)
        state.absorb(part)
        self.store[key] = _encode(state)
        self._windows[key] = (partial.series, partial.end_ms)
        if part.events:
            self._observe(partial.series, partial.max_event_time_ms)
        return Merge(counted=part.events, replayed=replayed, changed=True)

    def _unmerged(
        self, state: WindowState, partial: WindowPartial
    ) -> tuple[WindowCounts | None, int]:
        """The part of ``partial`` not merged into ``state`` yet (None: nothing) and how many
        event rows were skipped; moves ``state.hwm`` past the partial's offsets."""
        if not partial.runs:
            self.whole_merges += 1
            return partial, 0
        marks = dict(state.hwm)
        whole = True
        for run in partial.runs:  # runs of one source are in delivery order
            source = source_key(partial.stream, run)
            whole = whole and run.first > marks.get(source, -1)
            marks[source] = max(marks.get(source, -1), run.last)
        if whole:
            self.whole_merges += 1
            state.hwm = marks
            return partial, 0
        keep = []
        for run, index, offset in partial.offsets():
            source = source_key(partial.stream, run)
            if offset > state.hwm.get(source, -1):
                state.hwm[source] = offset
                keep.append(index)
        skipped = len(partial.columns) - len(keep)
        if not keep:
            return None, skipped
        self.event_merges += 1
        return partial.select(keep), skipped

    def _observe(self, series: Series, max_event_time_ms: int) -> None:
        now = self._clock()
        clock = self._series.get(series)
        if clock is None:
            clock = self._series[series] = SeriesClock(seen_at_s=now)
        clock.observe(max_event_time_ms, now, self.allowed_lateness_s * 1000, self.idle_timeout_s)

    def _expiry_ms(self, series: Series) -> int:
        watermark = self.watermark_ms(series)
        return NEVER if watermark == NEVER else watermark - self.retention_s * 1000

    def _ends(self) -> list[tuple[str, Series, int]]:
        """Every window in the store with its series and end. Windows this aggregator has not
        merged into (restored from the changelog) are read once, seeding their series' clock."""
        ends = []
        for key in list(self.store):
            known = self._windows.get(key)
            if known is None:
                value = self.store.get(key)
                if value is None:
                    continue
                state = _decode(value)
                known = self._windows[key] = (state.series, state.end_ms)
                if state.events:
                    self._observe(state.series, state.max_event_time_ms)
            ends.append((key, *known))
        return ends

    def _past(self, margin_ms: int) -> list[str]:
        """Windows whose end is at least ``margin_ms`` behind their series' watermark."""
        watermarks: dict[Series, int] = {}
        past = []
        for key, series, end in self._ends():
            watermark = watermarks.get(series)
            if watermark is None:
                watermark = watermarks[series] = self.watermark_ms(series)
            if watermark != NEVER and end <= watermark - margin_ms:
                past.append(key)
        return past

    def due(self) -> list[str]:
        """Open windows whose end is at or before their series' watermark: publish as final,
        oldest first."""
        due = [key for key in self._past(0) if key not in self._closed]
        return sorted(due, key=lambda key: (self._windows[key][1], key))

    def expired(self) -> list[str]:
        """Windows past the retention: their state can be deleted."""
        return self._past(self.retention_s * 1000)

    def snapshot(self, key: str) -> WindowStats | None:
        """Current stats of ``key``; final once the window has closed."""
        value = self.store.get(key)
        if value is None:
            return None
        return finalise(
            _decode(value),
            is_final=key in self._closed,
            version=self._version_clock(),
            bias_confidence=self.bias_confidence,
            bias_min_per_group=self.bias_min_per_group,
        )

    def close(self, key: str) -> WindowStats | None:
        """Mark ``key`` closed and return its final snapshot."""
        if key not in self.store:
            return None
        self._closed.add(key)
        return self.snapshot(key)

    def expire(self, key: str) -> None:
        self.store.pop(key, None)
        self._closed.discard(key)
        self._windows.pop(key, None)


def _new_state(partial: WindowPartial) -> WindowState:
    return WindowState(
        model=partial.model,
        model_version=partial.model_version,
        deployment=partial.deployment,
        window_start_ms=partial.window_start_ms,
        window_s=partial.window_s,
    )
