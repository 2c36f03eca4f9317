"""Reaction time: policy engine vs Prometheus + Alertmanager, on the same incidents.

One worker (all roles) runs the policy with a rollback webhook to a local verifying receiver,
and pushes its incidents to a real Alertmanager (group_wait 0 s) that notifies the same
receiver: the policy → Alertmanager → receiver path. Two real Prometheus servers scrape that
worker with our alert rules and post to two more Alertmanagers, which post to the same
receiver: one with production-typical intervals (scrape 15 s, evaluation 15 s, group_wait
30 s), one with the shortest sane ones (1 s, 1 s, 0 s). Each incident is a fresh model whose
canary goes from healthy to 30 % errors; incidents start a second apart. For each path the
reaction is the time from the produce timestamp of the event that tips *its* trigger (policy
and its Alertmanager push: the first event after which the Wilson lower bound of the error
rate clears 5 % with at least ``min_samples`` events; Prometheus rule: the first after which
the point rate clears 5 % with at least 50 events) to the arrival of its webhook.

``llm-monitor bench reaction --json`` (or ``python -m bench.reaction``) prints one JSON object
last: ``{"p50_s", "p99_s", "alertmanager_p50_s", "alertmanager_p99_s", "baseline_p50_s",
"baseline_p99_s", "speedup_p50", ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml
from aiokafka import AIOKafkaProducer

from monitor.config import KafkaSettings
from monitor.devtools.broker import free_port, start_broker
from monitor.devtools.worker import start_worker, stop_worker
from monitor.policy.config import Policy
from monitor.policy.receiver import Receiver
from monitor.policy.signing import Verifier
from monitor.policy.stats import wilson
from streams.topics import ensure_topics, pipeline_topics

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy/prometheus/rules/llm-monitor.rules.yml"
ALERTMANAGER = ROOT / "deploy/alertmanager/alertmanager.yml"
PROFILES = {
    "production": {"scrape": "15s", "evaluate": "15s", "group_wait": "30s"},
    "fast": {"scrape": "1s", "evaluate": "1s", "group_wait": "0s"},
}
# The Alertmanager the policy pushes its incidents to (no Prometheus in front of it).
PUSHED = {"group_wait": "0s", "group_interval": "1s"}
INCIDENT_ALERT = "LLMMonitorIncident"
HEALTHY, FAULTY, ERROR_RATE, RATE_PER_S = 80, 220, 0.30, 100.0


@dataclass
class Incident:
    model: str
    produced: list[tuple[float, bool]] = field(default_factory=list)  # (unix s, is_error)

    def tip(self, policy: bool, min_samples: int, confidence: float) -> float | None:
        errors = 0
        for n, (at, failed) in enumerate(self.produced, start=1):
            errors += failed
            if n < min_samples:
                continue
            over = (wilson(errors, n, confidence).low if policy else errors / n) > 0.05
            if over:
                return at
        return None


def _event(model: str, failed: bool, at: float) -> bytes:
    return json.dumps({
        "request_id": str(uuid.uuid4()), "timestamp": int(at * 1000), "model": model,
        "model_version": "v2", "deployment": "canary", "route": "bench", "prompt": "q",
        "response": "" if failed else "a", "latency_ms": 500.0,
        "status": "error" if failed else "ok",
    }).encode()  # fmt: skip


async def _incident(producer: AIOKafkaProducer, incident: Incident, rng: random.Random) -> None:
    for i in range(HEALTHY + FAULTY):
        failed = i >= HEALTHY and rng.random() < ERROR_RATE
        at = time.time()
        incident.produced.append((at, failed))
        await producer.send_and_wait("llm.events", _event(incident.model, failed, at))
        await asyncio.sleep(1.0 / RATE_PER_S)


async def _produce(bootstrap: str, incidents: list[Incident], spacing_s: float) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    try:
        tasks = []
        for i, incident in enumerate(incidents):
            tasks.append(asyncio.create_task(_incident(producer, incident, random.Random(i))))
            await asyncio.sleep(spacing_s)
        await asyncio.gather(*tasks)
    finally:
        await producer.stop()


def _start_prometheus(
    name: str, profile: dict[str, str], worker_port: int, am_port: int, tmp: Path
) -> subprocess.Popen[bytes]:
    config = {
        "global": {"scrape_interval": profile["scrape"],
                   "evaluation_interval": profile["evaluate"]},
        "rule_files": [str(RULES)],
        "alerting": {"alertmanagers": [{"static_configs": [
            {"targets": [f"127.0.0.1:{am_port}"]}]}]},
        "scrape_configs": [{"job_name": "llm-monitor", "static_configs": [
            {"targets": [f"127.0.0.1:{worker_port}"]}]}],
    }  # fmt: skip
    path = tmp / f"prometheus-{name}.yml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.Popen(  # noqa: S603 - the Debian binary, our arguments
        [_which("prometheus"), f"--config.file={path}",
         f"--storage.tsdb.path={tmp / ('tsdb-' + name)}",
         f"--web.listen-address=127.0.0.1:{free_port()}"],  # fmt: skip
        stdout=subprocess.DEVNULL, stderr=(tmp / f"prometheus-{name}.log").open("wb"),
    )  # fmt: skip


def _start_alertmanager(
    name: str, profile: dict[str, str], receiver_url: str, tmp: Path
) -> tuple[subprocess.Popen[bytes], int]:
    config = yaml.safe_load(ALERTMANAGER.read_text())
    config["receivers"][0]["webhook_configs"][0]["url"] = f"{receiver_url}/alertmanager/{name}"
    timings = {k: v for k, v in profile.items() if k in ("group_wait", "group_interval")}
    config["route"].update(timings)
    for route in config["route"].get("routes", []):
        route.update(timings)
    path = tmp / f"alertmanager-{name}.yml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(  # noqa: S603 - the Debian binary, our arguments
        [_which("prometheus-alertmanager"), f"--config.file={path}",
         f"--storage.path={tmp / ('am-' + name)}", f"--web.listen-address=127.0.0.1:{port}",
         "--cluster.listen-address="],  # fmt: skip
        stdout=subprocess.DEVNULL, stderr=(tmp / f"alertmanager-{name}.log").open("wb"),
    )  # fmt: skip
    return process, port


def _which(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SystemExit(f"{name} not found. Fix: ./.ci/ensure-tools")
    return path


def _wait_ready(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} not ready after {timeout_s:.0f}s")


def _quantiles(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def run(n_incidents: int, spacing_s: float, settle_s: float) -> dict[str, Any]:
    policy = Policy()
    tmp = Path(tempfile.mkdtemp(prefix="llm-monitor-reaction-"))
    secret = secrets.token_hex(32)
    receiver = Receiver(Verifier(secret.encode()))
    receiver_url = receiver.serve()
    (tmp / "policy.yaml").write_text(yaml.safe_dump(
        {"cooldown_s": 0, "webhooks": {"rollback": [f"{receiver_url}/rollback"]}}))  # fmt: skip
    broker = start_broker(log_path=tmp / "broker.log")
    app_id = f"reaction-{uuid.uuid4().hex[:6]}"
    asyncio.run(ensure_topics(broker.bootstrap, pipeline_topics(KafkaSettings(), [app_id])))
    worker_port = free_port()
    pushed, pushed_port = _start_alertmanager("policy", PUSHED, receiver_url, tmp)
    processes: list[subprocess.Popen[bytes]] = [pushed]
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
           "LLM_MONITOR_DATA_DIR": str(tmp / "data"), "LLM_MONITOR_APP_ID": app_id,
           "LLM_MONITOR_METRICS__PORT": str(worker_port),
           "LLM_MONITOR_POLICY__FILE": str(tmp / "policy.yaml"),
           "LLM_MONITOR_POLICY__WEBHOOK_SECRET": secret,
           "LLM_MONITOR_POLICY__ALERTMANAGER__URLS": json.dumps(
               [f"http://127.0.0.1:{pushed_port}"])}  # fmt: skip
    (tmp / "data").mkdir()
    worker = start_worker(env, tmp / "worker.log")
    try:
        _wait_ready(f"http://127.0.0.1:{pushed_port}/-/ready")
        for name, profile in PROFILES.items():
            am, am_port = _start_alertmanager(name, profile, receiver_url, tmp)
            processes += [am, _start_prometheus(name, profile, worker_port, am_port, tmp)]
            _wait_ready(f"http://127.0.0.1:{am_port}/-/ready")
        _wait_ready(f"http://127.0.0.1:{worker_port}/health")
        time.sleep(8.0)  # consumer group joined
        incidents = [Incident(f"bench-{i:03d}-{uuid.uuid4().hex[:4]}") for i in range(n_incidents)]
        asyncio.run(_produce(broker.bootstrap, incidents, spacing_s))
        time.sleep(settle_s)  # the slowest path (production intervals) needs ~a minute
    finally:
        stop_worker(worker)
        for process in processes:
            process.terminate()
            process.wait(timeout=30)
        broker.stop()
        receiver.stop()
    policy_arrival: dict[str, float] = {}
    for d in receiver.deliveries:
        policy_arrival.setdefault(d.body["model"], d.received_at)
    alert_arrival: dict[str, dict[str, float]] = {name: {} for name in [*PROFILES, "policy"]}
    for at, path, payload in receiver.alerts:
        name = path.rsplit("/", 1)[-1]
        expected = INCIDENT_ALERT if name == "policy" else "LLMMonitorErrorRateHigh"
        for alert in payload.get("alerts", []):
            labels = alert.get("labels", {})
            if alert.get("status") == "firing" and labels.get("alertname") == expected:
                alert_arrival[name].setdefault(labels.get("model", ""), at)
    policy_times: list[float] = []
    pushed_times: list[float] = []
    baseline_times: dict[str, list[float]] = {name: [] for name in PROFILES}
    for incident in incidents:
        tip = incident.tip(True, policy.min_samples, policy.confidence)
        if tip is not None and incident.model in policy_arrival:
            policy_times.append(policy_arrival[incident.model] - tip)
        if tip is not None and incident.model in alert_arrival["policy"]:
            pushed_times.append(alert_arrival["policy"][incident.model] - tip)
        prom_tip = incident.tip(False, 50, policy.confidence)
        for name in PROFILES:
            if prom_tip is not None and incident.model in alert_arrival[name]:
                baseline_times[name].append(alert_arrival[name][incident.model] - prom_tip)
    p50, p99 = _quantiles(policy_times)
    a50, a99 = _quantiles(pushed_times)
    b50, b99 = _quantiles(baseline_times["production"])
    f50, f99 = _quantiles(baseline_times["fast"])
    shutil.rmtree(tmp, ignore_errors=True)
    return {
        "incidents": n_incidents,
        "caught": len(policy_times),
        "baseline_caught": len(baseline_times["production"]),
        "fast_baseline_caught": len(baseline_times["fast"]),
        "baseline_intervals": PROFILES["production"],
        "fast_baseline_intervals": PROFILES["fast"],
        "fast_baseline_p50_s": f50,
        "fast_baseline_p99_s": f99,
        "speedup_p50_vs_fast": (f50 / p50) if f50 and p50 else None,
        "p50_s": p50,
        "p99_s": p99,
        "alertmanager_caught": len(pushed_times),
        "alertmanager_intervals": PUSHED,
        "alertmanager_p50_s": a50,
        "alertmanager_p99_s": a99,
        "alertmanager_speedup_p50_vs_fast": (f50 / a50) if f50 and a50 else None,
        "baseline_p50_s": b50,
        "baseline_p99_s": b99,
        "speedup_p50": (b50 / p50) if b50 and p50 else None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--incidents", type=int, default=50)
    parser.add_argument("--spacing-s", type=float, default=1.0)
    parser.add_argument("--settle-s", type=float, default=75.0)
    parser.add_argument("--json", action="store_true", help="only the JSON line")
    args = parser.parse_args(argv)
    result = run(args.incidents, args.spacing_s, args.settle_s)
    if not args.json:
        for key, value in result.items():
            print(f"{key}: {value}", file=sys.stderr)  # noqa: T201 - CLI output
    print(json.dumps(result))  # noqa: T201 - CLI output


if __name__ == "__main__":
    main()
