"""Policy: bounds, config errors, and the engine's verdicts (fire, silence, hysteresis)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from ddsketch import DDSketch

from monitor.errors import ConfigError
from monitor.policy.config import Policy, load_policy
from monitor.policy.engine import PolicyEngine
from monitor.policy.stats import quantile_bounds, rate_difference, wilson
from monitor.windows.stats import WindowStats, encode_sketch

T0 = 1_795_514_400_000


def test_wilson_bounds() -> None:
    b = wilson(0, 50, 0.95)
    assert b.low == 0.0 and 0.04 < b.high < 0.06
    b = wilson(10, 100, 0.95)
    assert b.low < 0.10 < b.high
    assert wilson(0, 0, 0.95).high == 1.0


def test_rate_difference_excludes_zero_only_with_a_real_gap() -> None:
    assert rate_difference(30, 200, 2, 1000, 0.95).low > 0.05
    assert rate_difference(5, 200, 20, 1000, 0.95).low < 0


def test_quantile_bounds_bracket_the_quantile() -> None:
    sketch = DDSketch(0.01)
    for v in range(1, 1001):
        sketch.add(float(v))
    b = quantile_bounds(sketch, 0.99, 0.95)
    assert b is not None and b.low <= b.value <= b.high  # 1 % sketch buckets
    assert b.low > 960 and b.high < 1020


def test_config_errors_name_field_and_fix(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("rollback:\n  error_rate: {threshold: 1.5}\n  eror_rate: {threshold: 0.1}\n")
    with pytest.raises(ConfigError) as info:
        load_policy(path)
    message = str(info.value)
    assert "rollback.error_rate.threshold" in message and "Fix:" in message
    assert "rollback.eror_rate" in message and "unknown field" in message
    with pytest.raises(ConfigError, match="both canary and stable"):
        path.write_text("canary_deployments: [a]\nstable_deployments: [a]\n")
        load_policy(path)
    assert load_policy(None) == Policy()


def window(
    start: int, events: int, errors: int = 0, *, deployment: str = "canary", version: str = "v2",
    flags: dict[str, int] | None = None, latencies: list[float] | None = None,
) -> WindowStats:  # fmt: skip
    sketch = DDSketch(0.01)
    for v in latencies or []:
        sketch.add(v)
    return WindowStats(
        model="m", model_version=version, deployment=deployment,
        window_start_ms=T0 + start * 60_000, window_end_ms=T0 + (start + 1) * 60_000,
        events=events, errors=errors, timeouts=0, refusals=0,
        error_rate=errors / events if events else 0.0, complaints=0, complaint_rate=0.0,
        latency_p50_ms=None, latency_p95_ms=None, latency_p99_ms=None, latency_mean_ms=None,
        latency_max_ms=None, input_tokens=0, output_tokens=0, cost_usd=0.0,
        flags=flags or {}, flag_rates={}, is_final=False, version=1,
        latency_sketch=encode_sketch(sketch) if latencies else b"",
    )  # fmt: skip


def engine(**overrides: object) -> PolicyEngine:
    clock = iter(range(T0, T0 + 10**9, 1000))
    return PolicyEngine(Policy.model_validate(overrides), clock=lambda: next(clock))


def outcomes(out_decisions: list, rule: str) -> list[str]:  # type: ignore[type-arg]
    return [d.outcome for d in out_decisions if d.rule == rule]


def test_error_storm_fires_once_with_evidence() -> None:
    e = engine()
    out = e.observe(window(0, 200, 40))
    (decision,) = [d for d in out.decisions if d.rule == "rollback.error_rate"]
    assert decision.outcome == "fire" and decision.n == 200
    assert decision.bound_low > 0.05 and decision.observed == 0.2
    assert decision.idempotency_key == f"rollback:m:v2:canary:rollback.error_rate:{T0}"
    assert [a.action for a in out.actions] == ["rollback"]
    assert out.incidents and out.incidents[0].action == "rollback"
    assert e.observe(window(0, 220, 45)).actions == []  # still firing: no second action


def test_below_minimum_samples_every_trigger_is_inconclusive_not_healthy() -> None:
    e = engine()
    e.observe(window(0, 20, 0, deployment="stable", version="v1"))
    slow = [20_000.0] * 20
    flags = {"toxicity": 20, "hallucination": 20, "injection": 20, "pii": 0}
    out = e.observe(window(0, 20, 20, flags=flags, latencies=slow))  # all bad, 20 events
    verdicts = {d.rule: d.outcome for d in out.decisions}
    assert out.actions == []
    assert verdicts.pop("kill.data_breach") == "healthy"  # its minimum is 1: a leak is a leak
    assert set(verdicts.values()) == {"inconclusive"}
    assert {"rollback.error_rate", "rollback.safety_incidents", "rollback.p99_latency",
            "rollback.toxicity_rate", "rollback.canary_vs_stable.hallucination", "rollback.injection_rate",
            "rollback.complaint_rate", "rollback.canary_vs_stable.error_rate",
            "kill.cascade_failure", "kill.safety_critical"} <= set(verdicts)  # fmt: skip


def test_each_trigger_fires_when_it_should() -> None:
    e = engine()
    out = e.observe(window(0, 100, 0, flags={"toxicity": 3}))
    assert outcomes(out.decisions, "rollback.safety_incidents") == ["fire"]
    out = e.observe(window(0, 100, 0, deployment="stable", version="v1", flags={"pii": 1}))
    assert outcomes(out.decisions, "kill.data_breach") == ["fire"]
    assert [a.action for a in out.actions] == ["kill"]
    assert e.engaged("m", "stable")
    out = e.observe(window(1, 100, 60, version="v3"))
    assert outcomes(out.decisions, "kill.cascade_failure") == ["fire"]
    assert {a.action for a in out.actions} == {"rollback", "kill"}
    slow = [random.Random(1).lognormvariate(9.0, 0.2) for _ in range(300)]  # ~8 s
    out = engine().observe(window(0, 300, latencies=slow))
    assert outcomes(out.decisions, "rollback.p99_latency") == ["fire"]


def test_canary_vs_stable_difference() -> None:
    e = engine(rollback={"error_rate": {"threshold": 0.5}})
    e.observe(window(0, 1000, 10, deployment="stable", version="v1"))
    out = e.observe(window(0, 300, 15))  # 5 % vs 1 %: 4 points over, margin 2
    assert outcomes(out.decisions, "rollback.canary_vs_stable.error_rate") == ["fire"]


def test_kill_switch_suppresses_rollbacks_and_dry_run_does_not_act() -> None:
    e = engine()
    e.set_kill("m", "canary", engage=True, reason="manual", actor="api")
    out = e.observe(window(0, 200, 40))
    assert outcomes(out.decisions, "rollback.error_rate") == ["suppressed"]
    dry = engine(dry_run=True).observe(window(0, 200, 40))
    assert "dry_run" in outcomes(dry.decisions, "rollback.error_rate") and dry.actions == []


def test_no_flapping_on_a_stream_hovering_at_the_threshold() -> None:
    e = engine(cooldown_s=0)
    rng = random.Random(7)
    decisions = []
    for minute in range(300):
        errors = sum(rng.random() < 0.05 for _ in range(400))  # exactly at the 5 % threshold
        decisions += e.observe(window(minute, 400, errors)).decisions
    fired = outcomes(decisions, "rollback.error_rate")
    assert fired.count("fire") <= 1
    assert fired.count("resolved") <= 1


def test_recovery_needs_the_upper_bound_below_the_recovery_threshold() -> None:
    e = engine(evaluation_windows=1)
    assert outcomes(e.observe(window(0, 400, 80)).decisions, "rollback.error_rate") == ["fire"]
    assert outcomes(e.observe(window(1, 400, 18)).decisions, "rollback.error_rate") == []
    assert outcomes(e.observe(window(2, 400, 4)).decisions, "rollback.error_rate") == ["resolved"]


def test_a_comparison_at_a_high_baseline_clears_once_the_canary_is_back_to_stable() -> None:
    """Hallucination flags about half of paraphrased right answers: canary and stable alike at
    46 % must clear a fired comparison, though its upper bound (+0.07 at 400 a side) is far
    above the recovery threshold (0.016)."""
    e = engine(evaluation_windows=1)
    rule = "rollback.canary_vs_stable.hallucination"
    e.observe(window(0, 400, deployment="stable", version="v1", flags={"hallucination": 184}))
    assert outcomes(e.observe(window(0, 400, flags={"hallucination": 300})).decisions,
                    rule) == ["fire"]  # fmt: skip
    e.observe(window(1, 400, deployment="stable", version="v1", flags={"hallucination": 184}))
    assert outcomes(e.observe(window(1, 400, flags={"hallucination": 250})).decisions,
                    rule) == []  # still surely worse: stays firing  # fmt: skip
    e.observe(window(2, 400, deployment="stable", version="v1", flags={"hallucination": 184}))
    assert outcomes(e.observe(window(2, 400, flags={"hallucination": 186})).decisions,
                    rule) == ["resolved"]  # fmt: skip


def test_kill_switch_engage_twice_acts_once_and_release_resumes() -> None:
    e = engine()
    first = e.set_kill("m", "canary", engage=True, reason="r", actor="cli")
    assert [a.action for a in first.actions] == ["kill"] and first.incidents
    assert e.set_kill("m", "canary", engage=True, reason="r", actor="cli").actions == []
    release = e.set_kill("m", "canary", engage=False, reason="ok", actor="cli")
    assert [a.action for a in release.actions] == ["resume"]
    assert release.killswitch[0].incident_id == first.incidents[0].incident_id
    assert not e.engaged("m", "canary")


def test_canary_advances_through_stages_only_when_healthy() -> None:
    e = engine(stages=[{"name": "5%", "traffic_percent": 5, "min_events": 600},
                       {"name": "50%", "traffic_percent": 50, "min_events": 600},
                       {"name": "100%", "traffic_percent": 100}])  # fmt: skip
    assert e.observe(window(0, 400, 0)).actions == []  # not enough events yet
    out = e.observe(window(1, 400, 0))
    (promote,) = [a for a in out.actions if a.action == "promote"]
    assert promote.stage == "50%" and promote.traffic_percent == 50
    assert e.stage(("m", "v2", "canary")) == 1
    sick = engine(stages=[{"name": "a", "traffic_percent": 5, "min_events": 100},
                          {"name": "b", "traffic_percent": 100}])  # fmt: skip
    out = sick.observe(window(0, 400, 60))
    assert {a.action for a in out.actions} == {"rollback"}
    assert sick.stage(("m", "v2", "canary")) == 0


def test_the_shipped_example_policy_is_valid_and_shows_the_defaults() -> None:
    shipped = load_policy(Path(__file__).resolve().parents[2] / "deploy/policy/policy.yaml")
    assert shipped.model_copy(update={"webhooks": Policy().webhooks}) == Policy()


def test_late_evidence_for_an_older_window_is_judged_with_its_neighbours() -> None:
    e = engine()
    for minute in range(5):
        e.observe(window(minute, 200, 0))
    # The embed worker catches up: minute 1 now carries toxic flags.
    out = e.observe(window(1, 200, 0, flags={"toxicity": 30}))
    assert outcomes(out.decisions, "rollback.safety_incidents") == ["fire"]
    assert outcomes(out.decisions, "rollback.toxicity_rate") == ["attached"]  # one rollback
    assert [a.action for a in out.actions] == ["rollback"]


def test_late_evidence_older_than_a_resolution_does_not_reopen_the_rule() -> None:
    e = engine(evaluation_windows=1, cooldown_s=0)
    assert outcomes(e.observe(window(0, 400, 80)).decisions, "rollback.error_rate") == ["fire"]
    assert outcomes(e.observe(window(5, 400, 2)).decisions, "rollback.error_rate") == ["resolved"]
    late = e.observe(window(1, 400, 90))  # a straggling snapshot of an old, bad window
    assert outcomes(late.decisions, "rollback.error_rate") == [] and late.actions == []


def test_a_firing_rule_does_not_fire_again_after_a_gap_in_the_data() -> None:
    e = engine(evaluation_windows=1, cooldown_s=0)
    assert outcomes(e.observe(window(0, 400, 80)).decisions, "rollback.error_rate") == ["fire"]
    gap = e.observe(window(1, 10, 5))  # too few events: still firing, silent
    assert outcomes(gap.decisions, "rollback.error_rate") == []
    again = e.observe(window(2, 400, 30))  # over the threshold, not recovered
    assert outcomes(again.decisions, "rollback.error_rate") == [] and again.actions == []


def test_a_snapshot_older_than_every_kept_window_is_history() -> None:
    e = engine()
    for start in range(40, 80):
        e.observe(window(start, 200, 0))
    out = e.observe(window(0, 200, 100))  # older than all 30 kept: dropped, no verdict
    assert out.decisions == [] and out.actions == []
