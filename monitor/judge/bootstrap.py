"""The paired bootstrap interval of a win rate, and the promotion gate built on it.

Each compared prompt contributes one outcome for the canary: 1 (win), 0.5 (tie, including
position-inconsistent verdicts) or 0 (loss). The win rate is their mean. The *pair* — one
prompt with both versions' answers, judged in both orders — is the unit resampled: the
bootstrap draws prompts with replacement and keeps each prompt's outcome whole, so the
interval reflects the variation between prompts, not between the two judge calls of one
prompt. Percentile interval, seeded: the same outcomes always give the same interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

WIN, TIE, LOSS = 1.0, 0.5, 0.0


@dataclass(frozen=True)
class WinRate:
    """A win rate with its bootstrap interval at ``confidence``; ``n`` compared prompts."""

    value: float
    low: float
    high: float
    n: int
    wins: int
    ties: int
    losses: int
    confidence: float


def paired_bootstrap(
    outcomes: Sequence[float], *, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> WinRate:
    """The mean of ``outcomes`` (each 1, 0.5 or 0) and its percentile bootstrap interval."""
    if not 0.5 < confidence < 1:
        raise ValueError(f"confidence must be in (0.5, 1), got {confidence}")
    if resamples < 100:
        raise ValueError(f"resamples must be at least 100, got {resamples}")
    x = np.asarray(outcomes, dtype=np.float64)
    wins, ties = int(np.sum(x == WIN)), int(np.sum(x == TIE))
    losses = int(x.size) - wins - ties
    if x.size == 0:
        return WinRate(0.5, 0.0, 1.0, 0, 0, 0, 0, confidence)  # no data: the widest interval
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return WinRate(
        float(x.mean()), float(low), float(high), int(x.size), wins, ties, losses, confidence
    )


def promotion_gate(win_rate_low: float, threshold: float = 0.5, *, n: int = 0,
                   min_pairs: int = 1) -> bool | None:  # fmt: skip
    """Whether the canary may be promoted: the interval's lower bound of its win rate against
    stable is at least ``threshold`` (0.5: not worse than stable; lower to tolerate a small
    loss). ``None`` — inconclusive, neither promote nor roll back — under ``min_pairs``
    compared prompts: too little data is never a verdict."""
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if n < min_pairs:
        return None
    return win_rate_low >= threshold
