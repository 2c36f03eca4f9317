"""The detector interface, its result types, and the registry object that holds instances.

A Detector is pure and batched: ``score(batch) -> findings``. Stateful monitors (drift, spikes)
are separate objects with ``update(...)`` and ``drift_detected``; they do not live here.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol, runtime_checkable

import msgspec

from monitor.ingest.events import Event


class Span(msgspec.Struct, frozen=True, array_like=True):
    """A character range [start, end) of ``field`` ("prompt", "response", ...) with a type."""

    start: int
    end: int
    type: str
    field: str


class Finding(msgspec.Struct, frozen=True):
    """What one detector concluded about one event. ``score`` is in [0, 1]."""

    request_id: str
    detector: str
    detector_version: str
    score: float
    flagged: bool
    category: str
    spans: tuple[Span, ...] = ()
    details: dict[str, str] = msgspec.field(default_factory=dict)


@runtime_checkable
class Detector(Protocol):
    """A named, versioned, pure batch scorer. Findings are only returned for events it matched."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    def score(self, batch: Sequence[Event]) -> list[Finding]: ...


class DuplicateDetectorError(ValueError):
    """Two detectors were registered under one name."""


class DetectorRegistry:
    """The detectors a pipeline runs, by unique name. Built per pipeline, never global."""

    def __init__(self, detectors: Sequence[Detector] = ()) -> None:
        self._detectors: dict[str, Detector] = {}
        for detector in detectors:
            self.register(detector)

    def register(self, detector: Detector) -> None:
        if detector.name in self._detectors:
            raise DuplicateDetectorError(
                f"a detector named {detector.name!r} is already registered"
            )
        self._detectors[detector.name] = detector

    def get(self, name: str) -> Detector:
        try:
            return self._detectors[name]
        except KeyError:
            known = ", ".join(sorted(self._detectors)) or "none"
            raise KeyError(f"no detector {name!r}; registered: {known}") from None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._detectors)

    def __iter__(self) -> Iterator[Detector]:
        return iter(self._detectors.values())

    def __len__(self) -> int:
        return len(self._detectors)


def run_detectors(
    detectors: Iterable[Detector], batch: Sequence[Event]
) -> tuple[list[Finding], dict[str, float]]:
    """Every detector over ``batch``: the findings, and the seconds each detector took."""
    findings: list[Finding] = []
    seconds: dict[str, float] = {}
    for detector in detectors:
        started = time.perf_counter()
        findings.extend(detector.score(batch))
        seconds[detector.name] = time.perf_counter() - started
    return findings, seconds
