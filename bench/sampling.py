"""Sampled detectors, honest statistics: do a window's rate bounds cover the true flag rate?

Run: ``.venv/bin/python -m bench.sampling [--windows 2000] [--events 1000] [--rate 0.1]``.

Each seeded window has ``--events`` events of one series; a detector flags each event it
scores with a known probability (drawn per window from ``TRUE_RATES``). The detector scores
only the sample its rate picks (``Sampler``: a hash of the request id, as the embed role
does), the embed role's flags-only partial counts its flags and the events it scored
(``finding_partials``), the score role's partial counts the events, the window merges both
and is finalised (``finalise``), and the policy's merge (``Merged.rate_counts``) gives the
(flagged, scored) pair its rules bound with ``wilson``. Printed, over all windows:

- ``low`` / ``high``: how often the one-sided lower (upper) Wilson bound at the policy's
  confidence (0.95) is at or under (over) the true rate: what keeps a rule from firing
  (resolving) on noise;
- ``interval``: how often the two-sided interval at 95 % (both bounds at 0.975) covers it;
- ``by events``: the same interval with the event count as denominator (what windows did
  before they counted scored events): it covers almost never, the bias sampling brings.

Baseline for the ratio: the same windows without sampling (rate 1).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass

import numpy as np

from detectors.base import Finding
from monitor.ingest.events import Event
from monitor.policy.engine import Merged
from monitor.policy.stats import wilson
from monitor.scoring.sampling import Sampler, sampled
from monitor.windows.stats import (
    WindowCounts,
    build_partials,
    finalise,
    finding_partials,
)

T0 = 1_795_514_400_000
WINDOW_S = 60
DETECTOR = "toxicity"
TRUE_RATES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4)
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Coverage:
    windows: int
    rate: float
    events: int
    mean_scored: float
    low: float  # share of windows whose one-sided lower bound <= the true rate
    high: float  # ... whose one-sided upper bound >= the true rate
    interval: float  # ... whose two-sided 95 % interval covers it
    by_events: float  # ... the same interval over the event count (the dishonest way)
    seconds: float


def window(
    seed: int, events: int, rate: float, *, fast: bool = False
) -> tuple[float, int, int, int]:
    """One seeded window through the real path: (true rate, flagged, scored, events).
    ``fast`` counts the sample's flags directly, skipping partials, merge and policy (the
    tests check both give the same counts)."""
    rng = np.random.default_rng(seed)
    true_rate = TRUE_RATES[seed % len(TRUE_RATES)]
    ids = [f"s{seed}-{i}-{n}" for i, n in enumerate(rng.integers(1 << 62, size=events))]
    if fast:
        picked = sum(1 for request_id in ids if sampled(request_id, rate))
        return true_rate, int((rng.random(picked) < true_rate).sum()), picked, events
    batch = [
        Event(request_id=request_id, timestamp=T0 + i, model="m", model_version="v",
              deployment="canary")
        for i, request_id in enumerate(ids)
    ]  # fmt: skip
    sample = Sampler({DETECTOR: rate}).select(DETECTOR, batch)
    flags = rng.random(len(sample)) < true_rate
    findings = [
        Finding(e.request_id, DETECTOR, "1", 1.0, True, "toxic")
        for e, flagged in zip(sample, flags, strict=True)
        if flagged
    ]
    scored = {DETECTOR: {e.request_id for e in sample}}
    parts = [*build_partials(batch, [], WINDOW_S), *finding_partials(batch, findings, WINDOW_S,
                                                                     scored=scored)]  # fmt: skip
    state = WindowCounts(
        model="m", model_version="v", deployment="canary", window_start_ms=parts[0].window_start_ms,
        window_s=WINDOW_S,
    )  # fmt: skip
    for part in parts:
        state.absorb(part)
    stats = finalise(state, is_final=True, version=1)
    flagged, n = Merged.of([stats]).rate_counts([DETECTOR], CONFIDENCE)
    return true_rate, flagged, n, stats.events


def coverage(
    windows: int = 2000, events: int = 1000, rate: float = 0.1, *, fast: bool = False
) -> Coverage:
    started = time.perf_counter()
    low = high = interval = by_events = 0
    scored_total = 0
    two_sided = (1 + CONFIDENCE) / 2
    for seed in range(windows):
        p, flagged, n, total = window(seed, events, rate, fast=fast)
        scored_total += n
        one = wilson(flagged, n, CONFIDENCE)
        both = wilson(flagged, n, two_sided)
        naive = wilson(flagged, total, two_sided)
        low += one.low <= p
        high += one.high >= p
        interval += both.low <= p <= both.high
        by_events += naive.low <= p <= naive.high
    return Coverage(
        windows=windows,
        rate=rate,
        events=events,
        mean_scored=scored_total / windows,
        low=low / windows,
        high=high / windows,
        interval=interval / windows,
        by_events=by_events / windows,
        seconds=time.perf_counter() - started,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--windows", type=int, default=2000)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=0.1)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    sampled = coverage(args.windows, args.events, args.rate)
    baseline = coverage(args.windows, args.events, 1.0)
    if args.json:
        print(json.dumps({"sampled": asdict(sampled), "baseline": asdict(baseline)}))
        return
    print(f"{args.windows} seeded windows of {args.events} events, true rates {TRUE_RATES}")
    print(f"{'sample rate':>11} {'scored':>7} {'low<=p':>7} {'high>=p':>7} {'95% CI':>7} "
          f"{'by events':>9} {'seconds':>7}")  # fmt: skip
    for c in (sampled, baseline):
        print(f"{c.rate:>11.2f} {c.mean_scored:>7.1f} {c.low:>7.3f} {c.high:>7.3f} "
              f"{c.interval:>7.3f} {c.by_events:>9.3f} {c.seconds:>7.1f}")  # fmt: skip
    ratio = sampled.interval / baseline.interval
    print(f"ratio (interval coverage, sampled / unsampled): {ratio:.3f}")


if __name__ == "__main__":
    main()
