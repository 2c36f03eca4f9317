"""The policy on the LLM judge's pairwise windows: the promotion gate of each canary version
and ``rollback.judge_win_rate`` (fires only when the canary is surely worse; inconclusive
under ``min_pairs``), through the engine's incidents, and idempotent under replay."""

from __future__ import annotations

import asyncio
import re

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from detectors.base import Finding
from monitor.config import JudgeSettings
from monitor.judge.bootstrap import LOSS, TIE, WIN, paired_bootstrap
from monitor.judge.client import Budget, JudgeReply
from monitor.judge.evaluator import EvaluatorConfig, JudgeEvaluator
from monitor.judge.pairwise import PairwiseWindow
from monitor.judge.rubric import Rubric
from monitor.metrics import create_metrics
from monitor.policy.checks import judge_warnings
from monitor.policy.config import Policy
from monitor.policy.engine import EngineOutput, PolicyEngine
from monitor.policy.gates import GATE_RULE, JUDGE_RULE
from monitor.scoring.rows import FindingRow, ScoredBatch
from streams.judge import windows_by_model
from streams.policy import GATE_PREFIX, INCIDENT_PREFIX, _Table, export_policy_state, judge_windows
from tests.conftest import decoded_event
from tests.unit.test_policy import T0, engine, window

WINDOW_MS = 300_000


def judged(
    start: int, wins: int = 0, ties: int = 0, losses: int = 0, *, version: str = "v2",
    model: str = "m",
) -> PairwiseWindow:  # fmt: skip
    """Window ``start`` (in 5-minute steps from T0) of the canary ``version`` with these
    outcomes, its interval from the real paired bootstrap."""
    outcomes = [WIN] * wins + [TIE] * ties + [LOSS] * losses
    rate = paired_bootstrap(outcomes, resamples=500, seed=start)
    begin = T0 + start * WINDOW_MS
    return PairwiseWindow(model, version, ("v1",), begin, begin + WINDOW_MS, rate)


def by_rule(out: EngineOutput) -> dict[str, str]:
    return {d.rule: d.outcome for d in out.decisions}


def test_a_surely_worse_canary_rolls_back_once_and_fails_its_gate() -> None:
    e = engine()
    out = e.observe_judge(judged(0, losses=25), "canary")
    assert by_rule(out) == {GATE_RULE: "fail", JUDGE_RULE: "fire"}
    (fire,) = [d for d in out.decisions if d.rule == JUDGE_RULE]
    # on the loss side: observed 1 - win rate, against 1 - 0.45
    assert (fire.observed, fire.bound_low, fire.n) == (1.0, 1.0, 25)
    assert fire.threshold == pytest.approx(0.55)
    assert fire.idempotency_key == f"rollback:m:v2:canary:{JUDGE_RULE}:{T0}"
    assert (fire.window_start_ms, fire.window_end_ms) == (T0, T0 + WINDOW_MS)
    assert "win rate 0.000 [0.000, 0.000] over 25 pairs" in fire.detail
    (action,) = out.actions
    assert (action.action, action.rule, action.model_version) == ("rollback", JUDGE_RULE, "v2")
    (incident,) = out.incidents
    assert incident.rule == JUDGE_RULE and incident.evidence_from_ms == T0
    assert e.rollback_active() == {("m", "v2", "canary"): True}
    (gate,) = e.promotion_gates()
    assert (gate.verdict, gate.n, gate.win_rate) == ("fail", 25, 0.0)
    again = e.observe_judge(judged(0, losses=25), "canary")  # the same window replayed
    assert again.decisions == [] and again.actions == [] and again.incidents == []


def test_an_interval_over_the_threshold_fails_the_gate_but_does_not_roll_back() -> None:
    e = engine()
    w = judged(0, wins=12, losses=18)  # 0.40, its interval holds 0.45
    assert w.win_rate.low < 0.45 < w.win_rate.high
    out = e.observe_judge(w, "canary")
    assert by_rule(out) == {GATE_RULE: "fail", JUDGE_RULE: "healthy"}
    assert out.actions == []


