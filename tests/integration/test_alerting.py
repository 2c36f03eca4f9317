"""Alert rules and Alertmanager config, with the real tools: promtool checks and unit-tests the
rules (the committed render of deploy/policy/policy.yaml, and a render of another policy); a
real Alertmanager on loopback shows a kill switch inhibiting its own rollback alerts, and
shows the policy's incidents as one alert each, within a second, resolved with the incident."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from monitor.config import AlertmanagerSettings
from monitor.devtools.broker import free_port
from monitor.policy.alerting import write_rules
from monitor.policy.alertmanager import ALERTNAME, AlertmanagerPusher
from monitor.policy.config import Policy
from monitor.policy.engine import PolicyEngine
from monitor.policy.receiver import Receiver
from monitor.policy.signing import Verifier
from tests.unit.test_policy import window

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/rules/llm-monitor.rules.yml"
ALERTMANAGER = ROOT / "deploy/alertmanager/alertmanager.yml"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found. Fix: run ./.ci/ensure-tools (or `make test`)")
    return path


def run(*args: str) -> str:
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def test_rules_are_valid_and_their_unit_tests_pass() -> None:
    assert "SUCCESS: 18 rules found" in run(tool("promtool"), "check", "rules", str(RULES))
    assert "SUCCESS" in run(
        tool("promtool"), "test", "rules", str(ROOT / "tests/promtool/llm-monitor.rules.test.yml")
    )


def test_rules_rendered_from_another_policy_are_valid(tmp_path: Path) -> None:
    policy = Policy.model_validate({"min_samples": 200, "rollback": {
        "error_rate": {"threshold": 0.10}, "p99_latency": {"threshold_ms": 2000, "quantile": 0.95},
        "detector_rates": {"injection": {"threshold": 0.2}},
    }})  # fmt: skip
    path = write_rules(policy, tmp_path / "llm-monitor.rules.yml")
    assert "SUCCESS: 18 rules found" in run(tool("promtool"), "check", "rules", str(path))


def test_alertmanager_config_is_valid() -> None:
    assert "SUCCESS" in run(tool("amtool"), "check-config", str(ALERTMANAGER))


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    config = yaml.safe_load(ALERTMANAGER.read_text())
    config["receivers"][0]["webhook_configs"][0]["url"] = f"http://127.0.0.1:{free_port()}/"
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(  # noqa: S603 - a Debian binary and our own arguments
        [tool("prometheus-alertmanager"), f"--config.file={path}",
         f"--storage.path={tmp_path / 'am'}", f"--web.listen-address=127.0.0.1:{port}",
         "--cluster.listen-address="],  # fmt: skip
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "am.log").open("wb"),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_kill_switch_inhibits_its_own_rollback_alerts(alertmanager: str) -> None:
    def alert(name: str, deployment: str, severity: str) -> dict[str, object]:
        return {"labels": {"alertname": name, "model": "m", "deployment": deployment,
                           "severity": severity}}  # fmt: skip

    alerts = [
        alert("LLMMonitorKillSwitchEngaged", "canary", "critical"),
        alert("LLMMonitorRollbackActive", "canary", "page"),
        alert("LLMMonitorRollbackActive", "stable", "page"),  # another deployment: not silenced
    ]
    assert httpx.post(f"{alertmanager}/api/v2/alerts", json=alerts).status_code == 200
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        got = httpx.get(f"{alertmanager}/api/v2/alerts").json()
        states = {(a["labels"]["alertname"], a["labels"]["deployment"]): a["status"]["state"]
                  for a in got}  # fmt: skip
        if len(states) == 3 and "unprocessed" not in states.values():
            break
        time.sleep(0.2)
    assert states == {
        ("LLMMonitorKillSwitchEngaged", "canary"): "active",
        ("LLMMonitorRollbackActive", "canary"): "suppressed",
        ("LLMMonitorRollbackActive", "stable"): "active",
    }


# -- incidents pushed by the policy role, through a real Alertmanager --------------------------


def start_alertmanager(tmp_path: Path, webhook_url: str) -> tuple[str, subprocess.Popen[bytes]]:
    """A real Alertmanager on loopback with the shipped config, its timings shortened
    (group_wait 0s, group_interval 1s, as an incident route should have), notifying
    ``webhook_url``; returns its URL once ready, and the process."""
    config = yaml.safe_load(ALERTMANAGER.read_text())
    config["receivers"][0]["webhook_configs"][0]["url"] = webhook_url
    for route in [config["route"], *config["route"].get("routes", [])]:
        route.update(group_wait="0s", group_interval="1s")
    path = tmp_path / "alertmanager-incidents.yml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(  # noqa: S603 - a Debian binary and our own arguments
        [tool("prometheus-alertmanager"), f"--config.file={path}",
         f"--storage.path={tmp_path / 'am-incidents'}", f"--web.listen-address=127.0.0.1:{port}",
         "--cluster.listen-address="],  # fmt: skip
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "am-incidents.log").open("wb"),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/-/ready")
    except BaseException:
        process.terminate()
        raise
    return url, process


@pytest.fixture
def incident_alertmanager(tmp_path: Path) -> Iterator[tuple[str, Receiver]]:
    """A real Alertmanager routing to a receiver on loopback (its /alertmanager path)."""
    receiver = Receiver(Verifier(b"unused-webhook-secret"))
    base = receiver.serve()
    url, process = start_alertmanager(tmp_path, f"{base}/alertmanager")
    try:
        yield url, receiver
    finally:
        process.terminate()
        process.wait(timeout=30)
        receiver.stop()


def wait_ready(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{url} not ready after {timeout_s:.0f}s")


def notified(receiver: Receiver, status: str) -> list[tuple[float, dict[str, Any]]]:
    """Incident alerts Alertmanager sent the receiver with ``status``: (arrival, alert)."""
    return [
        (at, alert)
        for at, _, payload in list(receiver.alerts)
        for alert in payload.get("alerts", [])
        if alert["labels"].get("alertname") == ALERTNAME and alert["status"] == status
    ]


async def arrival(receiver: Receiver, status: str, timeout_s: float = 10.0) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := notified(receiver, status):
            return found
        await asyncio.sleep(0.01)
    pytest.fail(f"no {status} incident alert from Alertmanager in {timeout_s:.0f}s")


def active(url: str) -> list[dict[str, Any]]:
    alerts = httpx.get(f"{url}/api/v2/alerts", params={"filter": f'alertname="{ALERTNAME}"'})
    return [a for a in alerts.json() if a["status"]["state"] == "active"]


def live_engine() -> PolicyEngine:
    """An engine on the wall clock: Alertmanager judges startsAt/endsAt against its own."""
    return PolicyEngine(Policy.model_validate(
        {"evaluation_windows": 1, "cooldown_s": 0, "incident_resolve_after_s": 0}
    ))  # fmt: skip


def test_an_incident_is_one_alert_within_a_second_and_resolves_with_it(
    incident_alertmanager: tuple[str, Receiver],
) -> None:
    url, receiver = incident_alertmanager
    engine = live_engine()
    settings = AlertmanagerSettings(urls=[url], resend_interval_s=30)

    async def run() -> None:
        pusher = AlertmanagerPusher(settings)
        pusher.update(engine.observe(window(0, 400, 0)).incidents)  # healthy: nothing
        tipped = time.time()
        opened = engine.observe(window(1, 400, 80))  # the window that tips the error rate
        pusher.update(opened.incidents)
        ((at, alert),) = await arrival(receiver, "firing")
        assert at - tipped < 1.0, f"{at - tipped:.3f}s from the tipping window"
        (incident,) = opened.incidents
        assert alert["labels"] == {
            "alertname": ALERTNAME, "team": "llm-platform", "incident_id": incident.incident_id,
            "model": "m", "deployment": "canary", "severity": "page",
            "rule": "rollback.error_rate",
        }  # fmt: skip
        assert alert["annotations"]["runbook_url"].endswith("#llmmonitorincident")
        # More rules attach: the same alert, its evidence updated; still one in Alertmanager.
        pusher.update(engine.observe(window(2, 400, 80, flags={"toxicity": 20})).incidents)
        assert await pusher.idle()
        (shown,) = active(url)
        assert shown["labels"]["incident_id"] == incident.incident_id
        assert "rollback.toxicity_rate" in shown["annotations"]["description"]
        # Every rule recovers: the incident resolves, and so does the alert.
        resolved = engine.observe(window(3, 400, 2))
        assert [i.status for i in resolved.incidents] == ["resolved"]
        pusher.update(resolved.incidents)
        ((_, ended),) = await arrival(receiver, "resolved")
        assert ended["labels"] == alert["labels"]
        assert active(url) == []
        assert len({a["fingerprint"] for _, a in notified(receiver, "firing")}) == 1
        await pusher.close()

    asyncio.run(run())


def test_an_escalated_incident_pages_as_critical_and_ends_its_rollback_alert(
    incident_alertmanager: tuple[str, Receiver],
) -> None:
    url, receiver = incident_alertmanager
    engine = live_engine()

    async def run() -> None:
        pusher = AlertmanagerPusher(AlertmanagerSettings(urls=[url]))
        pusher.update(engine.observe(window(0, 400, 80)).incidents)
        await arrival(receiver, "firing")
        killed = engine.observe(window(1, 400, 80, flags={"pii": 2}))
        assert [a.action for a in killed.actions] == ["kill"]
        pusher.update(killed.incidents)
        assert await pusher.idle()
        (shown,) = active(url)
        assert (shown["labels"]["severity"], shown["labels"]["rule"]) == (
            "critical", "kill.data_breach"
        )  # fmt: skip
        ((_, ended),) = await arrival(receiver, "resolved")
        assert ended["labels"]["severity"] == "page"
        await pusher.close()

    asyncio.run(run())
