"""Which events the semantic detectors score: a per-detector rate, fixed or adapted to backlog.

An event is in a detector's sample when its ``sample_point`` (a hash of its request id, uniform
in [0, 1)) is under the detector's rate. The choice is deterministic: a batch processed again
at the same rate picks the same events, and every detector's sample at a lower rate lies
inside the sample of any detector at a higher one (one hash for all). Events are independent
of their request ids, so the sample is a uniform random one and the windows' flags over the
events scored estimate the flag rate without bias; the Wilson bounds the windows and the
policy use are over the scored count (monitor/windows/stats.py, monitor/policy/engine.py).

With ``detectors.sampling.max_lag_s`` set, ``BacklogController`` scales every rate by a factor
in [``min_rate``, 1]: it halves the factor while the embed role reads records older than
``max_lag_s`` (it is falling behind) and raises it by a quarter once they are younger than half
of it, at most once per ``adjust_interval_s``. The windows record, per event, whether it was
scored, so whatever the rate was when a window's events were processed, its rates stay honest.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Final

import msgspec

from detectors.base import Finding
from monitor.config import DetectorsSettings
from monitor.ingest.events import Event

_SCALE: Final = float(1 << 64)
DECREASE: Final = 0.5
INCREASE: Final = 1.25


def sample_point(request_id: str) -> float:
    """The event's place in [0, 1): the first 8 bytes of the BLAKE2b hash of its request id."""
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def sampled(request_id: str, rate: float) -> bool:
    """Whether a detector at ``rate`` scores the event (every one at rate 1)."""
    return rate >= 1.0 or sample_point(request_id) < rate


class BacklogController:
    """A factor in [``min_rate``, 1] on every sampling rate: multiplicative decrease while the
    backlog is over ``max_lag_s``, increase once under half of it (hysteresis between)."""

    def __init__(
        self,
        max_lag_s: float,
        *,
        min_rate: float = 0.05,
        adjust_interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_lag_s <= 0:
            raise ValueError(f"max_lag_s must be > 0, got {max_lag_s}")
        if not 0 < min_rate <= 1:
            raise ValueError(f"min_rate must be in (0, 1], got {min_rate}")
        if adjust_interval_s < 0:
            raise ValueError(f"adjust_interval_s must be >= 0, got {adjust_interval_s}")
        self.max_lag_s = max_lag_s
        self.min_rate = min_rate
        self.adjust_interval_s = adjust_interval_s
        self._clock = clock
        self._scale = 1.0
        self._changed_at: float | None = None

    @property
    def scale(self) -> float:
        return self._scale

    def update(self, lag_s: float) -> float:
        """Observe the backlog (age of the oldest record in the batch); the new factor."""
        now = self._clock()
        if self._changed_at is not None and now - self._changed_at < self.adjust_interval_s:
            return self._scale
        if lag_s > self.max_lag_s:
            scale = max(self.min_rate, self._scale * DECREASE)
        elif lag_s < self.max_lag_s / 2:
            scale = min(1.0, self._scale * INCREASE)
        else:
            scale = self._scale
        if scale != self._scale:
            self._scale, self._changed_at = scale, now
        return self._scale


class Sampler:
    """Each semantic detector's current rate (its configured ``sample_rate`` times the backlog
    factor) and the events it picks."""

    def __init__(
        self, rates: Mapping[str, float], controller: BacklogController | None = None
    ) -> None:
        for name, rate in rates.items():
            if not 0 < rate <= 1:
                raise ValueError(f"{name}: sample_rate must be in (0, 1], got {rate}")
        self.rates = dict(rates)
        self.controller = controller

    @classmethod
    def from_settings(
        cls, settings: DetectorsSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> Sampler:
        s = settings.sampling
        controller = (
            None
            if s.max_lag_s is None
            else BacklogController(
                s.max_lag_s,
                min_rate=s.min_rate,
                adjust_interval_s=s.adjust_interval_s,
                clock=clock,
            )
        )
        rates = {
            "toxicity": settings.toxicity.sample_rate,
            "hallucination": settings.hallucination.sample_rate,
            "injection": settings.injection.sample_rate,
            "drift": settings.drift.sample_rate,
        }
        return cls(rates, controller)

    def observe_lag(self, lag_s: float) -> None:
        if self.controller is not None:
            self.controller.update(lag_s)

    def rate(self, detector: str) -> float:
        return self.scaled(self.rates.get(detector, 1.0))

    def scaled(self, base: float) -> float:
        """The rate a detector configured at ``base`` scores at now (shadows have their own)."""
        if self.controller is None:
            return base
        return max(base * self.controller.scale, min(base, self.controller.min_rate))

    @property
    def active(self) -> bool:
        """Whether any detector may score less than every event (windows then count scored)."""
        return self.controller is not None or any(rate < 1 for rate in self.rates.values())

    def select(self, detector: str, events: Sequence[Event]) -> list[Event]:
        return pick(self.rate(detector), events)


def pick(rate: float, events: Sequence[Event]) -> list[Event]:
    """The events a detector at ``rate`` scores: the same ones for every detector at one rate."""
    if rate >= 1:
        return list(events)
    return [e for e in events if sample_point(e.request_id) < rate]


def noted_rate(finding: Finding, rate: float) -> Finding:
    """The finding, noting the sampling rate it was scored at (for the analyst)."""
    return msgspec.structs.replace(
        finding, details={**finding.details, "sample_rate": f"{rate:.4g}"}
    )
