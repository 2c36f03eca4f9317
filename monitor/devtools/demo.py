"""`llm-monitor demo`: bundled broker, one worker, generated traffic, a summary at the end.

The worker runs as a child process (`llm-monitor worker`), exactly as in production; the demo
only produces traffic, watches the worker's /metrics until every event is accounted for
(stored or dead-lettered), stops it, and then reads ClickHouse to print the summary.

With an Alertmanager binary on PATH, the demo also runs one on loopback (the shipped config,
its webhooks pointed at the demo's receiver, grouping timings shortened) and has the policy
role push each incident to it; the summary shows the notifications it sent.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from rich.console import Console
from rich.progress import Progress

from monitor.client import produce
from monitor.config import Settings, ensure_data_dir
from monitor.devtools.alertmanager import (
    AlertmanagerError,
    LocalAlertmanager,
    alertmanager_binary,
    load_config,
    local_config,
    start_alertmanager,
)
from monitor.devtools.broker import BundledBroker, free_port, start_broker
from monitor.devtools.worker import metric_sum, scrape, start_worker, stop_worker
from monitor.errors import MonitorError
from monitor.ingest.decode import ArrivalBounds, RawMessage, decode_batch
from monitor.ingest.formats import InputFormat
from monitor.ingest.genai_mapping import GenAiMapper
from monitor.ingest.otlp import expand_records
from monitor.judge.loopback import LoopbackJudge
from monitor.policy.alertmanager import ALERTNAME
from monitor.policy.receiver import Receiver
from monitor.policy.signing import Verifier
from monitor.storage.sink import EVIDENCE_DELAY_S
from streams.topics import ensure_topics, pipeline_topics

console = Console()


# The demo turns every semantic detector on (the library defaults keep them off so a CPU-only
# worker starts in a second); a variable the user set wins.
DEMO_DETECTORS = {
    f"LLM_MONITOR_DETECTORS__{name}__ENABLED": "true"
    for name in ("TOXICITY", "HALLUCINATION", "INJECTION", "BIAS", "DRIFT")
}


@dataclass(frozen=True)
class Progressed:
    events_stored: float
    dead_letters_stored: float
    aggregated: float
    embedded: float


def progress_of(url: str) -> Progressed:
    samples = scrape(url)
    return Progressed(
        events_stored=metric_sum(samples, "llm_monitor_sink_rows_total", table="events"),
        dead_letters_stored=metric_sum(
            samples, "llm_monitor_sink_rows_total", table="dead_letters"
        ),
        aggregated=metric_sum(samples, "llm_monitor_aggregate_events_total"),
        embedded=metric_sum(samples, "llm_monitor_embed_batch_events_sum"),
    )


JUDGE_ENABLED_ENV = "LLM_MONITOR_JUDGE__ENABLED"
# Pairs a judge window needs before its gate is a verdict: the demo judge's and its policy's.
DEMO_JUDGE_MIN_PAIRS = 10


def start_demo_judge(env: dict[str, str]) -> LoopbackJudge | None:
    """A loopback LLM judge for the demo (unless the user configured a judge): it grades a
    tenth of the events and compares canary and stable answers to the same prompt. It always
    prefers the first answer shown, so the position swap has something to remove; between
    answers it prefers the one without ``wrong`` in it, so the policy's
    ``rollback.judge_win_rate`` fires only for a canary whose answers are worse."""
    if JUDGE_ENABLED_ENV in os.environ:
        return None
    judge = LoopbackJudge("demo-judge", first_bias=1.0)
    url = judge.start_in_thread()
    env.update({
        JUDGE_ENABLED_ENV: "true",
        "LLM_MONITOR_JUDGE__ENDPOINT": f"{url}/v1",
        "LLM_MONITOR_JUDGE__MODEL": "loopback-judge",
        "LLM_MONITOR_JUDGE__SAMPLE_RATE": "0.1",
        "LLM_MONITOR_JUDGE__MIN_PAIRS": str(DEMO_JUDGE_MIN_PAIRS),
        "LLM_MONITOR_JUDGE__WINDOW_S": "120",
        "LLM_MONITOR_JUDGE__LATENESS_S": "0",
    })  # fmt: skip
    console.print(f"[bold]judge[/] loopback LLM judge on {url} (position-biased on purpose)")
    return judge


def worker_env(
    settings: Settings, bootstrap: str, port: int, *, semantic: bool = True
) -> dict[str, str]:
    env = dict(os.environ)
    if semantic:
        env.update({k: v for k, v in DEMO_DETECTORS.items() if k not in os.environ})
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "LLM_MONITOR_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "LLM_MONITOR_DATA_DIR": str(settings.data_dir),
            "LLM_MONITOR_METRICS__PORT": str(port),
            "LLM_MONITOR_APP_ID": settings.app_id,
            "HF_HUB_OFFLINE": "1",
        }
    )
    return env


@dataclass
class DemoPolicy:
    """A local signed-webhook receiver and the policy file that points the worker at it."""

    receiver: Receiver
    env: dict[str, str]
    api_token: str
    base: str  # the receiver's URL


def start_demo_policy(data_dir: Path) -> DemoPolicy:
    """Fresh secrets per run (never printed), a receiver on loopback, a policy file for it."""
    secret, token = secrets.token_hex(32), secrets.token_hex(24)
    receiver = Receiver(Verifier(secret.encode()))
    base = receiver.serve()
    policy = {
        "cooldown_s": 0,  # one action per rule, so every seeded incident shows its own
        "webhooks": {name: [f"{base}/{name}"] for name in ("rollback", "kill", "resume")},
        # the promotion gate and rollback.judge_win_rate need as many pairs as the demo judge
        "rollback": {"judge_win_rate": {"min_pairs": DEMO_JUDGE_MIN_PAIRS}},
    }
    path = data_dir / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    env = {
        "LLM_MONITOR_POLICY__FILE": str(path),
        "LLM_MONITOR_POLICY__WEBHOOK_SECRET": secret,
        "LLM_MONITOR_POLICY__API_TOKEN": token,
    }
    return DemoPolicy(receiver, env, token, base)


ALERTMANAGER_URLS_ENV = "LLM_MONITOR_POLICY__ALERTMANAGER__URLS"


def start_demo_alertmanager(
    data_dir: Path, logs: Path, receiver_base: str
) -> LocalAlertmanager | None:
    """An Alertmanager on loopback notifying the demo's receiver (its /alertmanager path),
    or None, with a one-line warning, when there is no binary or it does not start."""
    binary = alertmanager_binary()
    if binary is None:
        console.print(
            "[yellow]alertmanager[/] not found (prometheus-alertmanager or alertmanager on "
            "PATH): incidents are not pushed as alerts in this run"
        )
        return None
    try:
        config = local_config(load_config(), f"{receiver_base}/alertmanager")
        alertmanager = start_alertmanager(
            config,
            data_dir / "alertmanager.yml",
            data_dir / "alertmanager",
            logs / "alertmanager.log",
            binary=binary,
        )
    except (AlertmanagerError, OSError) as exc:
        console.print(f"[yellow]alertmanager[/] did not start, going on without it: {exc}")
        return None
    console.print(f"[bold]alertmanager[/] {alertmanager.url} (pid {alertmanager.process.pid})")
    return alertmanager


def wait_for_notifications(demo: DemoPolicy, timeout_s: float) -> None:
    """Alertmanager has notified the receiver of every incident a signed action named."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        wanted = {str(d.body.get("incident_id") or "") for d in demo.receiver.deliveries} - {""}
        notified = {
            alert.get("labels", {}).get("incident_id")
            for _, _, payload in list(demo.receiver.alerts)
            for alert in payload.get("alerts", [])
            if alert.get("labels", {}).get("alertname") == ALERTNAME
        }
        if wanted <= notified:
            return
        time.sleep(0.2)


