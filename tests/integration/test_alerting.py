"""Alert rules and Alertmanager config, with the real tools: promtool checks and unit-tests the
rules (the committed render of deploy/policy/policy.yaml, and a render of another policy); a
real Alertmanager on loopback shows a kill switch inhibiting its own rollback alerts."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from monitor.devtools.broker import free_port
from monitor.policy.alerting import write_rules
from monitor.policy.config import Policy

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
