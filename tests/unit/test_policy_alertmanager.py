"""Incidents as Alertmanager alerts: what is sent (labels, annotations, endsAt, escalation), and
a push that fails retries with bounded backoff, counts its outcomes and never blocks."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import datetime

import httpx
import pytest

from monitor.config import AlertmanagerSettings
from monitor.policy.alertmanager import ALERTNAME, AlertmanagerPusher, incident_alerts
from monitor.policy.records import Incident
from tests.unit.test_policy import window
from tests.unit.test_policy_incidents import LEAK, engine, feed, latest

SETTINGS = AlertmanagerSettings(
    urls=["http://am.test:9093"], resend_interval_s=60, retry_deadline_s=2, max_backoff_s=0.05
)


def ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def one_incident(*windows_args: dict[str, object]) -> Incident:
    e = engine()
    out = feed(e, [window(i, 400, 80, **kw) for i, kw in enumerate(windows_args)])  # type: ignore[arg-type]
    (incident,) = latest(out).values()
    return incident


def test_an_open_incident_is_one_firing_alert_with_our_labels() -> None:
    incident = one_incident({})
    (alert,) = incident_alerts(incident, SETTINGS, now_s=1_000.0)
    assert alert["labels"] == {
        "alertname": ALERTNAME, "team": "llm-platform", "incident_id": incident.incident_id,
        "model": "m", "deployment": "canary", "severity": "page",
        "rule": "rollback.error_rate",
    }  # fmt: skip
    notes = alert["annotations"]
    assert notes["runbook_url"] == "docs/operations.md#llmmonitorincident"
    assert "rollback.error_rate: observed 0.2" in notes["description"]
    assert "opened rollback.error_rate (v2)" in notes["timeline"]
    assert ts(alert["startsAt"]) == incident.opened_at_ms / 1000
    assert ts(alert["endsAt"]) == 1_000.0 + 4 * 60  # expires unless re-sent


def test_a_resolved_incident_ends_its_alert_at_the_resolution() -> None:
    e = engine()
    feed(e, [window(0, 400, 80)])
    (resolved,) = e.observe(window(1, 400, 2)).incidents
    (alert,) = incident_alerts(resolved, SETTINGS, now_s=10**10)
    assert resolved.status == "resolved"
    assert ts(alert["endsAt"]) == resolved.resolved_at_ms / 1000


def test_an_escalation_ends_the_rollback_alert_as_the_kill_alert_starts() -> None:
    incident = one_incident({}, {"flags": LEAK})
    ended, firing = incident_alerts(incident, SETTINGS, now_s=10**10)
    assert (ended["labels"]["severity"], ended["labels"]["rule"]) == ("page", "rollback.error_rate")
    assert (firing["labels"]["severity"], firing["labels"]["rule"]) == (
        "critical", "kill.data_breach"
    )  # fmt: skip
    assert ts(ended["endsAt"]) < 10**10 < ts(firing["endsAt"])
    assert len(incident_alerts(incident, SETTINGS, now_s=0, end_previous=False)) == 1


def pusher(
    handler: Callable[[httpx.Request], httpx.Response], outcomes: list[str]
) -> AlertmanagerPusher:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return AlertmanagerPusher(SETTINGS, on_outcome=outcomes.append, client=client)


def test_pushes_retry_through_failures_and_send_the_newest_state() -> None:
    bodies: list[list[dict[str, object]]] = []
    outcomes: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v2/alerts"
        bodies.append(json.loads(request.content))
        return httpx.Response(503 if len(bodies) < 3 else 200)

    e = engine()
    opened = latest(e.observe(window(0, 400, 80)))

    async def run() -> None:
        p = pusher(handler, outcomes)
        started = time.perf_counter()
        p.update(opened.values())
        assert time.perf_counter() - started < 0.05  # queued, not sent: never blocks
        await asyncio.sleep(0)
        p.update(e.observe(window(1, 400, 2)).incidents)  # resolved while retrying
        assert await p.idle()
        await p.close()

    asyncio.run(run())
    assert outcomes == ["retrying", "retrying", "delivered"]
    (last,) = bodies[-1]  # the retry carried the newest state: ended
    assert ts(str(last["endsAt"])) < time.time()


def test_a_push_gives_up_at_its_deadline_and_a_refusal_at_once() -> None:
    outcomes: list[str] = []
    incident = one_incident({})

    async def run(status: int) -> None:
        p = pusher(lambda request: httpx.Response(status), outcomes)
        p.update([incident])
        assert await p.idle(timeout_s=10)
        await p.close()

    started = time.monotonic()
    asyncio.run(run(500))
    assert outcomes[-1] == "gave_up" and outcomes.count("retrying") >= 2
    assert time.monotonic() - started < SETTINGS.retry_deadline_s + 1
    outcomes.clear()
    asyncio.run(run(400))  # a bad request does not heal
    assert outcomes == ["gave_up"]


def test_an_unreachable_alertmanager_is_a_failure_not_an_error() -> None:
    outcomes: list[str] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async def run() -> None:
        p = pusher(refuse, outcomes)
        p.update([one_incident({})])
        assert await p.idle(timeout_s=10)
        await p.close()

    asyncio.run(run())
    assert outcomes[-1] == "gave_up" and set(outcomes) == {"retrying", "gave_up"}


def test_settings_refuse_what_alertmanager_would() -> None:
    with pytest.raises(ValueError, match="http"):
        AlertmanagerSettings(urls=["alertmanager:9093"])
    with pytest.raises(ValueError, match="label name"):
        AlertmanagerSettings(labels={"team-name": "x"})
    with pytest.raises(ValueError, match="no Alertmanager URL"):
        AlertmanagerPusher(AlertmanagerSettings())