def wait_for_actions(demo: DemoPolicy, timeout_s: float) -> None:
    """The error storm's rollback and the PII leak's kill reach the receiver (or time out)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        seen = {d.event for d in demo.receiver.deliveries}
        if {"rollback", "kill"} <= seen:
            return
        time.sleep(0.2)


PACED_CHUNK = 1_000
PACED_LEAD = 2_000  # events the embed role may be behind before the next chunk is sent


def produce_paced(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], url: str,
    worker: subprocess.Popen[bytes], *, semantic: bool,
) -> int:  # fmt: skip
    """Send the records; with semantic detectors on, in chunks no faster than the embed role
    scores them, as live traffic arrives over time: sent all at once, the cheap path (and the
    kill switch it engages) would run minutes ahead of the semantic evidence on a CPU."""
    if not semantic:
        return asyncio.run(produce(bootstrap, topic, records))
    sent = 0
    for start in range(0, len(records), PACED_CHUNK):
        while sent > PACED_LEAD:
            if worker.poll() is not None:
                raise MonitorError(f"worker exited with code {worker.returncode}; see its log")
            try:
                embedded = progress_of(url).embedded
            except OSError:
                embedded = 0.0
            if embedded >= 0.9 * (sent - PACED_LEAD):  # ~1 % of records are malformed
                break
            time.sleep(0.25)
        sent += asyncio.run(produce(bootstrap, topic, records[start : start + PACED_CHUNK]))
    return sent


def wait_until(
    url: str, expected_events: int, expected_dead: int, timeout_s: float,
    worker: subprocess.Popen[bytes], *, semantic: bool = True,
) -> Progressed:  # fmt: skip
    """Poll /metrics until every event is stored or dead-lettered, windows have merged them
    and (with semantic detectors on) the embed role has scored them."""
    deadline = time.monotonic() + timeout_s
    last = Progressed(0, 0, 0, 0)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("events accounted for", total=expected_events + expected_dead)
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                raise MonitorError(f"worker exited with code {worker.returncode}; see its log")
            try:
                last = progress_of(url)
            except OSError:
                time.sleep(0.5)
                continue
            bar.update(task, completed=last.events_stored + last.dead_letters_stored)
            if (
                last.events_stored >= expected_events
                and last.dead_letters_stored >= expected_dead
                and last.aggregated >= expected_events
                and (not semantic or last.embedded >= expected_events)
            ):
                return last
            time.sleep(0.25)
    raise MonitorError(
        f"timed out after {timeout_s:.0f}s: stored {last.events_stored:.0f}/{expected_events} "
        f"events and {last.dead_letters_stored:.0f}/{expected_dead} dead letters"
    )


def expected_outcome(
    settings: Settings,
    records: list[tuple[bytes, bytes]],
    input_format: InputFormat = InputFormat.EVENTS,
) -> tuple[int, int]:
    """How many records the worker will store as events and as dead letters: decoded with the
    worker's rules (size, schema, event time within the configured bounds of now). OTLP
    records count one event per GenAI span, and a dead letter per record or span refused."""
    spans = input_format is InputFormat.OTLP_JSON
    topic = settings.kafka.otlp_spans_topic if spans else settings.kafka.events_topic
    messages = [
        RawMessage(value, key, topic, 0, offset, 0) for offset, (key, value) in enumerate(records)
    ]
    refused = 0
    if spans:
        batch = expand_records(messages, GenAiMapper(settings.otlp.mapping))
        messages, refused = batch.messages, len(batch.dead_letters)
    decoded = decode_batch(
        messages,
        max_bytes=settings.pipeline.max_event_bytes,
        now_ms=lambda: time.time_ns() // 1_000_000,
        bounds=ArrivalBounds.of(settings.pipeline),
    )
    return len(decoded.events), len(decoded.dead_letters) + refused


def set_previous_database_aside(settings: Settings) -> Path | None:
    """Each demo reports on its own run: the default embedded database a previous demo left in
    the data directory moves to ``chdb.previous`` (replacing an older one), so its decisions
    and incidents cannot mix with this run's. A configured ``storage.dsn`` is never touched."""
    if settings.storage.dsn:
        return None
    current = settings.data_dir / "chdb"
    if not current.exists():
        return None
    previous = settings.data_dir / "chdb.previous"
    shutil.rmtree(previous, ignore_errors=True)
    current.rename(previous)
    return previous


