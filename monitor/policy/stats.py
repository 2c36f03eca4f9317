"""Confidence bounds the policy decides with: rates, differences of rates, quantiles.

A trigger fires on the *one-sided* bound at the configured confidence: "the error rate is
above 5 % with 95 % confidence" is a Wilson lower bound above 0.05. Wilson (not the normal
approximation) because it stays sane at 0 of 50 and 50 of 50; Newcombe's hybrid score interval
for canary minus stable, built from the two Wilson intervals; a quantile's bound from the
binomial distribution of its rank, read off the window's DDSketch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

from ddsketch import DDSketch


def z_one_sided(confidence: float) -> float:
    if not 0.5 < confidence < 1:
        raise ValueError(f"confidence must be in (0.5, 1), got {confidence}")
    return NormalDist().inv_cdf(confidence)


@dataclass(frozen=True)
class Bound:
    """An estimate with one-sided lower and upper bounds at one confidence."""

    value: float
    low: float
    high: float


def wilson(successes: int, n: int, confidence: float) -> Bound:
    """Wilson score bounds of ``successes / n``; n = 0 gives the uninformative [0, 1]."""
    if n <= 0:
        return Bound(0.0, 0.0, 1.0)
    if not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes}/{n}")
    z = z_one_sided(confidence)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return Bound(p, max(0.0, centre - half), min(1.0, centre + half))


def rate_difference(
    successes_a: int, n_a: int, successes_b: int, n_b: int, confidence: float
) -> Bound:
    """Bounds of p_a − p_b by Newcombe's hybrid score method (his method 10)."""
    a, b = wilson(successes_a, n_a, confidence), wilson(successes_b, n_b, confidence)
    d = a.value - b.value
    low = d - math.sqrt((a.value - a.low) ** 2 + (b.high - b.value) ** 2)
    high = d + math.sqrt((a.high - a.value) ** 2 + (b.value - b.low) ** 2)
    return Bound(d, max(-1.0, low), min(1.0, high))


def quantile_bounds(sketch: DDSketch, q: float, confidence: float) -> Bound | None:
    """The q-quantile with bounds from its rank's binomial spread; None for an empty sketch."""
    n = int(sketch.count)
    if n <= 0:
        return None
    z = z_one_sided(confidence)
    spread = z * math.sqrt(n * q * (1 - q))
    low_rank = max(0.0, math.floor(n * q - spread)) / n
    high_rank = min(float(n), math.ceil(n * q + spread)) / n

    def at(rank: float) -> float:
        value = sketch.get_quantile_value(min(max(rank, 0.0), 1.0))
        return float(value) if value is not None else 0.0

    return Bound(at(q), at(low_rank), at(high_rank))