def test_a_canary_as_good_as_stable_passes_its_gate() -> None:
    e = engine()
    out = e.observe_judge(judged(0, ties=40), "canary")  # a position-biased judge's ties
    assert by_rule(out) == {GATE_RULE: "pass", JUDGE_RULE: "healthy"}
    gate = out.decisions[0]
    assert (gate.action, gate.observed, gate.bound_low, gate.threshold) == ("none", 0.5, 0.5, 0.45)
    assert gate.idempotency_key == f"gate:m:v2:canary:{GATE_RULE}:{T0}"


def test_under_min_pairs_both_are_inconclusive_even_at_zero_wins() -> None:
    e = engine()
    out = e.observe_judge(judged(0, losses=19), "canary")
    assert by_rule(out) == {GATE_RULE: "inconclusive", JUDGE_RULE: "inconclusive"}
    assert out.actions == [] and out.incidents == []
    out = e.observe_judge(judged(1, losses=20), "canary")  # the minimum reached: it acts
    assert by_rule(out) == {GATE_RULE: "fail", JUDGE_RULE: "fire"}
    lenient = engine(rollback={"judge_win_rate": {"min_pairs": 5}})
    assert by_rule(lenient.observe_judge(judged(0, losses=19), "canary"))[JUDGE_RULE] == "fire"


def test_replay_and_restart_record_and_act_once() -> None:
    switches: dict[str, str] = {}
    incidents: dict[str, str] = {}
    gates: dict[str, str] = {}

    def restarted() -> PolicyEngine:
        return PolicyEngine(Policy(), switches, incidents=incidents, gates=gates)

    windows = [judged(0, losses=5), judged(1, ties=30), judged(2, losses=30)]
    first = restarted()
    outs = [first.observe_judge(w, "canary") for w in windows]
    assert [by_rule(o) for o in outs] == [
        {GATE_RULE: "inconclusive", JUDGE_RULE: "inconclusive"},
        {GATE_RULE: "pass", JUDGE_RULE: "healthy"},
        {GATE_RULE: "fail", JUDGE_RULE: "fire"},
    ]
    assert [a.action for o in outs for a in o.actions] == ["rollback"]
    # A replay on the same worker, then on a restarted one (its tables restored): the gate
    # stays at the newest window's verdict, the firing rule fires no second time.
    second = restarted()
    for e in (first, second):
        replay = [e.observe_judge(w, "canary") for w in windows]
        assert [a for o in replay for a in o.actions] == []
        assert [d for o in replay for d in o.decisions if d.rule == GATE_RULE] == []
        assert [d.outcome for o in replay for d in o.decisions] == []
        assert [(g.verdict, g.window_start_ms) for g in e.promotion_gates()] == [
            ("fail", T0 + 2 * WINDOW_MS)
        ]
    # An older window arriving late is history for the gate.
    late = second.observe_judge(judged(1, ties=30), "canary")
    assert [d for d in late.decisions if d.rule == GATE_RULE] == []


def test_a_judge_rollback_joins_the_open_incident_of_the_deployment() -> None:
    e = engine()
    storm = e.observe(window(0, 200, 40))  # the error storm opens the incident
    (incident_id,) = {i.incident_id for i in storm.incidents}
    out = e.observe_judge(judged(0, losses=25), "canary")
    (fire,) = [d for d in out.decisions if d.rule == JUDGE_RULE]
    assert (fire.outcome, fire.incident_id) == ("attached", incident_id)
    assert out.actions == []
    (incident,) = out.incidents
    assert set(incident.rules) == {"rollback.error_rate", JUDGE_RULE}


def test_it_resolves_only_once_the_canary_is_surely_better_than_the_recovery_line() -> None:
    e = engine()
    e.observe_judge(judged(0, losses=25), "canary")
    # better than 0.45 but not surely above 1 - 0.55 * 0.8 = 0.56: still firing
    assert JUDGE_RULE not in by_rule(e.observe_judge(judged(1, ties=40), "canary"))
    assert by_rule(e.observe_judge(judged(2, wins=40), "canary"))[JUDGE_RULE] == "resolved"


