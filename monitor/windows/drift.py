"""Drift per series (model, version, deployment), judged window by window.

The algorithms live in ``detectors.drift``; this module keeps their per-series state:

- ``EmbeddingDrift`` (embed role): each version's first responses are its reference; every
  later window of responses is tested against it once, when the next window begins.
- ``WindowRateDrift`` (aggregate role): change detection on each series' per-window rates
  (error rate, detector flag rates), fed every *final* window once. Each (series, signal) has
  its own river ADWIN + Page-Hinkley pair (``detectors.drift.RateDrift``); a signal that fires
  becomes a ``drift`` finding with category ``rate:<signal>``. A signal seen once is fed zero
  in later windows where nothing was flagged, so a rate falling to zero counts.

Both return ``FindingRow``s, stored like any other finding. State is in memory: after a
restart the monitors relearn from the next windows.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from detectors.base import Finding
from detectors.drift import DRIFT_DETECTOR, DRIFT_VERSION, RateDrift, mean_shift_test
from monitor.config import DriftSettings
from monitor.ingest.events import Event
from monitor.scoring.rows import FindingRow
from monitor.windows.stats import WindowStats, window_start

MAX_SERIES = 1000  # per monitor; the least recently seen series is forgotten first
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


@dataclass
class _SeriesDrift:
    reference: list[npt.NDArray[np.float32]] = field(default_factory=list)
    window_start_ms: int = -1
    current: list[npt.NDArray[np.float32]] = field(default_factory=list)
    last_event_ms: int = 0


class EmbeddingDrift:
    """Per model version: the first responses are the reference; each later window is tested.

    A window is tested when the first event of a later window arrives for the same series, so
    every window is judged once, on all its events, and only by event time.
    """

    def __init__(self, settings: DriftSettings, window_s: int) -> None:
        self.settings = settings
        self.window_s = window_s
        self._series: OrderedDict[tuple[str, str, str], _SeriesDrift] = OrderedDict()

    def update(self, events: Sequence[Event], vectors: npt.NDArray[np.float32]) -> list[FindingRow]:
        """Feed response embeddings (one row per event); returns findings for tested windows."""
        out = []
        for event, vector in zip(events, vectors, strict=True):
            key = (event.model, event.model_version, event.deployment)
            state = self._series.get(key)
            if state is None:
                state = self._series[key] = _SeriesDrift()
                if len(self._series) > MAX_SERIES:
                    self._series.popitem(last=False)
            self._series.move_to_end(key)
            if len(state.reference) < self.settings.reference_events:
                state.reference.append(vector)
                continue
            start = window_start(event.timestamp_ms, self.window_s)
            if start > state.window_start_ms:
                row = self._test(key, state)
                if row is not None:
                    out.append(row)
                state.window_start_ms, state.current = start, []
            if start == state.window_start_ms:  # late events of an already tested window: skip
                state.current.append(vector)
            state.last_event_ms = max(state.last_event_ms, event.timestamp_ms)
        return out

    def _test(self, key: tuple[str, str, str], state: _SeriesDrift) -> FindingRow | None:
        if len(state.current) < self.settings.min_window_events:
            return None
        test = mean_shift_test(
            np.stack(state.reference),
            np.stack(state.current),
            permutations=self.settings.permutations,
            seed=state.window_start_ms,
        )
        flagged = test.drifted(self.settings.alpha)
        model, version, deployment = key
        return FindingRow(
            finding=Finding(
                request_id=f"window:{model}|{version}|{deployment}|{state.window_start_ms}",
                detector=DRIFT_DETECTOR,
                detector_version=DRIFT_VERSION,
                score=1.0 - test.p_value,
                flagged=flagged,
                category="embedding",
                details={
                    "p_value": f"{test.p_value:.4f}",
                    "distance": f"{test.distance:.6f}",
                    "reference_events": str(len(state.reference)),
                    "window_events": str(len(state.current)),
                    "alpha": str(self.settings.alpha),
                },
            ),
            event_time_ms=state.window_start_ms,
            model=model,
            model_version=version,
            deployment=deployment,
            route="",
        )
