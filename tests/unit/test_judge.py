"""LLM-as-judge pieces without a server: formats, sampling, budget, pairing, swap, bootstrap."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from monitor.config import JudgeSettings, Settings
from monitor.errors import ConfigError
from monitor.judge.bootstrap import LOSS, TIE, WIN, paired_bootstrap, promotion_gate
from monitor.judge.client import Budget, JudgeReply, sampled
from monitor.judge.evaluator import EvaluatorConfig, JudgeEvaluator, pairwise_window_of
from monitor.judge.pairwise import PairBuffer, PairwiseWindows, combine, prompt_key
from monitor.judge.parsing import Grade, ParseFailure, Verdict, parse_grade, parse_verdict
from monitor.judge.rubric import Rubric, model_family
from monitor.metrics import create_metrics
from monitor.scoring.rows import ScoredBatch
from streams.app import app_id_for
from streams.judge import check_judge
from tests.conftest import decoded_event


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"score": 4, "explanation": "fine"}', Grade(4, "fine")),
        ('```json\n{"score": 1, "explanation": "wrong"}\n```', Grade(1, "wrong")),
        ('{"score": 5.0}', Grade(5, "")),
        ('{"score": 6, "explanation": "x"}', ParseFailure("score_out_of_range", "")),
        ('{"score": "4"}', ParseFailure("bad_score", "")),
        ('{"score": true}', ParseFailure("bad_score", "")),
        ("Score: 4. Good answer.", ParseFailure("not_json", "")),
        ("[4]", ParseFailure("not_object", "")),
        ('{"score": 3, "explanation": 7}', ParseFailure("bad_explanation", "")),
        ("", ParseFailure("not_json", "")),
    ],
)
def test_grades_parse_strictly_and_never_raise(text: str, expected: object) -> None:
    got = parse_grade(text)
    if isinstance(expected, ParseFailure):
        assert isinstance(got, ParseFailure)
        assert got.reason == expected.reason
    else:
        assert got == expected


def test_explanations_are_cut_to_the_rubric_word_limit() -> None:
    got = parse_grade('{"score": 3, "explanation": "' + "word " * 100 + '"}', max_words=5)
    assert isinstance(got, Grade)
    assert got.explanation == "word word word word word [...]"
    assert got.normalised == 0.5


@pytest.mark.parametrize(
    ("text", "winner"),
    [('{"winner": "A"}', "A"), ('{"winner": "b "}', "B"), ('{"winner": "TIE"}', "tie"),
     ('{"winner": "C"}', None), ('{"winner": 1}', None), ("A", None)],
)  # fmt: skip
def test_verdicts_parse_strictly(text: str, winner: str | None) -> None:
    got = parse_verdict(text)
    if winner is None:
        assert isinstance(got, ParseFailure)
    else:
        assert isinstance(got, Verdict)
        assert got.winner == winner


def test_rubric_renders_and_refuses_templates_missing_fields() -> None:
    rubric = Rubric(max_words=12, max_chars=10)
    text = rubric.grade_prompt("why?", "because " * 10)
    assert "at most 12 words" in text
    assert "do not reward length" in text
    assert "because be [...]" in text
    with pytest.raises(ValueError, match="response"):
        Rubric(grade_template="{prompt} only")
    assert model_family("gpt-4o-mini") == "openai"
    assert model_family("meta/Llama-3-8B") == "meta"
    assert model_family("my-model") == "unknown"


def test_sampling_is_deterministic_and_close_to_the_rate() -> None:
    ids = [f"req-{i}" for i in range(20_000)]
    picked = [i for i in ids if sampled(i, 0.1)]
    assert picked == [i for i in ids if sampled(i, 0.1)]  # a replay picks the same
    assert 0.09 < len(picked) / len(ids) < 0.11
    assert all(sampled(i, 1.0) for i in ids[:10])
    assert not any(sampled(i, 0.0) for i in ids[:10])


def test_budget_refills_per_hour_and_charges_cost() -> None:
    now = [0.0]
    budget = Budget(calls_per_hour=2, usd_per_hour=1.0, clock=lambda: now[0])
    assert budget.try_acquire() and budget.try_acquire()
    assert not budget.try_acquire()
    now[0] = 1800.0  # half an hour: one call back
    assert budget.try_acquire()
    assert not budget.try_acquire()
    budget.charge(2.0)  # dollars below zero: no call until refilled
    now[0] = 3600.0
    assert not budget.try_acquire()
    now[0] = 3600.0 + 3 * 3600
    assert budget.try_acquire()
    assert Budget(0).try_acquire(10**6)  # 0: unlimited


def test_swapped_verdicts_that_disagree_are_ties() -> None:
    assert combine("A", "B") == WIN  # canary first wins, canary second wins
    assert combine("B", "A") == LOSS
    assert combine("A", "A") == TIE  # position bias: whatever comes first wins
    assert combine("B", "B") == TIE
    assert combine("tie", "B") == TIE
    assert combine("tie", "tie") == TIE


def test_pair_buffer_pairs_by_normalised_prompt_and_stays_bounded() -> None:
    now = [0.0]
    buffer = PairBuffer(max_age_s=10, max_pending=2, clock=lambda: now[0])
    canary = decoded_event("c1", deployment="canary", prompt="Hello  World", response="x")
    stable = decoded_event("s1", deployment="stable", prompt="hello world ", response="y")
    assert buffer.offer(canary) is None
    pair = buffer.offer(stable)
    assert pair is not None
    assert (pair.canary.request_id, pair.stable.request_id) == ("c1", "s1")
    assert len(buffer) == 0
    assert prompt_key("A  b") == prompt_key("a b")
    for i in range(3):
        buffer.offer(decoded_event(f"c{i}", deployment="canary", prompt=f"p{i}", response="x"))
    assert (len(buffer), buffer.evicted) == (2, 1)
    now[0] = 11.0
    buffer.offer(decoded_event("c9", deployment="canary", prompt="p9", response="x"))
    assert (len(buffer), buffer.evicted) == (1, 3)
    assert buffer.offer(decoded_event("o", deployment="shadow", prompt="p", response="x")) is None


@pytest.mark.parametrize("true_rate", [(0.4, 0.2, 0.4), (0.55, 0.15, 0.3)])
def test_bootstrap_interval_covers_the_true_win_rate_at_its_nominal_level(
    true_rate: tuple[float, float, float],
) -> None:
    """Over many seeded samples of 200 prompts, the 95 % interval holds the true mean
    (wins + ties / 2) 93-97 % of the time."""
    p_win, p_tie, p_loss = true_rate
    truth = p_win + p_tie / 2
    rng = np.random.default_rng(7)
    seeds = 400
    covered = 0
    for seed in range(seeds):
        outcomes = rng.choice([WIN, TIE, LOSS], size=200, p=[p_win, p_tie, p_loss])
        rate = paired_bootstrap(list(outcomes), resamples=1000, seed=seed)
        covered += rate.low <= truth <= rate.high
    assert 0.93 <= covered / seeds <= 0.975, covered / seeds


def test_bootstrap_is_seeded_and_counts_outcomes() -> None:
    outcomes = [WIN] * 30 + [TIE] * 10 + [LOSS] * 20
    a = paired_bootstrap(outcomes, seed=3)
    assert a == paired_bootstrap(outcomes, seed=3)
    assert (a.n, a.wins, a.ties, a.losses) == (60, 30, 10, 20)
    assert a.value == pytest.approx(35 / 60)
    assert a.low < a.value < a.high
    empty = paired_bootstrap([])
    assert (empty.n, empty.low, empty.high) == (0, 0.0, 1.0)


def test_promotion_gate_uses_the_lower_bound_and_is_inconclusive_without_data() -> None:
    assert promotion_gate(0.47, 0.45, n=50, min_pairs=20) is True
    assert promotion_gate(0.40, 0.45, n=50, min_pairs=20) is False
    assert promotion_gate(0.10, 0.45, n=5, min_pairs=20) is None
    with pytest.raises(ValueError, match="threshold"):
        promotion_gate(0.5, 1.5)


class PositionBiasedJudge:
    """A fake judge that, for identical answers, picks answer A with ``p_first`` (else B)."""

    model = "gpt-fake-judge"

    def __init__(self, p_first: float, seed: int = 0) -> None:
        self.p_first = p_first
        self.rng = random.Random(seed)
        self.calls = 0

    async def complete(self, prompt: str) -> JudgeReply:
        self.calls += 1
        winner = "A" if self.rng.random() < self.p_first else "B"
        text = f'{{"winner": "{winner}", "explanation": "A reads better"}}'
        return JudgeReply(text, self.model, 100, 10, 0.001, 0.0)


def _run_pairs(judge: PositionBiasedJudge, n: int) -> tuple[list[float], list[ScoredBatch]]:
    published: list[ScoredBatch] = []

    async def publish(batch: ScoredBatch) -> None:
        published.append(batch)

    async def run() -> list[float]:
        evaluator = JudgeEvaluator(
            EvaluatorConfig(sample_rate=0.0, min_pairs=10), judge, Rubric(), Budget(0),
            create_metrics(CollectorRegistry()), publish,
        )  # fmt: skip
        outcomes = []
        for i in range(n):
            same = f"The answer is {i}."
            c = decoded_event(f"c{i}", deployment="canary", model_version="v2",
                              prompt=f"q{i}", response=same)  # fmt: skip
            s = decoded_event(f"s{i}", deployment="stable", prompt=f"q{i}", response=same)
            evaluator.pairs.offer(c)
            pair = evaluator.pairs.offer(s)
            assert pair is not None
            outcome = await evaluator.compare(pair)
            assert outcome is not None
            outcomes.append(outcome)
        await evaluator.flush_windows(force=True)
        return outcomes

    return asyncio.run(run()), published


def test_swap_removes_a_deterministic_position_bias() -> None:
    """A judge that always prefers the first answer: every pair is a tie, 50 % exactly."""
    outcomes, published = _run_pairs(PositionBiasedJudge(p_first=1.0), 60)
    assert set(outcomes) == {TIE}
    window = [r for b in published for r in b.findings if r.finding.category == "window"]
    assert len(window) == 1
    finding = window[0].finding
    assert finding.score == 0.5
    assert finding.details["n"] == "60"
    assert finding.details["gate"] == "pass"  # 0.5 >= 0.45 at the lower bound
    assert window[0].deployment == "canary"
    decoded = pairwise_window_of(window[0])  # what a policy role reading llm.scored gets
    assert decoded is not None
    assert (decoded.canary_version, decoded.stable_versions) == ("v2", ("v",))
    assert decoded.win_rate.value == 0.5
    assert decoded.win_rate.n == 60
    assert promotion_gate(decoded.win_rate.low, 0.45, n=decoded.win_rate.n) is True
    others = [r for b in published for r in b.findings if r.finding.category != "window"]
    assert pairwise_window_of(others[0]) is None


def test_swap_keeps_a_random_position_bias_at_fifty_percent() -> None:
    """80 % first-position preference: without the swap the canary would win 80 % of the time
    on identical answers; with it the win rate's interval holds 50 %."""
    judge = PositionBiasedJudge(p_first=0.8, seed=11)
    outcomes, published = _run_pairs(judge, 400)
    assert judge.calls == 800
    rate = paired_bootstrap(outcomes, seed=1)
    assert rate.low <= 0.5 <= rate.high
    assert abs(rate.value - 0.5) < 0.05
    # The canary-first verdict alone (a judge asked once, without the swap) is biased:
    pairs = [r.finding for b in published for r in b.findings if r.finding.category != "window"]
    assert len(pairs) == 400
    canary_first_wins = sum(f.details["canary_first"] == "A" for f in pairs) / len(pairs)
    assert canary_first_wins > 0.75