def test_windows_of_other_deployments_change_nothing_and_disabled_keeps_the_gate() -> None:
    e = engine()
    assert e.observe_judge(judged(0, losses=25), "stable").decisions == []
    assert e.promotion_gates() == []
    off = engine(rollback={"judge_win_rate": {"enabled": False}})
    out = off.observe_judge(judged(0, losses=25), "canary")
    assert by_rule(out) == {GATE_RULE: "fail"} and out.actions == []


def test_gate_promotion_holds_the_rollout_until_the_gate_passes() -> None:
    stages = [{"name": "s1", "traffic_percent": 5, "min_events": 100},
              {"name": "s2", "traffic_percent": 50, "min_events": 100}]  # fmt: skip
    gated = engine(stages=stages, rollback={"judge_win_rate": {"gate_promotion": True}})
    assert gated.observe(window(0, 400)).actions == []  # healthy, but no gate yet
    gated.observe_judge(judged(0, wins=5, losses=10), "canary")  # inconclusive
    assert gated.observe(window(1, 400)).actions == []
    gated.observe_judge(judged(1, ties=30), "canary")  # pass
    promoted = gated.observe(window(2, 400))
    assert [(a.action, a.stage) for a in promoted.actions] == [("promote", "s2")]
    plain = engine(stages=stages)  # by default the gate does not hold the rollout
    assert [a.action for a in plain.observe(window(0, 400)).actions] == ["promote"]


def test_the_gate_is_a_gauge() -> None:
    metrics = create_metrics(CollectorRegistry())
    e = engine()
    e.observe_judge(judged(0, ties=40), "canary")
    e.observe_judge(judged(0, losses=25, version="v3"), "canary")
    e.observe_judge(judged(0, losses=3, version="v4"), "canary")
    export_policy_state(e, e.policy, metrics)

    def gate(version: str) -> float | None:
        labels = {"model": "m", "model_version": version, "deployment": "canary"}
        return metrics.registry.get_sample_value("llm_monitor_promotion_gate", labels)

    assert (gate("v2"), gate("v3"), gate("v4")) == (1.0, 0.0, -1.0)


class ContentJudge:
    """A fake judge preferring the answer without ``wrong`` in it (else answer A)."""

    model = "fake-judge"
    _answer = re.compile(r"\[Answer (A|B)\]\n(.*?)(?=\n\[|\Z)", re.DOTALL)

    async def complete(self, prompt: str) -> JudgeReply:
        answers = dict(self._answer.findall(prompt))
        winner = "B" if "wrong" in answers.get("A", "") else "A"
        return JudgeReply(f'{{"winner": "{winner}", "explanation": "x"}}', self.model, 1, 1, 0, 0)


def judge_records(
    canaries: dict[str, tuple[int, str]], *, model: str = "m", timestamp_ms: int = T0
) -> list[tuple[bytes, bytes]]:
    """The (key, value) records the judge role publishes on the judge topic once it has
    compared, per canary version, ``n`` prompts where the canary answered ``response`` and
    stable a fine answer (``ContentJudge``: a canary answer with ``wrong`` in it loses, else
    the position-biased judge ties); its real evaluator and grouping, without faust."""
    published: list[ScoredBatch] = []

    async def publish(batch: ScoredBatch) -> None:
        published.append(batch)

    async def run() -> None:
        evaluator = JudgeEvaluator(
            EvaluatorConfig(sample_rate=0.0, resamples=500), ContentJudge(), Rubric(),
            Budget(0), create_metrics(CollectorRegistry()), publish,
        )  # fmt: skip
        for version, (n, response) in canaries.items():
            for i in range(n):
                common = {"model": model, "prompt": f"q{i}", "timestamp": timestamp_ms}
                c = decoded_event(f"{version}-c{i}", deployment="canary", model_version=version,
                                  response=response, **common)  # fmt: skip
                s = decoded_event(f"{version}-s{i}", deployment="stable", model_version="v1",
                                  response="fine", **common)  # fmt: skip
                evaluator.pairs.offer(c)
                pair = evaluator.pairs.offer(s)
                assert pair is not None
                assert await evaluator.compare(pair) is not None
        await evaluator.flush_windows(force=True)

    asyncio.run(run())
    return [
        (key.encode(), msgspec.msgpack.encode(ScoredBatch([], rows)))
        for batch in published
        for key, rows in windows_by_model(batch).items()
    ]


