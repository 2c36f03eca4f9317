"""Drift: has a model version's output moved away from its reference?

Two questions, two tools:

- **embedding drift** — are this window's responses, as sentence embeddings, distributed like
  the reference window's? ``mean_shift_test`` compares the two mean embeddings and calibrates
  the distance with a permutation test (shuffle the pooled vectors, re-split, re-measure), so
  the p-value holds for any embedding model without a hand-set threshold;
- **rate drift** — has a per-window rate (error rate, a detector's flag rate) changed?
  ``RateDrift`` feeds each window's value to river's ADWIN and Page-Hinkley detectors, both
  built for exactly this online change detection.

Detection delay and false-alarm rates on seeded streams are measured by ``bench/drift.py``
(docs/benchmarks.md); nothing here is tuned in tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

DRIFT_DETECTOR = "drift"
DRIFT_VERSION = "1.0.0"


@dataclass(frozen=True)
class DriftTest:
    """A mean-shift permutation test's result."""

    distance: float
    p_value: float
    permutations: int

    def drifted(self, alpha: float = 0.01) -> bool:
        return self.p_value < alpha


def mean_shift_test(
    reference: npt.NDArray[np.floating[Any]],
    current: npt.NDArray[np.floating[Any]],
    *,
    permutations: int = 500,
    seed: int = 0,
) -> DriftTest:
    """Distance between mean embeddings and its permutation p-value (with the +1 correction,
    so p is never 0 and is exact under exchangeability)."""
    if reference.ndim != 2 or current.ndim != 2 or reference.shape[1] != current.shape[1]:
        raise ValueError(
            f"need two 2-d arrays of the same width, got {reference.shape} and {current.shape}"
        )
    if len(reference) < 2 or len(current) < 2:
        raise ValueError("need at least two vectors on each side")
    if permutations < 1:
        raise ValueError(f"permutations must be >= 1, got {permutations}")
    pooled = np.concatenate([reference, current]).astype(np.float64)
    n = len(reference)
    total = pooled.sum(axis=0)

    def distance(first: npt.NDArray[np.float64]) -> float:
        mean_a = first / n
        mean_b = (total - first) / (len(pooled) - n)
        return float(np.sum((mean_a - mean_b) ** 2))

    observed = distance(pooled[:n].sum(axis=0))
    rng = np.random.default_rng(seed)
    exceed = 0
    for _ in range(permutations):
        pick = rng.permutation(len(pooled))[:n]
        if distance(pooled[pick].sum(axis=0)) >= observed:
            exceed += 1
    return DriftTest(observed, (exceed + 1) / (permutations + 1), permutations)


@dataclass
class RateDrift:
    """Online change detection on one per-window rate with river's ADWIN and Page-Hinkley."""

    adwin_delta: float = 0.002
    ph_delta: float = 0.005
    ph_threshold: float = 0.05
    ph_min_instances: int = 10
    _adwin: Any = field(init=False, repr=False)
    _page_hinkley: Any = field(init=False, repr=False)
    windows: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        from river import drift

        if not 0 < self.adwin_delta < 1:
            raise ValueError(f"adwin_delta must be in (0, 1), got {self.adwin_delta}")
        self._adwin = drift.ADWIN(delta=self.adwin_delta)  # type: ignore[no-untyped-call]
        self._page_hinkley = drift.PageHinkley(
            min_instances=self.ph_min_instances,
            delta=self.ph_delta,
            threshold=self.ph_threshold,
            mode="both",
        )

    def update(self, flagged: int, events: int) -> set[str]:
        """Feed one window's counts; returns the detectors that signalled a change now.

        ADWIN gets the window's events one by one as 0/1 outcomes (ones spread evenly): its
        bound assumes values in [0, 1], so fed window *rates* of a few percent it cannot see a
        2 % → 10 % step at all (measured); fed outcomes, its windows grow to thousands of
        samples and it can. Page-Hinkley gets the window rate.
        """
        if events <= 0 or not 0 <= flagged <= events:
            raise ValueError(f"need 0 <= flagged <= events and events > 0, got {flagged}/{events}")
        self.windows += 1
        fired = set()
        for i in range(events):
            # The i-th outcome is 1 when the running share of ones falls behind the rate.
            self._adwin.update(float((i + 1) * flagged // events - i * flagged // events))
            if self._adwin.drift_detected:
                fired.add("adwin")
        rate = flagged / events
        self._page_hinkley.update(rate)
        if self._page_hinkley.drift_detected:
            fired.add("page_hinkley")
        return fired