def test_windows_close_behind_the_event_time_watermark() -> None:
    windows = PairwiseWindows(window_s=60, lateness_ms=0, resamples=200)
    buffer = PairBuffer()
    for i, t in enumerate((1_000, 59_000, 61_000)):
        buffer.offer(decoded_event(f"c{i}", timestamp=t, deployment="canary", prompt=f"p{i}",
                                   response="x"))  # fmt: skip
        pair = buffer.offer(decoded_event(f"s{i}", timestamp=t, prompt=f"p{i}", response="y"))
        assert pair is not None
        windows.add(pair, WIN)
    assert windows.close(59_999) == []
    closed = windows.close(60_000)
    assert [(w.window_start_ms, w.win_rate.n) for w in closed] == [(0, 2)]
    assert [(w.window_start_ms, w.win_rate.n) for w in windows.close_all()] == [(60_000, 1)]


def test_a_pair_judged_after_its_window_closed_reopens_the_whole_window() -> None:
    """A judge behind a backlog: the window's next result holds every pair of it, so it can
    replace the first (findings, the policy's gate), not the late pair alone."""
    windows = PairwiseWindows(window_s=60, lateness_ms=0, resamples=200, max_closed=1)
    buffer = PairBuffer()

    def judged(i: int, t: int, outcome: float) -> None:
        buffer.offer(decoded_event(f"c{i}", timestamp=t, deployment="canary", prompt=f"p{i}",
                                   response="x"))  # fmt: skip
        pair = buffer.offer(decoded_event(f"s{i}", timestamp=t, prompt=f"p{i}", response="y"))
        assert pair is not None
        windows.add(pair, outcome)

    for i in range(3):
        judged(i, 1_000 + i, WIN)
    assert [w.win_rate.n for w in windows.close(60_000)] == [3]
    judged(3, 2_000, LOSS)  # late
    (again,) = windows.close(60_000)
    assert (again.window_start_ms, again.win_rate.n, again.win_rate.wins) == (0, 4, 3)
    judged(4, 61_000, TIE)
    assert [w.window_start_ms for w in windows.close(120_000)] == [60_000]
    judged(5, 3_000, LOSS)  # only the newest closed window is kept: this one starts afresh
    assert [(w.window_start_ms, w.win_rate.n) for w in windows.close_all()] == [(0, 1)]


def test_the_judge_role_is_off_by_default_and_checked_when_asked_for() -> None:
    assert "judge" not in Settings().active_roles
    on = JudgeSettings(enabled=True, endpoint="http://127.0.0.1:1/v1/", model="gpt-judge")
    enabled = Settings(judge=on)
    assert enabled.judge.endpoint == "http://127.0.0.1:1/v1"
    assert enabled.active_roles[-1] == "judge"
    assert app_id_for(enabled) == app_id_for(Settings())  # same group as every other role
    assert Settings(roles=["judge"], judge=on).active_roles == ("judge",)
    check_judge(enabled)
    with pytest.raises(ConfigError, match="JUDGE__ENABLED"):
        check_judge(Settings(roles=["judge"]))
    with pytest.raises(ConfigError, match="JUDGE__ENDPOINT"):
        check_judge(Settings(judge=JudgeSettings(enabled=True)))
