"""The policy role in a real worker: seeded incidents roll back and kill through signed
webhooks; the kill-switch API refuses bad tokens, audits every call and survives a restart."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from monitor.client import produce
from monitor.devtools.generate import generate_events
from monitor.policy.receiver import Receiver
from monitor.policy.signing import Verifier
from tests.conftest import WorkerHarness
from tests.e2e.test_pipeline_e2e import query, scalar

pytestmark = pytest.mark.e2e
SECRET = "e2e-webhook-secret-0123456789abcdef"  # noqa: S105 - test fixture
TOKEN = "e2e-api-token-0123456789abcdef"  # noqa: S105 - test fixture


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    r = Receiver(Verifier(SECRET.encode()))
    url = r.serve()
    try:
        yield r, url
    finally:
        r.stop()


def configure(workers: WorkerHarness, url: str, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({
        "cooldown_s": 0,
        "webhooks": {name: [f"{url}/{name}"] for name in ("rollback", "kill", "resume")},
    }))  # fmt: skip
    workers.env_overrides.update({
        "LLM_MONITOR_POLICY__FILE": str(policy),
        "LLM_MONITOR_POLICY__WEBHOOK_SECRET": SECRET,
        "LLM_MONITOR_POLICY__API_TOKEN": TOKEN,
    })  # fmt: skip


def wait(predicate: object, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_seeded_incidents_roll_back_and_kill_through_signed_webhooks(
    workers: WorkerHarness, receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    r, url = receiver
    configure(workers, url, tmp_path)
    workers.start()
    asyncio.run(produce(workers.bootstrap, "llm.events", list(generate_events(6000, seed=4))))
    wait(lambda: {"rollback", "kill"} <= {d.event for d in r.deliveries})
    time.sleep(7.0)  # attempts and incidents stored; evidence copied 5 s after an incident
    workers.stop_all()
    assert r.refused == []  # every delivery carried a valid signature
    rollbacks = {(d.body["rule"], d.body["deployment"]) for d in r.deliveries
                 if d.event == "rollback"}  # fmt: skip
    assert ("rollback.error_rate", "canary") in rollbacks  # the error storm
    kills = [d.body for d in r.deliveries if d.event == "kill"]
    assert {k["rule"] for k in kills} == {"kill.data_breach"}  # the PII leak burst
    assert all(k["deployment"] == "canary" for k in kills)
    fired = query(workers, "SELECT rule, deployment, n, bound_low, bound_high, threshold FROM "
                  "llm_monitor.decisions FINAL WHERE outcome = 'fire'")  # fmt: skip
    assert fired and all(row["deployment"] == "canary" for row in fired)
    triggers = [row for row in fired if not row["rule"].startswith("stage.")]
    assert all(row["bound_low"] > row["threshold"] for row in triggers)
    promotions = [row for row in fired if row["rule"].startswith("stage.")]
    assert all(row["bound_high"] < row["threshold"] for row in promotions)
    assert all(row["n"] >= 1 for row in fired)
    assert scalar(workers, "SELECT countIf(outcome = 'delivered') FROM llm_monitor.actions "
                  "FINAL") == len(r.deliveries)  # fmt: skip
    incident = kills[0]["incident_id"]
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


def api(
    method: str, port: int, path: str, token: str | None, body: object = None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.request(method, f"http://127.0.0.1:{port}{path}", json=body, headers=headers,
                         timeout=15)  # fmt: skip


def test_kill_switch_api_auth_audit_and_restart(
    workers: WorkerHarness, receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    r, url = receiver
    configure(workers, url, tmp_path)
    first = workers.start()
    workers.wait_for(workers.ready)
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
    gate = api("POST", port, "/flagger/gate", None,
               {"name": "support-bot", "metadata": {"deployment": "canary"}})  # fmt: skip
    assert gate.status_code == 503 and "kill switch" in gate.text
    wait(lambda: [d.event for d in r.deliveries] == ["kill"])

    first.terminate()
    first.wait(timeout=60)
    workers.processes.clear()
    workers.start()
    workers.wait_for(workers.ready)
    states = api("GET", port, "/killswitch", TOKEN).json()["states"]
    assert [(s["model"], s["engaged"]) for s in states] == [("support-bot", True)]
    released = api("POST", port, "/killswitch/release", TOKEN, target)
    assert released.status_code == 200 and released.json()["state"]["engaged"] is False
    wait(lambda: [d.event for d in r.deliveries] == ["kill", "resume"])
    time.sleep(2.0)
    workers.stop_all()
    audit = query(
        workers, "SELECT outcome, count() AS n FROM llm_monitor.audit_log FINAL GROUP BY outcome"
    )
    outcomes = {row["outcome"]: row["n"] for row in audit}
    assert outcomes["unauthorized"] == 3 and outcomes["ok"] >= 3
    history = query(workers, "SELECT engaged, actor FROM llm_monitor.killswitch FINAL "
                    "ORDER BY changed_at")  # fmt: skip
    assert [(h["engaged"], h["actor"]) for h in history] == [(1, "cli"), (0, "api")]
