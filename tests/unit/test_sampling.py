"""Sampling the semantic detectors: deterministic picks, the backlog controller, scored counts
in the windows, the policy over scored counts, and coverage of the rate bounds over seeds."""

from __future__ import annotations

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from bench.sampling import coverage, window
from detectors.base import Finding
from detectors.embedding import EmbeddingService
from monitor.config import DetectorsSettings, load_settings
from monitor.ingest.decode import RawMessage
from monitor.metrics import create_metrics
from monitor.policy.config import Policy
from monitor.policy.engine import Merged, PolicyEngine
from monitor.scoring.sampling import BacklogController, Sampler, sample_point, sampled
from monitor.scoring.semantic import SemanticScorer
from monitor.windows.aggregate import WindowAggregator
from monitor.windows.stats import (
    EventColumns,
    EventSource,
    PartialError,
    WindowPartial,
    WindowStats,
    build_partials,
    finalise,
    finding_partials,
)
from streams.embed import backlog_seconds
from tests.conftest import decoded_event

T0 = 1_795_514_400_000


# -- which events ---------------------------------------------------------------------------------


def test_the_sample_is_deterministic_uniform_and_nested() -> None:
    ids = [f"req-{i}" for i in range(20_000)]
    assert [sample_point(i) for i in ids[:50]] == [sample_point(i) for i in ids[:50]]
    tenth = {i for i in ids if sampled(i, 0.1)}
    half = {i for i in ids if sampled(i, 0.5)}
    assert 0.09 < len(tenth) / len(ids) < 0.11
    assert 0.48 < len(half) / len(ids) < 0.52
    assert tenth <= half  # one hash for every detector: lower rates pick subsets
    assert all(sampled(i, 1.0) for i in ids[:100])


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_backlog_controller_backs_off_holds_and_recovers() -> None:
    clock = FakeClock()
    c = BacklogController(10.0, min_rate=0.1, adjust_interval_s=5.0, clock=clock)
    assert c.update(1.0) == 1.0  # under the limit at full rate: nothing to raise
    assert c.update(30.0) == 0.5  # behind: halve
    clock.now = 1.0
    assert c.update(30.0) == 0.5  # at most one change per interval
    for step in range(2, 6):
        clock.now = step * 5.0
        c.update(30.0)
    assert c.scale == 0.1  # floored at min_rate
    clock.now = 40.0
    assert c.update(7.0) == 0.1  # between half the limit and the limit: hold
    clock.now = 45.0
    assert c.update(2.0) == pytest.approx(0.125)  # caught up: raise by a quarter
    for step in range(10, 30):
        clock.now = step * 5.0
        c.update(0.0)
    assert c.scale == 1.0
    with pytest.raises(ValueError, match="min_rate"):
        BacklogController(10.0, min_rate=0.0)


def test_sampler_rates_from_settings_fixed_and_adaptive() -> None:
    cfg = DetectorsSettings.model_validate(
        {"toxicity": {"enabled": True, "sample_rate": 0.25},
         "sampling": {"max_lag_s": 10, "min_rate": 0.05, "adjust_interval_s": 0}}
    )  # fmt: skip
    clock = FakeClock()
    sampler = Sampler.from_settings(cfg, clock=clock)
    assert sampler.rate("toxicity") == 0.25 and sampler.rate("injection") == 1.0
    assert sampler.active
    for _ in range(10):
        clock.now += 1
        sampler.observe_lag(60.0)
    assert sampler.rate("toxicity") == 0.05  # never under min_rate
    assert sampler.rate("injection") == pytest.approx(0.05)
    assert not Sampler.from_settings(DetectorsSettings()).active
    with pytest.raises(ValueError, match="sample_rate"):
        Sampler({"toxicity": 0.0})


def test_sample_rate_settings_are_validated() -> None:
    from monitor.errors import ConfigError

    with pytest.raises(ConfigError, match="detectors.toxicity.sample_rate"):
        load_settings(detectors={"toxicity": {"sample_rate": 1.5}})
    settings = load_settings(detectors={"sampling": {"max_lag_s": 30}})
    assert settings.detectors.sampling.max_lag_s == 30


def test_backlog_is_the_age_of_the_oldest_record() -> None:
    def message(ts: int) -> RawMessage:
        return RawMessage(value=b"", key=None, topic="t", partition=0, offset=0, timestamp_ms=ts)

    assert backlog_seconds([message(10_000), message(40_000)], 50.0) == 40.0
    assert backlog_seconds([], 50.0) == 0.0


def test_sample_rate_gauge_is_exported() -> None:
    registry = CollectorRegistry()
    metrics = create_metrics(registry)
    metrics.detector_sample_rate.labels("toxicity").set(0.1)
    value = registry.get_sample_value("llm_monitor_detector_sample_rate", {"detector": "toxicity"})
    assert value == 0.1


