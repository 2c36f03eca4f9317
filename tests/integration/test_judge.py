"""The judge role end to end: a real broker, a real worker (subprocess), a loopback
OpenAI-compatible judge on 127.0.0.1 and chdb. Grades and pairwise win rates with their
intervals land in ClickHouse (findings, and the typed views of migration 0009) and in the
metrics; the position-biased judge's identical answers tie at 50 %. The policy role reads the
windows off the judge topic: promotion gates, and a rollback for the canary that is surely
worse."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from monitor.client import produce
from monitor.judge.loopback import LoopbackJudge
from tests.conftest import WorkerHarness

pytestmark = [pytest.mark.integration, pytest.mark.e2e]
PAIRS = 20


def query(data_dir: Path, sql: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-m", "monitor.cli", "query", sql, "--format", "json",
         "--data-dir", str(data_dir)],  # fmt: skip
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    rows: list[dict[str, Any]] = json.loads(out.stdout.strip().splitlines()[-1])
    return rows


def event(request_id: str, t: int, deployment: str, version: str, prompt: str,
          response: str) -> tuple[bytes, bytes]:  # fmt: skip
    body = {"request_id": request_id, "timestamp": t, "model": "gpt-4o", "model_version": version,
            "deployment": deployment, "prompt": prompt, "response": response,
            "latency_ms": 100}  # fmt: skip
    return request_id.encode(), json.dumps(body).encode()


def test_judge_role_stores_grades_and_win_rates(workers: WorkerHarness) -> None:
    judge = LoopbackJudge("judge", first_bias=1.0)  # always prefers the first answer shown
    judge.start_in_thread()
    try:
        workers.env_overrides.update({
            "LLM_MONITOR_JUDGE__ENABLED": "true",
            "LLM_MONITOR_JUDGE__ENDPOINT": judge.base_url,
            "LLM_MONITOR_JUDGE__MODEL": "claude-judge",
            "LLM_MONITOR_JUDGE__SAMPLE_RATE": "1.0",
            "LLM_MONITOR_JUDGE__WINDOW_S": "60",
            "LLM_MONITOR_JUDGE__LATENESS_S": "0",
            "LLM_MONITOR_JUDGE__MIN_PAIRS": "10",
            "LLM_MONITOR_JUDGE__RESAMPLES": "500",
        })  # fmt: skip
        now = int(time.time() * 1000)
        t0 = now - 180_000 - now % 60_000
        records = []
        for i in range(PAIRS):
            t = t0 + i * 100
            records += [
                event(f"c2-{i}", t, "canary", "v2", f"same {i}", f"answer {i}"),
                event(f"s2-{i}", t, "stable", "v1", f"same {i}", f"answer {i}"),
                event(f"c3-{i}", t, "canary", "v3", f"worse {i}", "this is wrong"),
                event(f"s3-{i}", t, "stable", "v1", f"worse {i}", "a fine answer"),
            ]
        records.append(event("late", now, "stable", "v1", "watermark", "garble"))
        workers.start()
        asyncio.run(produce(workers.bootstrap, "llm.events", records))
        series = {"model": "gpt-4o", "deployment": "canary", "bound": "n"}
        workers.wait_for(
            lambda: (
                all(
                    workers.metric("llm_monitor_judge_win_rate", model_version=v, **series) == PAIRS
                    for v in ("v2", "v3")
                )
                and workers.metric("llm_monitor_judge_requests_total", kind="grade") >= len(records)
            ),
            what="both canary versions' windows closed and every event graded",
        )
        # The policy role read the windows off the judge topic: v2 ties (its gate passes), v3
        # loses every comparison (its gate fails, rollback.judge_win_rate fires).
        gate = {"model": "gpt-4o", "deployment": "canary"}
        workers.wait_for(
            lambda: (
                workers.metric("llm_monitor_promotion_gate", model_version="v2", **gate) == 1
                and workers.metric("llm_monitor_policy_rollback_active", model_version="v3",
                                   **gate) == 1
            ),
            what="v2's promotion gate passing and v3 rolled back on the judge's win rate",
        )  # fmt: skip
        assert workers.metric("llm_monitor_promotion_gate", model_version="v3", **gate) == 0
        workers.wait_for(
            lambda: workers.uncommitted(("llm.scored", "llm.policy")) == 0,
            what="every finding and policy record stored",
        )
        assert workers.metric("llm_monitor_judge_requests_total", kind="grade",
                              outcome="parse_error") == 1  # fmt: skip
        # the v3 canary's wrong answers, graded 1: flagged like any detector's findings
        assert workers.metric("llm_monitor_detector_flags_total", detector="judge") == PAIRS
        low = workers.metric("llm_monitor_judge_win_rate", model_version="v2",
                             **(series | {"bound": "low"}))  # fmt: skip
        assert (
            low
            <= 0.5
            <= workers.metric(
                "llm_monitor_judge_win_rate", model_version="v2", **(series | {"bound": "high"})
            )
        )
        workers.stop_all()
    finally:
        judge.stop_thread()

    windows = {
        row["canary_version"]: row
        for row in query(workers.data_dir, "SELECT * FROM llm_monitor.v_judge_pairwise_windows")
    }
    assert set(windows) == {"v2", "v3"}
    v2, v3 = windows["v2"], windows["v3"]
    assert (v2["win_rate"], v2["pairs"], v2["ties"], v2["gate"]) == (0.5, PAIRS, PAIRS, "pass")
    assert v2["win_rate_low"] <= 0.5 <= v2["win_rate_high"]
    assert (v3["win_rate"], v3["losses"], v3["gate"]) == (0.0, PAIRS, "fail")
    assert (v3["judge_model"], v3["judge_family"]) == ("claude-judge", "anthropic")
    grades = query(
        workers.data_dir,
        "SELECT model_version, grade, parse_error, same_family, judge_family, model_family "
        "FROM llm_monitor.v_judge_grades",
    )
    assert len(grades) == len(records)
    by_version: dict[str, set[int]] = {}
    for row in grades:
        by_version.setdefault(row["model_version"], set()).add(row["grade"])
    assert by_version["v3"] == {1}
    assert by_version["v2"] == {5}
    assert sum(row["parse_error"] for row in grades) == 1
    assert {(r["judge_family"], r["model_family"], r["same_family"]) for r in grades} == {
        ("anthropic", "openai", 0)
    }
    fired = query(
        workers.data_dir,
        "SELECT model_version, outcome FROM llm_monitor.decisions FINAL "
        "WHERE rule = 'rollback.judge_win_rate' AND outcome = 'fire'",
    )
    assert fired == [{"model_version": "v3", "outcome": "fire"}]
