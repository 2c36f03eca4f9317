"""Token budgets in a real worker: each threshold of each model's budget fires once, as a
signed ``budget`` webhook, a stored decision and an incident, and the gauge shows the spend;
a restarted worker keeps the spend and fires nothing twice."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from monitor.client import produce
from monitor.devtools.generate import generate_events
from monitor.errors import SchemaError
from monitor.ingest.events import decode_event
from monitor.policy.receiver import Receiver
from tests.conftest import WorkerHarness, wait_until
from tests.e2e.test_pipeline_e2e import query, split, stored
from tests.e2e.test_policy_e2e import SECRET, TOKEN, receiver  # noqa: F401 - the fixture

pytestmark = pytest.mark.e2e
RULES = {"budget.tokens.50", "budget.tokens.80", "budget.tokens.100"}


def tokens_by_model(records: list[tuple[bytes, bytes]]) -> Counter[str]:
    totals = Counter[str]()
    for _, value in records:
        try:
            event = decode_event(value)
        except SchemaError:
            continue
        totals[event.model] += (event.input_tokens or 0) + (event.output_tokens or 0)
    return totals


def test_budget_thresholds_fire_once_each_and_survive_a_restart(
    workers: WorkerHarness,
    receiver: tuple[Receiver, str],  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    r, url = receiver
    records = list(generate_events(3000, seed=11))
    totals = tokens_by_model(records)
    limit = 0.9 * min(totals.values())  # every model passes 100 %
    workers.use_policy({
        "webhooks": {"budget": [f"{url}/budget"]},
        "budgets": [{"name": "tokens", "model": "*", "metric": "total_tokens",
                     "period": "month", "limit": limit}],
    }, secret=SECRET, token=TOKEN)  # fmt: skip

    def budget_sent() -> list[tuple[str, str]]:
        return [(d.body["model"], d.body["rule"]) for d in r.deliveries if d.event == "budget"]

    first = workers.start()
    asyncio.run(produce(workers.bootstrap, "llm.events", records))
    wait_until(lambda: len(budget_sent()) >= 3 * len(totals), "every threshold delivered")
    valid, _ = split(records)
    workers.wait_for(lambda: stored(workers) >= valid, what=f"{valid} events stored")
    workers.wait_windows_stored()
    workers.wait_for(
        lambda: workers.uncommitted(("llm.windows", "llm.actions", "llm.policy")) == 0,
        what="every policy record stored",
    )
    # Every snapshot of every window counted once: one action per threshold and model.
    assert workers.metric("llm_monitor_actions_total", action="budget") == 3 * len(totals)
    assert sorted(budget_sent()) == sorted((m, rule) for m in totals for rule in RULES)
    assert r.refused == []
    for model, total in totals.items():
        ratio = workers.metric("llm_monitor_budget_spent_ratio", budget="tokens", model=model)
        assert ratio == pytest.approx(total / limit, rel=1e-9), model

    first.terminate()
    first.wait(timeout=60)
    workers.processes.clear()
    workers.start()
    workers.wait_for(workers.ready, what="the restarted worker ready")
    more = list(generate_events(300, seed=12))
    asyncio.run(produce(workers.bootstrap, "llm.events", more))
    after = {m: totals[m] + tokens_by_model(more)[m] for m in totals}
    workers.wait_for(
        lambda: all(
            workers.metric("llm_monitor_budget_spent_ratio", budget="tokens", model=m)
            == pytest.approx(after[m] / limit, rel=1e-9)
            for m in totals
        ),
        what="the restored spend plus the new traffic",
    )
    workers.wait_for(
        lambda: workers.uncommitted(("llm.windows", "llm.actions", "llm.policy")) == 0,
        what="every policy record stored",
    )
    workers.stop_all()
    assert len(budget_sent()) == 3 * len(totals)  # nothing fired twice
    decisions = query(workers, "SELECT model, rule, outcome, incident_id FROM "
                      "llm_monitor.decisions FINAL WHERE action = 'budget'")  # fmt: skip
    assert sorted((d["model"], d["rule"]) for d in decisions) == sorted(budget_sent())
    assert all(d["outcome"] == "fire" and d["incident_id"] for d in decisions)
    # One incident per threshold and model. (Which revision a merge keeps is not checked: the
    # incidents table is a ReplacingMergeTree without a version column.)
    incidents = query(workers, "SELECT DISTINCT incident_id, model, rule FROM "
                      "llm_monitor.incidents WHERE action = 'budget'")  # fmt: skip
    assert sorted((i["model"], i["rule"]) for i in incidents) == sorted(budget_sent())
    assert {i["incident_id"] for i in incidents} == {d["incident_id"] for d in decisions}
