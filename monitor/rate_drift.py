"""Change detection on each model version's per-window rates (error rate, detector flag rates).

The aggregator hands every *final* window here once. Each (series, signal) has its own river
ADWIN + Page-Hinkley pair (``detectors.drift.RateDrift``); a signal that fires becomes a
``drift`` finding with category ``rate:<signal>``, stored like any other finding. A signal seen
once is fed zero in later windows where nothing was flagged, so a rate falling to zero counts.
State is in memory: after a restart the detectors relearn from the next windows.
"""

from __future__ import annotations

from collections import OrderedDict

from detectors.base import Finding
from detectors.drift import DRIFT_DETECTOR, DRIFT_VERSION, RateDrift
from monitor.pipeline import FindingRow
from monitor.windows import WindowStats

MAX_SERIES = 1000
SEEN_WINDOWS = 10_000


class WindowRateDrift:
    """Feeds final windows to per-series rate detectors; returns findings for changes."""

    def __init__(self) -> None:
        self._detectors: OrderedDict[tuple[str, str, str], dict[str, RateDrift]] = OrderedDict()
        self._seen: OrderedDict[tuple[str, str, str, int], None] = OrderedDict()

    def update(self, stats: WindowStats) -> list[FindingRow]:
        if not stats.is_final or stats.events <= 0:
            return []
        series = (stats.model, stats.model_version, stats.deployment)
        window = (*series, stats.window_start_ms)
        if window in self._seen:  # a late partial re-published this window: judged already
            return []
        self._seen[window] = None
        if len(self._seen) > SEEN_WINDOWS:
            self._seen.popitem(last=False)
        detectors = self._detectors.setdefault(series, {})
        self._detectors.move_to_end(series)
        if len(self._detectors) > MAX_SERIES:
            self._detectors.popitem(last=False)
        counts = {"error_rate": stats.errors + stats.timeouts}
        counts.update({f"flag_rate:{name}": n for name, n in stats.flags.items()})
        for name in detectors:
            counts.setdefault(name, 0)
        rows = []
        for signal, count in sorted(counts.items()):
            detector = detectors.setdefault(signal, RateDrift())
            fired = detector.update(min(count, stats.events), stats.events)
            if fired:
                rows.append(self._row(stats, signal, count, fired))
        return rows

    @staticmethod
    def _row(stats: WindowStats, signal: str, count: int, fired: set[str]) -> FindingRow:
        series = f"{stats.model}|{stats.model_version}|{stats.deployment}"
        return FindingRow(
            finding=Finding(
                request_id=f"window:{series}|{stats.window_start_ms}|{signal}",
                detector=DRIFT_DETECTOR,
                detector_version=DRIFT_VERSION,
                score=1.0,
                flagged=True,
                category=f"rate:{signal}",
                details={
                    "rate": f"{count / stats.events:.4f}",
                    "events": str(stats.events),
                    "detectors": ",".join(sorted(fired)),
                },
            ),
            event_time_ms=stats.window_start_ms,
            model=stats.model,
            model_version=stats.model_version,
            deployment=stats.deployment,
            route="",
        )