def run_demo(
    settings: Settings,
    records: list[tuple[bytes, bytes]],
    *,
    timeout_s: float = 300.0,
    semantic: bool = True,
    input_format: InputFormat = InputFormat.EVENTS,
) -> None:
    """Run the whole demo; raises MonitorError when something is not accounted for. OTLP
    records go to the spans topic, through the same path as the Collector's."""
    from monitor.devtools.report import print_actions, print_judge, print_summary

    topic = settings.kafka.events_topic
    if input_format is InputFormat.OTLP_JSON:
        topic = settings.kafka.otlp_spans_topic
        if not topic:
            raise MonitorError(
                "kafka.otlp_spans_topic is empty, so span ingest is off. Fix: unset "
                "LLM_MONITOR_KAFKA__OTLP_SPANS_TOPIC (default otlp_spans) to read OTLP input."
            )
    expected_events, expected_dead = expected_outcome(settings, records, input_format)
    ensure_data_dir(settings)
    previous = set_previous_database_aside(settings)
    if previous is not None:
        console.print(f"[bold]database[/] the previous demo's moved to {previous} (query it "
                      f"with LLM_MONITOR_STORAGE__DSN=chdb://{previous.resolve()})")  # fmt: skip
    logs = settings.data_dir / "logs"
    logs.mkdir(exist_ok=True)
    broker: BundledBroker | None = None
    bootstrap = settings.kafka.bootstrap_servers
    if not bootstrap:
        broker = start_broker(log_path=logs / "broker.log")
        bootstrap = broker.bootstrap
        console.print(f"[bold]broker[/] bundled tansu on {bootstrap} (memory storage)")
    else:
        console.print(f"[bold]broker[/] {bootstrap}")
    port = free_port()
    worker = None
    alertmanager: LocalAlertmanager | None = None
    judge: LoopbackJudge | None = None
    demo_policy = start_demo_policy(settings.data_dir)
    try:
        asyncio.run(ensure_topics(bootstrap, pipeline_topics(settings.kafka, [settings.app_id])))
        env = worker_env(settings, bootstrap, port, semantic=semantic)
        env.update({k: v for k, v in demo_policy.env.items() if k not in os.environ})
        if ALERTMANAGER_URLS_ENV in os.environ:  # the user's own Alertmanager wins
            console.print(f"[bold]alertmanager[/] {os.environ[ALERTMANAGER_URLS_ENV]} (set)")
        else:
            alertmanager = start_demo_alertmanager(settings.data_dir, logs, demo_policy.base)
            if alertmanager is not None:
                env[ALERTMANAGER_URLS_ENV] = json.dumps([alertmanager.url])
        judge = start_demo_judge(env)
        semantic = any(env.get(k, "").lower() in ("1", "true", "yes") for k in DEMO_DETECTORS)
        worker = start_worker(env, logs / "worker.log")
        console.print(f"[bold]worker[/] pid {worker.pid}, metrics http://127.0.0.1:{port}/metrics")
        started = time.monotonic()
        url = f"http://127.0.0.1:{port}/metrics"
        sent = produce_paced(bootstrap, topic, records, url, worker, semantic=semantic)
        console.print(
            f"[bold]traffic[/] produced {sent} records in {time.monotonic() - started:.1f}s"
        )
        wait_until(url, expected_events, expected_dead, timeout_s, worker, semantic=semantic)
        elapsed = time.monotonic() - started
        wait_for_actions(demo_policy, timeout_s=15.0)
        if alertmanager is not None:
            wait_for_notifications(demo_policy, timeout_s=10.0)
        time.sleep(2.0)  # last findings and window snapshots: emitted every 0.25 s, then inserted
        final_metrics = scrape(f"http://127.0.0.1:{port}/metrics")
        console.print(f"[bold]done[/] all {sent} records accounted for in {elapsed:.1f}s")
        time.sleep(EVIDENCE_DELAY_S)  # incidents' evidence is copied this long after they open
    finally:
        if worker is not None:
            stop_worker(worker)
        if alertmanager is not None:
            alertmanager.stop()
        if judge is not None:
            judge.stop_thread()
        if broker is not None:
            broker.stop()
        demo_policy.receiver.stop()
    print_summary(settings, final_metrics, sent, elapsed)
    print_actions(
        settings, demo_policy.receiver, alertmanager=alertmanager.url if alertmanager else None
    )
    print_judge(settings)
