"""The policy role on the LLM judge's windows in a real worker: records of the judge topic on
a real broker set each canary version's promotion gate (the gauge, /policy/status and
``decisions`` rows in chdb), and the surely-worse canary's ``rollback.judge_win_rate`` is a
signed rollback webhook to a real receiver on 127.0.0.1, once, however often the records are
replayed. A judge record that does not decode is dead-lettered."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from monitor.devtools.report import JUDGE_DECISIONS
from monitor.devtools.worker import scrape
from monitor.policy.gates import GATE_RULE, JUDGE_RULE
from monitor.policy.receiver import Receiver
from tests.conftest import WorkerHarness, serving_receiver
from tests.e2e.test_pipeline_e2e import query
from tests.integration.test_sink_faults import POISON, send_each
from tests.unit.test_policy_judge import judge_records

pytestmark = pytest.mark.integration
SECRET = "judge-webhook-secret-0123456789abcdef"  # noqa: S105 - test fixture
TOKEN = "judge-api-token-0123456789abcdef"  # noqa: S105 - test fixture
JUDGE_TOPIC = "llm.judge"
MODEL = "support-bot"


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    with serving_receiver(SECRET.encode()) as served:
        yield served


def test_judge_windows_gate_and_roll_back_through_the_policy_role(
    workers: WorkerHarness, receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    r, url = receiver
    workers.use_policy(
        {"cooldown_s": 0, "webhooks": {"rollback": [f"{url}/rb"]}}, secret=SECRET, token=TOKEN
    )
    workers.env_overrides["LLM_MONITOR_ROLES"] = '["policy", "sink"]'
    now = time.time_ns() // 1_000_000
    records = judge_records(
        {"v2": (25, "a fine answer"), "v3": (25, "this is wrong"), "v4": (5, "this is wrong")},
        model=MODEL, timestamp_ms=now,
    )  # fmt: skip
    workers.start()
    workers.wait_for(workers.ready, what="the worker ready")
    sent = asyncio.run(send_each(workers.bootstrap, [(JUDGE_TOPIC, k, v) for k, v in records]))
    assert len({s.partition for s in sent}) == 1  # keyed by model: the model's partition

    def gate(version: str) -> float | None:
        """The version's gauge, None while it has none (0 is a verdict: fail)."""
        labels = f"deployment=canary,model={MODEL},model_version={version}"
        try:
            return scrape(workers.metrics_url).get(f"llm_monitor_promotion_gate{{{labels}}}")
        except OSError:
            return None

    def rollbacks() -> list[dict[str, object]]:
        return [d.body for d in r.deliveries if d.event == "rollback"]

    workers.wait_for(
        lambda: (gate("v2"), gate("v3")) == (1.0, 0.0) and rollbacks(),
        what="v2's gate passing, v3's failing and v3's rollback delivered",
    )
    (rollback,) = rollbacks()
    assert (rollback["rule"], rollback["model_version"]) == (JUDGE_RULE, "v3")
    assert rollback["idempotency_key"] == (
        f"rollback:{MODEL}:v3:canary:{JUDGE_RULE}:{now - now % 300_000}"
    )
    # v4 compared too few prompts: its gate is inconclusive (-1), and nothing acts on it.
    assert workers.metric("llm_monitor_policy_decisions_total", model_version="v4",
                          rule=GATE_RULE, outcome="inconclusive") == 1  # fmt: skip

    # The same records again (a replay after a crash), and a record that does not decode.
    asyncio.run(send_each(workers.bootstrap, [(JUDGE_TOPIC, k, v) for k, v in records]))
    asyncio.run(send_each(workers.bootstrap, [(JUDGE_TOPIC, MODEL.encode(), POISON)]))
    workers.wait_for(
        lambda: (
            workers.metric("llm_monitor_internal_dead_letters_total", topic=JUDGE_TOPIC,
                           reason="undecodable") == 1
            and workers.uncommitted((JUDGE_TOPIC, "llm.actions", "llm.policy")) == 0
        ),
        what="the replay and the poison record consumed, every policy record stored",
    )  # fmt: skip
    assert len(rollbacks()) == 1 and r.refused == []
    assert gate("v4") == -1
    status = httpx.get(
        f"http://127.0.0.1:{workers.port}/policy/status",
        headers={"Authorization": f"Bearer {TOKEN}"}, timeout=15,
    ).json()  # fmt: skip
    verdicts = {g["model_version"]: (g["verdict"], g["n"]) for g in status["promotion_gates"]}
    assert verdicts == {"v2": ("pass", 25), "v3": ("fail", 25), "v4": ("inconclusive", 5)}
    workers.stop_all()

    decisions = query(
        workers,
        "SELECT rule, model_version, outcome, observed, bound_low, threshold, n, incident_id "
        "FROM llm_monitor.decisions FINAL WHERE model = 'support-bot' ORDER BY model_version, rule",
    )
    got = {(d["rule"], d["model_version"]): d for d in decisions}
    assert {k: d["outcome"] for k, d in got.items()} == {
        (GATE_RULE, "v2"): "pass", (JUDGE_RULE, "v2"): "healthy",
        (GATE_RULE, "v3"): "fail", (JUDGE_RULE, "v3"): "fire",
        (GATE_RULE, "v4"): "inconclusive", (JUDGE_RULE, "v4"): "inconclusive",
    }  # fmt: skip
    gate_v2, fire = got[(GATE_RULE, "v2")], got[(JUDGE_RULE, "v3")]
    assert (gate_v2["observed"], gate_v2["threshold"], gate_v2["n"]) == (0.5, 0.45, 25)
    assert (fire["bound_low"], fire["n"]) == (1.0, 25)  # the loss side: surely worse
    assert fire["incident_id"] == rollback["incident_id"]
    # The demo report's query reads both rules on the win-rate side.
    report = query(workers, JUDGE_DECISIONS.replace("{db:Identifier}", "llm_monitor"))
    read = {(d["rule"], d["model_version"]): (d["win_rate"], d["low"], d["high"]) for d in report}
    assert read[(GATE_RULE, "v2")] == (0.5, 0.5, 0.5)
    assert read[(JUDGE_RULE, "v3")] == (0.0, 0.0, 0.0)