# -- windows count scored events ------------------------------------------------------------------


def sampled_window(
    events: int, scored_ids: set[str], flagged_ids: set[str]
) -> tuple[list[WindowPartial], WindowStats]:
    batch = [decoded_event(f"r{i}", timestamp=T0 + i) for i in range(events)]
    sources = [EventSource("llm.events", 0, i) for i in range(events)]
    findings = [Finding(r, "toxicity", "1", 0.9, True, "toxic") for r in sorted(flagged_ids)]
    parts = [
        *build_partials(batch, [], 60, sources),
        *finding_partials(batch, findings, 60, sources=sources,
                          scored={"toxicity": scored_ids, "injection": scored_ids}),
    ]  # fmt: skip
    aggregator = WindowAggregator({}, allowed_lateness_s=0)
    for part in parts:
        aggregator.add(part)
    stats = aggregator.snapshot(parts[0].key)
    assert stats is not None
    return parts, stats


def test_windows_rate_over_the_events_scored() -> None:
    scored = {f"r{i}" for i in range(0, 100, 10)}  # 10 of 100
    _, stats = sampled_window(100, scored, {"r0", "r10"})
    assert stats.events == 100
    assert stats.flags == {"toxicity": 2}
    assert stats.scored == {"injection": 10, "toxicity": 10}
    assert stats.flag_rates == {"injection": 0.0, "toxicity": 0.2}  # 2 of 10, not 2 of 100
    assert stats.sample_rates == {"injection": 0.1, "toxicity": 0.1}
    assert stats.scored_count("toxicity") == 10 and stats.scored_count("pii") == 100


def test_replayed_sampled_partials_count_once() -> None:
    scored = {f"r{i}" for i in range(0, 40, 4)}
    parts, once = sampled_window(40, scored, {"r4"})
    aggregator = WindowAggregator({}, allowed_lateness_s=0)
    for part in [*parts, *parts]:
        aggregator.add(part)
    again = aggregator.snapshot(parts[0].key)
    assert again is not None
    assert (again.scored, again.flags) == (once.scored, once.flags)
    embed = parts[-1]
    tail = embed.select(list(range(20, 40)))  # a replay re-sums the columns it selects
    assert tail.scored == {"injection": 5, "toxicity": 5}


def test_scored_columns_are_checked_and_old_partials_still_decode() -> None:
    scored = {"r0"}
    parts, _ = sampled_window(4, scored, set())
    embed = parts[-1]
    bad = msgspec.structs.replace(
        embed, columns=msgspec.structs.replace(embed.columns, scored=[1 << 5] * 4)
    )
    with pytest.raises(PartialError, match="scored bits"):
        bad.check()
    short = msgspec.structs.replace(
        embed, columns=msgspec.structs.replace(embed.columns, scored=[1])
    )
    with pytest.raises(PartialError, match="disagree"):
        short.check()
    # A partial from before scored counts: its columns array has no scored element.
    legacy = msgspec.msgpack.Encoder().encode([[0], b"", [], [], [], [], [1], [], []])
    assert msgspec.msgpack.decode(legacy, type=EventColumns).scored == []


def test_windows_without_scored_counts_rate_over_events() -> None:
    counted = build_partials([decoded_event(f"r{i}", timestamp=T0) for i in range(4)], [], 60)[0]
    counted.flags = {"toxicity": 1}
    stats = finalise(counted, is_final=True, version=1)
    assert stats.flag_rates == {"toxicity": 0.25}
    assert stats.scored == {} and stats.sample_rates == {}
    row = msgspec.json.encode(stats)
    old = msgspec.json.decode(row.replace(b',"scored":{},"sample_rates":{}', b""))
    assert "scored" not in old
    assert msgspec.json.decode(msgspec.json.encode(old), type=WindowStats).scored == {}


# -- the policy judges the scored count -----------------------------------------------------------


def policy_window(
    start: int, events: int, flags: dict[str, int], scored: dict[str, int]
) -> WindowStats:
    return WindowStats(
        model="m", model_version="v2", deployment="canary",
        window_start_ms=T0 + start * 60_000, window_end_ms=T0 + (start + 1) * 60_000,
        events=events, errors=0, timeouts=0, refusals=0, error_rate=0.0, complaints=0,
        complaint_rate=0.0, latency_p50_ms=None, latency_p95_ms=None, latency_p99_ms=None,
        latency_mean_ms=None, latency_max_ms=None, input_tokens=0, output_tokens=0,
        cost_usd=0.0, flags=flags, flag_rates={}, is_final=True, version=1, scored=scored,
    )  # fmt: skip


def policy_engine() -> PolicyEngine:
    clock = iter(range(T0, T0 + 10**9, 1000))
    policy = Policy.model_validate(
        {"evaluation_windows": 1, "min_samples": 50,
         "rollback": {"detector_rates": {"toxicity": {"threshold": 0.02}},
                      "safety_incidents": {"detectors": ["toxicity"], "enabled": False}}}
    )  # fmt: skip
    return PolicyEngine(policy, clock=lambda: next(clock))


