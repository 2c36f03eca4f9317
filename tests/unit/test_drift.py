"""Drift primitives: the mean-shift permutation test and online rate-change detection."""

from __future__ import annotations

import numpy as np
import pytest

from detectors.drift import RateDrift, mean_shift_test


def test_same_distribution_is_not_drift() -> None:
    rng = np.random.default_rng(1)
    result = mean_shift_test(rng.normal(size=(100, 16)), rng.normal(size=(100, 16)), seed=1)
    assert not result.drifted(alpha=0.01)
    assert 0 < result.p_value <= 1


def test_a_shifted_mean_is_drift_with_the_smallest_p_value() -> None:
    rng = np.random.default_rng(2)
    shifted = rng.normal(size=(100, 16)) + 0.5
    result = mean_shift_test(rng.normal(size=(100, 16)), shifted, permutations=99)
    assert result.drifted(alpha=0.05)
    assert result.p_value == pytest.approx(1 / 100)  # never 0: the +1 correction


@pytest.mark.parametrize(
    ("reference", "current", "message"),
    [
        (np.zeros((5, 3)), np.zeros((5, 4)), "same width"),
        (np.zeros((1, 3)), np.zeros((5, 3)), "at least two"),
        (np.zeros(3), np.zeros((5, 3)), "2-d"),
    ],
)
def test_bad_shapes_are_refused(reference: np.ndarray, current: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mean_shift_test(reference, current)


def test_rate_step_is_detected_by_both_and_a_steady_rate_by_neither() -> None:
    rng = np.random.default_rng(3)
    steady, stepped = RateDrift(), RateDrift()
    fired_steady: set[str] = set()
    first: dict[str, int] = {}
    for window in range(120):
        fired_steady |= steady.update(int(rng.binomial(500, 0.02)), 500)
        p = 0.02 if window < 60 else 0.10
        for name in stepped.update(int(rng.binomial(500, p)), 500):
            first.setdefault(name, window)
    assert fired_steady == set()
    assert set(first) == {"adwin", "page_hinkley"}
    assert all(60 <= w <= 65 for w in first.values())


@pytest.mark.parametrize(("flagged", "events"), [(-1, 10), (11, 10), (0, 0)])
def test_bad_counts_are_refused(flagged: int, events: int) -> None:
    with pytest.raises(ValueError, match="flagged"):
        RateDrift().update(flagged, events)
