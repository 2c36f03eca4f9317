"""The judge evaluator against a loopback OpenAI-compatible judge on 127.0.0.1: real HTTP,
real queue and workers; findings, metrics, parse errors, timeouts, shedding, the swap."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from prometheus_client import CollectorRegistry

from monitor.judge.client import Budget, JudgeClient, JudgeUnavailable
from monitor.judge.evaluator import EvaluatorConfig, JudgeEvaluator
from monitor.judge.loopback import LoopbackJudge
from monitor.judge.rubric import Rubric
from monitor.metrics import Metrics, create_metrics
from monitor.scoring.rows import FindingRow, ScoredBatch
from tests.conftest import decoded_event

T = TypeVar("T")


def with_judge(test: Callable[[LoopbackJudge, JudgeClient], Awaitable[T]], **judge: float) -> T:
    async def run() -> T:
        server = LoopbackJudge("judge", **judge)  # type: ignore[arg-type]
        await server.start()
        client = JudgeClient(server.base_url, "gpt-judge", timeout_s=2.0,
                             usd_per_1k_input=1.0, usd_per_1k_output=2.0)  # fmt: skip
        try:
            return await test(server, client)
        finally:
            await client.close()
            await server.stop()

    return asyncio.run(run())


def evaluator(
    client: JudgeClient, config: EvaluatorConfig, budget: Budget | None = None
) -> tuple[JudgeEvaluator, list[FindingRow], Metrics]:
    rows: list[FindingRow] = []
    metrics = create_metrics(CollectorRegistry())

    async def publish(batch: ScoredBatch) -> None:
        assert batch.events == []
        rows.extend(batch.findings)

    judged = JudgeEvaluator(config, client, Rubric(), budget or Budget(0), metrics, publish)
    return judged, rows, metrics


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_client_reads_a_grade_usage_and_cost() -> None:
    async def test(server: LoopbackJudge, client: JudgeClient) -> None:
        reply = await client.complete(Rubric().grade_prompt("2+2?", "4"))
        assert reply.text == '{"score": 5, "explanation": "graded by judge"}'
        assert (reply.input_tokens, reply.output_tokens) == (11, 4)
        assert reply.cost_usd == pytest.approx((11 * 1.0 + 4 * 2.0) / 1000)
        assert server.received[0]["temperature"] == 0
        with pytest.raises(JudgeUnavailable) as missing:
            await JudgeClient(server.base_url, "missing").complete("x")
        assert missing.value.reason == "error"

    with_judge(test)


def test_client_times_out() -> None:
    async def test(server: LoopbackJudge, client: JudgeClient) -> None:
        client.timeout_s = 0.1
        with pytest.raises(JudgeUnavailable) as slow:
            await client.complete("x")
        assert slow.value.reason == "timeout"

    with_judge(test, delay_s=0.5)


def test_graded_events_become_findings_with_judge_details() -> None:
    async def test(server: LoopbackJudge, client: JudgeClient) -> None:
        judged, rows, metrics = evaluator(client, EvaluatorConfig(sample_rate=1.0))
        judged.start()
        for i, answer in enumerate(["Paris.", "It is wrong.", "garble", "unsure"]):
            judged.offer(decoded_event(f"r{i}", model="gpt-4o", prompt="q", response=answer))
        judged.offer(decoded_event("err", prompt="q", response="x", status="error"))
        await judged.drain()
        await judged.stop()
        by_id = {r.finding.request_id: r.finding for r in rows}
        assert set(by_id) == {"r0", "r1", "r2", "r3"}
        ok, bad, garbled, unsure = (by_id[f"r{i}"] for i in range(4))
        assert (ok.detector, ok.score, ok.flagged, ok.category) == ("judge", 1.0, False, "grade")
        assert (bad.score, bad.flagged) == (0.0, True)
        assert unsure.score == 0.5
        assert garbled.category == "parse_error"
        assert garbled.details["parse_error"] == "not_json"
        assert ok.details["judge_model"] == "gpt-judge-served"
        assert ok.details["judge_family"] == "openai"
        assert ok.details["same_family"] == "true"  # gpt-4o graded by a gpt judge
        assert ok.details["rubric_version"] == "v1"
        assert ok.details["explanation"] == "graded by judge"
        assert float(ok.details["cost_usd"]) == pytest.approx(0.019)
        assert sample(metrics, "llm_monitor_judge_requests_total", kind="grade",
                      outcome="ok") == 3  # fmt: skip
        assert sample(metrics, "llm_monitor_judge_requests_total", kind="grade",
                      outcome="parse_error") == 1  # fmt: skip
        assert sample(metrics, "llm_monitor_judge_cost_usd_total", kind="grade") == (
            pytest.approx(4 * 0.019)
        )

    with_judge(test)


def test_a_slow_judge_sheds_samples_instead_of_blocking() -> None:
    async def test(server: LoopbackJudge, client: JudgeClient) -> None:
        config = EvaluatorConfig(sample_rate=1.0, pairwise=False, concurrency=1, queue_size=2)
        judged, rows, metrics = evaluator(client, config)
        judged.start()
        started = asyncio.get_running_loop().time()
        for i in range(20):
            judged.offer(decoded_event(f"r{i}", prompt="q", response="fine"))
        assert asyncio.get_running_loop().time() - started < 0.05  # offer never waits
        await judged.drain()
        await judged.stop()
        shed = sample(metrics, "llm_monitor_judge_shed_total", kind="grade", reason="queue_full")
        assert (len(rows), shed) == (2, 18)  # the queue's two, judged; the rest shed

    with_judge(test, delay_s=0.05)


def test_the_hourly_budget_sheds_what_it_cannot_pay() -> None:
    async def test(server: LoopbackJudge, client: JudgeClient) -> None:
        config = EvaluatorConfig(sample_rate=1.0, pairwise=False)
        judged, rows, metrics = evaluator(client, config, Budget(calls_per_hour=3))
        judged.start()
        for i in range(10):
            judged.offer(decoded_event(f"r{i}", prompt="q", response="fine"))
        await judged.drain()
        await judged.stop()
        assert len(rows) == 3
        assert sample(metrics, "llm_monitor_judge_shed_total", kind="grade",
                      reason="budget") == 7  # fmt: skip

    with_judge(test)


def test_pairwise_through_the_loopback_judge_win_rate_and_swap() -> None:
    """A position-biased loopback judge: identical answers tie (50 %); a canary whose answers
    are wrong loses every pair and fails the gate."""

    async def test(server: LoopbackJudge, client: JudgeClient) -> None:
        config = EvaluatorConfig(sample_rate=0.0, min_pairs=10, window_s=60, resamples=500)
        judged, rows, metrics = evaluator(client, config)
        judged.start()
        for i in range(30):
            t = 1_700_000_000_000 + i
            same = f"answer {i}"
            judged.offer(
                decoded_event(
                    f"c{i}",
                    timestamp=t,
                    deployment="canary",
                    model_version="v2",
                    prompt=f"q{i}",
                    response=same,
                )
            )
            judged.offer(decoded_event(f"s{i}", timestamp=t, prompt=f"q{i}", response=same))
            judged.offer(
                decoded_event(
                    f"cw{i}",
                    timestamp=t,
                    deployment="canary",
                    model_version="v3",
                    prompt=f"w{i}",
                    response="wrong",
                )
            )
            judged.offer(decoded_event(f"sw{i}", timestamp=t, prompt=f"w{i}", response="ok"))
        await judged.drain()
        windows = {w.canary_version: w for w in await judged.flush_windows(force=True)}
        await judged.stop()
        assert windows["v2"].win_rate.value == 0.5
        assert windows["v2"].win_rate.ties == 30
        assert (windows["v3"].win_rate.value, windows["v3"].win_rate.losses) == (0.0, 30)
        gates = {r.model_version: r.finding.details["gate"] for r in rows
                 if r.finding.category == "window"}  # fmt: skip
        assert gates == {"v2": "pass", "v3": "fail"}
        labels = {"model": "m", "model_version": "v3", "deployment": "canary"}
        assert sample(metrics, "llm_monitor_judge_win_rate", **labels, bound="high") == 0.0
        assert sample(metrics, "llm_monitor_judge_win_rate", **labels, bound="n") == 30
        assert len(server.received) == 4 * 30  # two orders per pair

    with_judge(test, first_bias=1.0)
