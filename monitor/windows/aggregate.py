"""Merging window partials into per-series tumbling windows, and closing them by watermark.

State lives in a ``MutableMapping[str, bytes]`` supplied by the caller: a faust Table backed
by a changelog topic in the worker, a dict in tests. The watermark is the largest event time
seen minus the allowed lateness. A window *closes* (a final snapshot is published) once its
end falls behind the watermark, but its state is kept for ``retention_s`` more: partials that
arrive late, as they do when partitions are consumed unevenly during a backfill, still merge
and re-publish the final snapshot (ReplacingMergeTree keeps the newest). Only partials older
than the retention are left out and counted in ``late_events`` (their events are still stored
in ``events``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, MutableMapping

import msgspec

from monitor.windows.stats import WindowPartial, WindowStats, finalise

_encode = msgspec.msgpack.encode
_decode = msgspec.msgpack.Decoder(WindowPartial).decode


class WindowAggregator:
    """Merges partials, closes windows past the watermark, expires them after retention."""

    def __init__(
        self,
        store: MutableMapping[str, bytes],
        *,
        allowed_lateness_s: int,
        retention_s: int = 3600,
        version_clock: Callable[[], int] = time.time_ns,
        bias_confidence: float = 0.95,
        bias_min_per_group: int = 5,
    ) -> None:
        if allowed_lateness_s < 0:
            raise ValueError(f"allowed_lateness_s must be >= 0, got {allowed_lateness_s}")
        if retention_s < 0:
            raise ValueError(f"retention_s must be >= 0, got {retention_s}")
        self.store = store
        self.allowed_lateness_s = allowed_lateness_s
        self.retention_s = retention_s
        self._version_clock = version_clock
        self.bias_confidence = bias_confidence
        self.bias_min_per_group = bias_min_per_group
        self._max_event_time_ms = 0
        self._closed: set[str] = set()
        self.late_events = 0

    @property
    def watermark_ms(self) -> int:
        return self._max_event_time_ms - self.allowed_lateness_s * 1000

    def add(self, partial: WindowPartial) -> bool:
        """Merge ``partial``; False when it is older than the retention and was left out."""
        key = partial.key
        window_end = partial.window_start_ms + partial.window_s * 1000
        current = self.store.get(key)
        if current is None and window_end <= self.watermark_ms - self.retention_s * 1000:
            self.late_events += partial.events
            return False
        merged = partial if current is None else _decode(current).merge(partial)
        self.store[key] = _encode(merged)
        self._max_event_time_ms = max(self._max_event_time_ms, partial.max_event_time_ms)
        return True

    def _ends(self) -> list[tuple[str, int]]:
        ends = []
        for key, value in list(self.store.items()):
            state = _decode(value)
            ends.append((key, state.window_start_ms + state.window_s * 1000))
        return ends

    def due(self) -> list[str]:
        """Open windows whose end is at or before the watermark: publish them as final."""
        watermark = self.watermark_ms
        return [k for k, end in self._ends() if end <= watermark and k not in self._closed]

    def expired(self) -> list[str]:
        """Windows past the retention: their state can be deleted."""
        limit = self.watermark_ms - self.retention_s * 1000
        return [k for k, end in self._ends() if end <= limit]

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
