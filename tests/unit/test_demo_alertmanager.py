"""The demo's local Alertmanager: the shipped config rewritten for loopback, a start that fails
cleanly, and the summary of the notifications the demo's receiver got."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from monitor.devtools.alertmanager import (
    SHIPPED_CONFIG,
    AlertmanagerError,
    alertmanager_binary,
    load_config,
    local_config,
    start_alertmanager,
)
from monitor.devtools.report import alertmanager_notifications
from monitor.policy.alertmanager import ALERTNAME
from monitor.policy.receiver import Receiver
from monitor.policy.signing import Verifier

HOOK = "http://127.0.0.1:9/alertmanager"


def routes(route: dict[str, object]) -> list[dict[str, object]]:
    children = route.get("routes") or []
    assert isinstance(children, list)
    return [route, *(r for child in children for r in routes(child))]


def test_every_webhook_points_at_the_receiver_and_every_route_is_quick() -> None:
    shipped = load_config()
    shipped["receivers"].append({"name": "other", "webhook_configs": [{"url": "http://x/"}]})
    shipped["route"]["routes"][0]["routes"] = [{"receiver": "other", "group_wait": "5m"}]
    config = local_config(shipped, HOOK)
    hooks = [w["url"] for r in config["receivers"] for w in r.get("webhook_configs", [])]
    assert hooks and set(hooks) == {HOOK}
    timings = {(r.get("group_wait"), r.get("group_interval")) for r in routes(config["route"])}
    assert timings == {("0s", "1s")}
    assert len(routes(config["route"])) == 1 + len(shipped["route"]["routes"]) + 1
    # the input is left as it was; what routing does not concern is kept
    assert shipped["route"]["group_wait"] == "30s"
    assert config["inhibit_rules"] == shipped["inhibit_rules"]
    assert config["route"]["repeat_interval"] == shipped["route"]["repeat_interval"]


def test_timings_can_be_left_as_configured() -> None:
    config = local_config(load_config(), HOOK, group_wait=None, group_interval=None)
    assert config["route"]["group_wait"] == "30s"
    assert config["route"]["group_interval"] == "5m"


def test_a_missing_config_is_an_alertmanager_error(tmp_path: Path) -> None:
    with pytest.raises(AlertmanagerError, match="cannot read"):
        load_config(tmp_path / "missing.yml")
    (tmp_path / "bad.yml").write_text("- not a config\n")
    with pytest.raises(AlertmanagerError, match="no route"):
        load_config(tmp_path / "bad.yml")


def test_a_binary_that_exits_fails_fast_with_its_log(tmp_path: Path) -> None:
    script = tmp_path / "fake-alertmanager"
    script.write_text(f"#!{sys.executable}\nimport sys\nprint('bad flag')\nsys.exit(3)\n")
    script.chmod(0o755)
    log = tmp_path / "am.log"
    config = local_config(load_config(SHIPPED_CONFIG), HOOK)
    with pytest.raises(AlertmanagerError, match="exited with code 3"):
        start_alertmanager(config, tmp_path / "am.yml", tmp_path / "am", log, binary=str(script))
    assert "bad flag" in log.read_text()
    assert "llm-monitor-webhook" in (tmp_path / "am.yml").read_text()


def test_the_real_alertmanager_starts_ready_and_stops(tmp_path: Path) -> None:
    if alertmanager_binary() is None:
        pytest.skip("no Alertmanager binary on PATH (./.ci/ensure-tools installs one)")
    config = local_config(load_config(), HOOK)
    am = start_alertmanager(config, tmp_path / "am.yml", tmp_path / "am", tmp_path / "am.log")
    try:
        assert am.url.startswith("http://127.0.0.1:")
        assert am.process.poll() is None
    finally:
        am.stop()
    assert am.process.returncode is not None


def alert(incident: str, severity: str, status: str, deployment: str = "canary") -> object:
    labels = {"alertname": ALERTNAME, "incident_id": incident, "model": "m",
              "deployment": deployment, "severity": severity, "rule": f"r-{severity}"}  # fmt: skip
    return {"status": status, "labels": labels}


def test_notifications_are_summarised_per_incident_severity_and_status() -> None:
    receiver = Receiver(Verifier(b"unused"))
    for at, alerts in [
        (10.0, [alert("inc-a", "page", "firing")]),
        (11.0, [alert("inc-b", "page", "firing", "canary-2")]),
        (12.0, [alert("inc-a", "page", "resolved"), alert("inc-a", "critical", "firing")]),
        (13.0, [alert("inc-a", "critical", "firing")]),
        (14.0, [{"status": "firing", "labels": {"alertname": "LLMMonitorWorkerDown"}}]),
        (15.0, ["not an alert", {"status": "firing", "labels": "not labels"}]),
    ]:
        receiver.alerts.append((at, "/alertmanager", {"status": "firing", "alerts": alerts}))
    receiver.alerts.append((16.0, "/alertmanager", {"alerts": "not a list"}))
    rows = [row[:7] for row in alertmanager_notifications(receiver)]
    assert rows == [
        ("inc-a", "m", "canary", "page", "r-page", "firing", 1),
        ("inc-b", "m", "canary-2", "page", "r-page", "firing", 1),
        ("inc-a", "m", "canary", "page", "r-page", "resolved", 1),
        ("inc-a", "m", "canary", "critical", "r-critical", "firing", 2),
        ("LLMMonitorWorkerDown", "", "", "", "", "firing", 1),
        ("", "", "", "", "", "firing", 1),
    ]
    assert alertmanager_notifications(receiver)[0][7] == "00:00:10.000"