def decisions(engine: PolicyEngine, w: WindowStats, rule: str) -> list[tuple[str, int, str]]:
    return [(d.outcome, d.n, d.detail) for d in engine.observe(w).decisions if d.rule == rule]


def test_a_rate_scored_on_too_few_events_is_inconclusive_whatever_the_events() -> None:
    engine = policy_engine()
    rule = "rollback.toxicity_rate"
    # 1000 events, 30 scored, 20 flagged: the event count would call it a 2 % rate over 1000.
    got = decisions(engine, policy_window(0, 1000, {"toxicity": 20}, {"toxicity": 30}), rule)
    assert got == [("inconclusive", 30, "scored 30 of 1000 events")]
    assert engine.killswitch_store == {}  # 20/30 toxic, yet nothing acts on 30 samples
    # Enough scored: the bound is over the scored count and fires.
    fired = decisions(engine, policy_window(1, 1000, {"toxicity": 20}, {"toxicity": 100}), rule)
    assert fired == [("fire", 100, "scored 100 of 1000 events")]


def test_a_low_rate_over_a_sample_is_not_read_as_healthy_by_the_event_count() -> None:
    engine = policy_engine()
    # 4 of 100 scored is 4 %: over 2 %? The lower bound is 1.6 %, so not yet; over the
    # 1000 events (0.4 %) it would have looked conclusively healthy.
    engine.observe(policy_window(0, 1000, {"toxicity": 4}, {"toxicity": 100}))
    latest = {e.rule: e for _, e in engine.latest()}["rollback.toxicity_rate"]
    assert latest.n == 100 and latest.bound.value == pytest.approx(0.04)
    assert latest.bound.high > 0.02  # the sample cannot rule the threshold out


def test_merged_windows_pool_scored_counts_and_fall_back_to_events() -> None:
    old = policy_window(0, 200, {"toxicity": 2}, {})  # before sampling: every event scored
    new = policy_window(1, 1000, {"toxicity": 5}, {"toxicity": 100})
    m = Merged.of([old, new])
    assert m.scored_count("toxicity") == 300 and m.scored_count("pii") == 1200
    assert m.rate_counts(["toxicity"], 0.95) == (7, 300)
    # Two detectors at different rates: each over its own sample, the worse one speaks.
    w = policy_window(0, 1000, {"toxicity": 10, "injection": 10}, {"toxicity": 100})
    assert Merged.of([w]).rate_counts(["toxicity", "injection"], 0.95) == (10, 100)


# -- coverage over seeds --------------------------------------------------------------------------


def test_the_window_path_counts_what_the_fast_simulation_counts() -> None:
    for seed in range(12):
        assert window(seed, 400, 0.1) == window(seed, 400, 0.1, fast=True)


def test_sampled_at_ten_percent_the_bounds_cover_the_true_rate() -> None:
    """2,000 seeded windows of 1,000 events, true rates 1-40 %, scored at 10 %: the two-sided
    95 % Wilson interval on (flagged, scored) covers the true rate in >= 95 % of windows; each
    one-sided bound at the policy's 0.95 is within Monte Carlo error (2,000 windows: sd 0.5 %)
    of its nominal 95 %. Over the event count, it would almost never cover."""
    c = coverage(2000, 1000, 0.1, fast=True)
    assert 95 < c.mean_scored < 105
    assert c.interval >= 0.95
    assert c.low >= 0.94 and c.high >= 0.94
    assert c.by_events < 0.05


def test_semantic_scorer_scores_the_sample_and_counts_it(cpu_embeddings: EmbeddingService) -> None:
    cfg = DetectorsSettings.model_validate({"toxicity": {"enabled": True, "sample_rate": 0.5}})
    scorer = SemanticScorer(cfg, cpu_embeddings, window_s=60)
    insult = "Shut up, you stupid idiot. Nobody cares about your pathetic question."
    events = [decoded_event(f"e{i}", timestamp=T0 + i, response=insult) for i in range(16)]
    picked = {e.request_id for e in events if sampled(e.request_id, 0.5)}
    assert 0 < len(picked) < 16
    result = scorer.process(events)
    (partial,) = result.partials
    assert partial.scored == {"toxicity": len(picked)}
    assert result.scored_counts == {"toxicity": len(picked)}
    assert result.sample_rates == {"toxicity": 0.5}
    flagged = {r.finding.request_id for r in result.scored.findings if r.finding.flagged}
    assert flagged <= picked and flagged
    assert {r.finding.details["sample_rate"] for r in result.scored.findings} == {"0.5"}
    assert scorer.observe_lag(0.0) == {"toxicity": 0.5}  # fixed: no backlog controller
