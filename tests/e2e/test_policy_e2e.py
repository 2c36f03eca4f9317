"""The policy role in a real worker: seeded incidents roll back and kill through signed
webhooks, grouped into one incident per deployment and pushed to a real Alertmanager; the
kill-switch API refuses bad tokens, audits every call and survives a restart."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from monitor.client import produce
from monitor.devtools.generate import generate_events
from monitor.devtools.worker import metric_sum, scrape
from monitor.policy.receiver import Receiver
from monitor.policy.signing import gate_token
from tests.conftest import WorkerHarness, serving_receiver, wait_until
from tests.e2e.test_pipeline_e2e import query, scalar, split, stored
from tests.integration.test_alerting import notified, start_alertmanager

pytestmark = pytest.mark.e2e
SECRET = "e2e-webhook-secret-0123456789abcdef"  # noqa: S105 - test fixture
TOKEN = "e2e-api-token-0123456789abcdef"  # noqa: S105 - test fixture


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    with serving_receiver(SECRET.encode()) as served:
        yield served


def configure(workers: WorkerHarness, url: str) -> None:
    workers.use_policy({
        "cooldown_s": 0,
        "webhooks": {name: [f"{url}/{name}"] for name in ("rollback", "kill", "resume")},
    }, secret=SECRET, token=TOKEN)  # fmt: skip


def test_seeded_incidents_roll_back_and_kill_through_signed_webhooks(
    workers: WorkerHarness, receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    r, url = receiver
    configure(workers, url)
    am_url, alertmanager = start_alertmanager(tmp_path, f"{url}/alertmanager")
    workers.env_overrides["LLM_MONITOR_POLICY__ALERTMANAGER__URLS"] = json.dumps([am_url])
    records = list(generate_events(6000, seed=4))
    valid, _ = split(records)
    # Traffic before the PII leak burst first: sent all at once, a partial window of the leak
    # could reach the policy before the windows that roll back, and the kill it engages would
    # suppress the rollbacks (the policy's order, not a grouping one).
    before_leaks = int(len(records) * 0.8)
    try:
        workers.start()
        asyncio.run(produce(workers.bootstrap, "llm.events", records[:before_leaks]))
        wait_until(lambda: "rollback" in {d.event for d in r.deliveries}, "a rollback delivered")
        asyncio.run(produce(workers.bootstrap, "llm.events", records[before_leaks:]))
        wait_until(
            lambda: {"rollback", "kill"} <= {d.event for d in r.deliveries},
            "a rollback and a kill webhook delivered",
        )
        check_seeded_incidents(workers, r, valid)
    finally:
        alertmanager.terminate()
        alertmanager.wait(timeout=30)


def check_seeded_incidents(workers: WorkerHarness, r: Receiver, valid: int) -> None:
    workers.wait_for(lambda: stored(workers) >= valid, what=f"{valid} events stored")
    workers.wait_windows_stored()  # the windows every policy decision is taken on
    # Decisions taken, their actions dispatched, and every record of them stored: the group
    # commits windows once decided on, actions once delivered, policy records once stored.
    workers.wait_for(
        lambda: (
            workers.metric("llm_monitor_webhook_attempts_total", outcome="delivered")
            >= len(r.deliveries)
            and workers.uncommitted(("llm.windows", "llm.actions", "llm.policy")) == 0
        ),
        what="every webhook attempt recorded and every policy record stored",
    )

    incident = next(d.body["incident_id"] for d in r.deliveries if d.event == "kill")

    # Every rollback and kill opens or escalates an incident; the sink copies its evidence
    # EVIDENCE_DELAY_S after storing each revision of it, and counts the copy.
    def evidence_copied() -> bool:
        opened = sum(
            workers.metric("llm_monitor_actions_total", action=a) for a in ("rollback", "kill")
        )
        copied = workers.metric("llm_monitor_incident_evidence_copies_total", outcome="copied")
        return copied >= opened > 0

    workers.wait_for(evidence_copied, timeout_s=60, what="every incident's evidence copied")
    assert workers.metric("llm_monitor_incident_evidence_copies_total", outcome="failed") == 0
    workers.wait_for(
        lambda: len({a["fingerprint"] for _, a in notified(r, "firing")}) >= 1,
        what="the incidents' alerts from Alertmanager",
    )
    workers.stop_all()
    assert r.refused == []  # every delivery carried a valid signature
    # One incident per (model, deployment): one rollback and at most one kill webhook each.
    sent = [(d.event, d.body["model"], d.body["deployment"]) for d in r.deliveries]
    assert all(sent.count(s) == 1 for s in sent if s[0] in ("rollback", "kill")), sent
    kills = [d.body for d in r.deliveries if d.event == "kill"]
    assert {k["rule"] for k in kills} == {"kill.data_breach"}  # the PII leak burst
    assert all(k["deployment"] == "canary" for k in kills)
    incidents = query(workers, "SELECT incident_id, model, deployment, argMax(action, revision) "
                      "AS action, argMax(rules, revision) AS rules FROM llm_monitor.incidents "
                      "GROUP BY incident_id, model, deployment")  # fmt: skip
    deployments = [(i["model"], i["deployment"]) for i in incidents]
    assert sorted(deployments) == sorted({(m, d) for _, m, d in sent if _ != "resume"})
    assert len(set(deployments)) == len(deployments), incidents  # one each
    for i in incidents:  # every rule that fired for the deployment is in its incident
        assert "rollback.error_rate" in i["rules"], i  # the error storm
        assert {d.body["incident_id"] for d in r.deliveries
                if (d.body["model"], d.body["deployment"]) == (i["model"], i["deployment"])
                } == {i["incident_id"]}  # fmt: skip
    fired = query(workers, "SELECT rule, deployment, n, bound_low, bound_high, threshold, "
                  "outcome, incident_id FROM llm_monitor.decisions FINAL "
                  "WHERE outcome IN ('fire', 'attached', 'suppressed')")  # fmt: skip
    assert fired and all(row["deployment"] == "canary" for row in fired)
    triggers = [row for row in fired if not row["rule"].startswith("stage.")]
    assert all(row["bound_low"] > row["threshold"] for row in triggers)
    assert {row["incident_id"] for row in triggers} == {i["incident_id"] for i in incidents}
    assert any(row["outcome"] != "fire" for row in triggers)  # evidence, not another action
    # Alertmanager showed each incident as one alert with our labels.
    alerts = {a["labels"]["incident_id"]: a["labels"] for _, a in notified(r, "firing")}
    assert set(alerts) == {i["incident_id"] for i in incidents}
    for i in incidents:
        labels = alerts[i["incident_id"]]
        assert (labels["model"], labels["deployment"]) == (i["model"], i["deployment"])
    promotions = [row for row in fired if row["rule"].startswith("stage.")]
    assert all(row["bound_high"] < row["threshold"] for row in promotions)
    assert all(row["n"] >= 1 for row in fired)
    assert scalar(workers, "SELECT countIf(outcome = 'delivered') FROM llm_monitor.actions "
                  "FINAL") == len(r.deliveries)  # fmt: skip
    evidence = query(workers, "SELECT incident_id, kind, count() AS n FROM "
                     "llm_monitor.incident_evidence FINAL GROUP BY incident_id, kind")  # fmt: skip
    assert {(e["incident_id"], e["kind"]) for e in evidence if e["n"] > 0} >= {
        (incident, "event"),
        (incident, "finding"),
        (incident, "window"),
    }
    report = subprocess.run(
        [sys.executable, "-m", "monitor.cli", "incident", "report", incident,
         "--data-dir", str(workers.data_dir)],  # fmt: skip
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert "kill.data_breach" in report.stdout and "| pii | leak |" in report.stdout
    assert "## Incident timeline" in report.stdout and "| escalated | kill.data_breach |" in (
        report.stdout
    )


def api(
    method: str, port: int, path: str, token: str | None, body: object = None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.request(method, f"http://127.0.0.1:{port}{path}", json=body, headers=headers,
                         timeout=15)  # fmt: skip


def policy_rows_stored(workers: WorkerHarness, delivered: str) -> bool:
    """Whether the running worker has stored every policy row it produced, its ``delivered``
    webhook attempt included. With no traffic, each kill-switch API call is one audit row,
    each webhook attempt one attempt row and each kill or resume one kill-switch row."""
    try:
        samples = scrape(workers.metrics_url)
    except OSError:
        return False
    produced = sum(metric_sum(samples, name) for name in (
        "llm_monitor_killswitch_api_calls_total", "llm_monitor_webhook_attempts_total",
        "llm_monitor_actions_total"))  # fmt: skip
    attempts = metric_sum(
        samples, "llm_monitor_webhook_attempts_total", action=delivered, outcome="delivered"
    )
    rows = metric_sum(samples, "llm_monitor_sink_rows_total", table="policy")
    # Rows are committed once stored: nothing left on the topic means nothing in flight.
    return attempts >= 1 and rows >= produced and workers.uncommitted(("llm.policy",)) == 0


def test_kill_switch_api_auth_audit_and_restart(
    workers: WorkerHarness, receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    r, url = receiver
    configure(workers, url)
    first = workers.start()
    workers.wait_for(workers.ready, what="the worker ready")
    port = workers.port
    assert api("GET", port, "/killswitch", None).status_code == 401
    assert api("GET", port, "/killswitch", "wrong-token-0123456789").status_code == 401
    target = {"model": "support-bot", "deployment": "canary", "reason": "test"}
    assert api("POST", port, "/killswitch/engage", "nope", target).status_code == 401
    env = {**os.environ, "LLM_MONITOR_POLICY__API_TOKEN": TOKEN}
    out = subprocess.run(
        [sys.executable, "-m", "monitor.cli", "killswitch", "engage", "--model", "support-bot",
         "--deployment", "canary", "--reason", "bad answers", "--url", f"http://127.0.0.1:{port}"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert json.loads(out.stdout)["state"]["engaged"] is True
    assert TOKEN not in out.stdout + out.stderr
    gate_body = {"name": "support-bot", "metadata": {"deployment": "canary"}}
    assert api("POST", port, "/flagger/gate", None, gate_body).status_code == 401
    assert api("GET", port, "/policy/status", None).status_code == 401
    flagger = {
        "name": "support-bot",  # as Flagger sends it: the gate token in the metadata
        "metadata": {"deployment": "canary", "token": gate_token(TOKEN.encode()).decode()},
    }
    gate = api("POST", port, "/flagger/gate", None, flagger)
    assert gate.status_code == 503 and "kill switch" in gate.text
    wait_until(lambda: [d.event for d in r.deliveries] == ["kill"], "the kill webhook delivered")
    workers.wait_for(lambda: policy_rows_stored(workers, "kill"), what="the policy rows stored")

    first.terminate()
    first.wait(timeout=60)
    workers.processes.clear()
    workers.start()
    workers.wait_for(workers.ready, what="the restarted worker ready")
    states = api("GET", port, "/killswitch", TOKEN).json()["states"]
    assert [(s["model"], s["engaged"]) for s in states] == [("support-bot", True)]
    released = api("POST", port, "/killswitch/release", TOKEN, target)
    assert released.status_code == 200 and released.json()["state"]["engaged"] is False
    wait_until(
        lambda: [d.event for d in r.deliveries] == ["kill", "resume"],
        "the resume webhook delivered",
    )
    # The audit entry of the release call was once still in flight here after a fixed 2 s.
    workers.wait_for(lambda: policy_rows_stored(workers, "resume"), what="the policy rows stored")
    workers.stop_all()
    audit = query(
        workers, "SELECT outcome, count() AS n FROM llm_monitor.audit_log FINAL GROUP BY outcome"
    )
    outcomes = {row["outcome"]: row["n"] for row in audit}
    assert outcomes["unauthorized"] == 5 and outcomes["ok"] >= 3
    history = query(workers, "SELECT engaged, actor FROM llm_monitor.killswitch FINAL "
                    "ORDER BY changed_at")  # fmt: skip
    assert [(h["engaged"], h["actor"]) for h in history] == [(1, "cli"), (0, "api")]