def test_the_judge_roles_window_records_reach_the_engine() -> None:
    """What the judge role publishes on the judge topic decodes in the policy role into the
    windows the engine judges: the contract between streams/judge.py and streams/policy.py."""
    records = judge_records({"v2": (25, "this is wrong"), "v3": (25, "fine too")})
    assert [key for key, _ in records] == [b"m"]  # both windows, keyed by their model
    item = judge_windows(records[0][1])
    windows = {w.canary_version: (w, deployment) for w, deployment in item.windows}
    (v2, deployment), (v3, _) = windows["v2"], windows["v3"]
    assert (v2.win_rate.n, v2.win_rate.losses, deployment) == (25, 25, "canary")
    assert (v3.win_rate.n, v3.win_rate.ties) == (25, 25)
    e = engine()
    assert by_rule(e.observe_judge(v2, deployment)) == {GATE_RULE: "fail", JUDGE_RULE: "fire"}
    assert by_rule(e.observe_judge(v3, deployment)) == {GATE_RULE: "pass", JUDGE_RULE: "healthy"}


def test_judge_records_that_are_not_windows_are_refused() -> None:
    with pytest.raises(msgspec.DecodeError):
        judge_windows(b"\xc1 poison")
    event = decoded_event("r1", deployment="canary")
    graded = FindingRow.of(Finding("r1", "judge", "v1", 1.0, False, "grade"), event)
    with pytest.raises(ValueError, match="not a judge pairwise window"):
        judge_windows(msgspec.msgpack.encode(ScoredBatch([], [graded])))


def test_a_judge_rule_that_disagrees_with_the_judge_role_is_warned_about() -> None:
    judge = JudgeSettings(enabled=True, endpoint="http://j/v1", model="j")
    assert judge_warnings(Policy(), judge) == []
    assert judge_warnings(Policy(), JudgeSettings(min_pairs=5)) == []  # the judge is off
    lenient = Policy.model_validate({"rollback": {"judge_win_rate": {"threshold": 0.4}}})
    (warning,) = judge_warnings(lenient, judge)
    assert "judge.gate_threshold 0.45" in warning and "Fix:" in warning
    other = judge.model_copy(update={"canary_deployment": "preview"})
    (warning,) = judge_warnings(Policy(), other)
    assert "'preview' is not in the policy's canary_deployments" in warning


def test_gates_share_the_workers_table_with_switches_and_incidents() -> None:
    """In the worker, gates live in the killswitch table under their own prefix: they never
    read as kill switches, and a restarted engine on the table has them."""
    raw: dict[str, str | None] = {}

    def on_table() -> PolicyEngine:
        return PolicyEngine(
            Policy(), _Table(raw), incidents=_Table(raw, INCIDENT_PREFIX),
            gates=_Table(raw, GATE_PREFIX),
        )  # fmt: skip

    first = on_table()
    first.observe_judge(judged(0, losses=25), "canary")
    first.set_kill("m", "canary", engage=True, reason="r", actor="api")
    assert [s.key for s in first.states()] == ["m/canary"]
    restarted = on_table()
    assert [(g.model_version, g.verdict) for g in restarted.promotion_gates()] == [("v2", "fail")]
    assert restarted.observe_judge(judged(0, losses=25), "canary").decisions == []
