"""LLM-as-judge: what the judge role costs the stream, and what the swap and bootstrap buy.

Run: ``.venv/bin/python -m bench.judge``. Prints a table, then one JSON line. Figures:

- ``offer``: events/s through ``decode_event`` alone (baseline) and through decode + the
  evaluator's ``offer`` (5 % graded, every prompt paired) with a judge that never answers, so
  the queue fills and samples are shed: the ratio is what the judge role costs per event, and
  it shows a stalled judge never slows the stream (shed count beside it).
- ``swap``: a judge preferring the first position 80 % of the time, on identical answers:
  the canary's win rate asked once (canary first) and with the swap.
- ``coverage``: how often the 95 % paired bootstrap interval holds the true win rate, over
  seeded samples (n prompts each), and the time of one interval.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from monitor.ingest.events import decode_event
from monitor.judge.bootstrap import LOSS, TIE, WIN, paired_bootstrap
from monitor.judge.client import Budget, JudgeReply
from monitor.judge.evaluator import EvaluatorConfig, JudgeEvaluator
from monitor.judge.pairwise import combine
from monitor.judge.parsing import Winner
from monitor.judge.rubric import Rubric
from monitor.metrics import create_metrics
from monitor.scoring.rows import ScoredBatch


class _Stalled:
    model = "stalled-judge"

    async def complete(self, prompt: str) -> JudgeReply:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def _records(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        deployment = "canary" if i % 2 else "stable"
        body = {"request_id": f"r{i}", "timestamp": 1_700_000_000_000 + i, "model": "m",
                "model_version": "v2" if i % 2 else "v1", "deployment": deployment,
                "prompt": f"question {i // 2} about the weather", "response": f"answer {i}",
                "latency_ms": 120.0}  # fmt: skip
        out.append(json.dumps(body).encode())
    return out


def bench_offer(n: int) -> dict[str, Any]:
    records = _records(n)

    async def run() -> dict[str, Any]:
        async def publish(batch: ScoredBatch) -> None:
            return None

        metrics = create_metrics(CollectorRegistry())
        evaluator = JudgeEvaluator(
            EvaluatorConfig(sample_rate=0.05, queue_size=256), _Stalled(), Rubric(), Budget(0),
            metrics, publish,
        )  # fmt: skip
        evaluator.start()
        started = time.perf_counter()
        for value in records:
            decode_event(value)
        base_s = time.perf_counter() - started
        started = time.perf_counter()
        for value in records:
            evaluator.offer(decode_event(value))
        judged_s = time.perf_counter() - started
        await evaluator.stop()
        shed = sum(
            metrics.registry.get_sample_value(
                "llm_monitor_judge_shed_total", {"kind": k, "reason": "queue_full"}
            )
            or 0.0
            for k in ("grade", "pairwise")
        )
        return {
            "events": n, "decode_per_s": round(n / base_s), "with_judge_per_s": round(n / judged_s),
            "ratio": round(base_s / judged_s, 3), "shed": int(shed),
        }  # fmt: skip

    return asyncio.run(run())


def bench_swap(n: int, p_first: float, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    once, swapped = [], []
    for _ in range(n):
        first: Winner = "A" if rng.random() < p_first else "B"
        second: Winner = "A" if rng.random() < p_first else "B"
        once.append(WIN if first == "A" else LOSS)
        swapped.append(combine(first, second))
    a, b = paired_bootstrap(once, seed=seed), paired_bootstrap(swapped, seed=seed)
    return {
        "pairs": n, "p_first": p_first, "once": round(a.value, 3),
        "once_interval": [round(a.low, 3), round(a.high, 3)], "swapped": round(b.value, 3),
        "swapped_interval": [round(b.low, 3), round(b.high, 3)],
    }  # fmt: skip


def bench_coverage(n: int, seeds: int, resamples: int) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    p = (0.45, 0.2, 0.35)
    truth = p[0] + p[1] / 2
    covered, seconds = 0, 0.0
    for seed in range(seeds):
        outcomes = list(rng.choice([WIN, TIE, LOSS], size=n, p=p))
        started = time.perf_counter()
        rate = paired_bootstrap(outcomes, resamples=resamples, seed=seed)
        seconds += time.perf_counter() - started
        covered += rate.low <= truth <= rate.high
    return {
        "pairs": n, "seeds": seeds, "resamples": resamples, "coverage": round(covered / seeds, 3),
        "interval_ms": round(1000 * seconds / seeds, 2),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--seeds", type=int, default=500)
    args = parser.parse_args()
    offer = bench_offer(args.events)
    swap = bench_swap(2000, 0.8, 3)
    coverage = [bench_coverage(n, args.seeds, 2000) for n in (50, 200)]
    print(f"offer: decode {offer['decode_per_s']}/s, decode+offer {offer['with_judge_per_s']}/s "
          f"(ratio {offer['ratio']}), {offer['shed']} samples shed by a stalled judge")  # fmt: skip
    print(
        f"swap: first-position bias {swap['p_first']}: asked once {swap['once']} "
        f"{swap['once_interval']}, swapped {swap['swapped']} {swap['swapped_interval']}"
    )
    for c in coverage:
        print(f"coverage: n={c['pairs']}: {c['coverage']} over {c['seeds']} seeds "
              f"(nominal 0.95), {c['interval_ms']} ms per interval")  # fmt: skip
    print(json.dumps({"offer": offer, "swap": swap, "coverage": coverage}))


if __name__ == "__main__":
    main()
