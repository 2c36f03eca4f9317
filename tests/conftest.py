"""Shared fixtures: a real tansu broker per test, worker processes, metrics scraping."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from aiokafka import AIOKafkaConsumer, TopicPartition

from detectors.embedding import EmbeddingService
from monitor.config import KafkaSettings, Settings
from monitor.devtools.broker import BundledBroker, free_port, start_broker
from monitor.devtools.worker import metric_sum, scrape, start_worker, stop_worker
from monitor.ingest.events import Event, decode_event
from monitor.policy.receiver import Receiver
from monitor.policy.signing import Verifier
from streams.batches import group_reading
from streams.topics import ensure_topics, pipeline_topics

os.environ.setdefault("HF_HUB_OFFLINE", "1")

T = TypeVar("T")


def poll(read: Callable[[], T], timeout_s: float, interval_s: float = 0.25) -> T:
    """Call ``read`` until it returns something truthy or ``timeout_s`` passed: its last value.

    The sleep here is the polling interval, never a guess at how long something takes to land.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval_s)


def wait_until(
    predicate: Callable[[], object],
    what: str,
    timeout_s: float = 90.0,
    interval_s: float = 0.25,
    detail: Callable[[], str] | None = None,
) -> None:
    """Poll ``predicate`` until it holds; fail naming ``what`` (and ``detail()``) if it never does."""
    if not poll(predicate, timeout_s, interval_s):
        extra = f"\n{detail()}" if detail is not None else ""
        raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}{extra}")


def decoded_event(request_id: str, **fields: object) -> Event:
    """A valid event (required fields filled in) through the real decoder."""
    base = {"request_id": request_id, "timestamp": 1_700_000_000_000, "model": "m",
            "model_version": "v"}  # fmt: skip
    return decode_event(json.dumps(base | fields).encode())


@pytest.fixture(scope="session")
def cpu_embeddings() -> Iterator[EmbeddingService]:
    """The default model on CPU, loaded once for every detector test."""
    service = EmbeddingService(device="cpu").start()
    yield service
    service.close()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BundledBroker]:
    """A fresh tansu broker on a free loopback port (memory storage), stopped afterwards."""
    running = start_broker(log_path=tmp_path / "broker.log")
    try:
        yield running
    finally:
        running.stop()


@contextmanager
def serving_receiver(secret: bytes) -> Iterator[tuple[Receiver, str]]:
    """A webhook receiver on 127.0.0.1 that checks signatures with ``secret``, and its URL."""
    receiver = Receiver(Verifier(secret))
    url = receiver.serve()
    try:
        yield receiver, url
    finally:
        receiver.stop()


@dataclass
class WorkerHarness:
    """Starts `llm-monitor worker` processes against one broker and one data dir."""

    bootstrap: str
    data_dir: Path
    app_id: str = field(default_factory=lambda: f"test-{uuid.uuid4().hex[:8]}")
    port: int = field(default_factory=free_port)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    env_overrides: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        asyncio.run(ensure_topics(self.bootstrap, pipeline_topics(KafkaSettings(), [self.app_id])))

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def use_policy(self, policy: dict[str, Any], *, secret: str, token: str | None = None) -> None:
        """Run the policy role on ``policy`` (written into the data dir), signing webhooks with
        ``secret`` and, given a ``token``, guarding its API with it."""
        path = self.data_dir / "policy.yaml"
        path.write_text(yaml.safe_dump(policy))
        self.env_overrides.update(
            {"LLM_MONITOR_POLICY__FILE": str(path), "LLM_MONITOR_POLICY__WEBHOOK_SECRET": secret}
        )
        if token is not None:
            self.env_overrides["LLM_MONITOR_POLICY__API_TOKEN"] = token

    def start(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env.update({
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "LLM_MONITOR_DATA_DIR": str(self.data_dir),
            "LLM_MONITOR_METRICS__PORT": str(self.port),
            "LLM_MONITOR_APP_ID": self.app_id,
            "LLM_MONITOR_PIPELINE__WINDOW_S": "60",
            **self.env_overrides,
        })  # fmt: skip
        process = start_worker(env, self.data_dir / "worker.log")
        self.processes.append(process)
        return process

    def ready(self) -> bool:
        """The worker answers /health, owns partitions and has restored its tables."""
        try:
            url = f"http://127.0.0.1:{self.port}/health"
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
                health = json.loads(response.read())
                return int(health["assigned_partitions"]) > 0 and bool(health["recovered"])
        except OSError:
            return False

    def metric(self, name: str, **labels: str) -> float:
        try:
            return metric_sum(scrape(self.metrics_url), name, **labels)
        except OSError:
            return -1.0

    @property
    def group(self) -> str:
        """The consumer group of these workers: one per role set (streams/app.py)."""
        from streams.app import app_id_for

        roles = json.loads(self.env_overrides.get("LLM_MONITOR_ROLES", '["all"]'))
        return app_id_for(Settings(app_id=self.app_id, roles=roles))

    def uncommitted(self, topics: tuple[str, ...] = ("llm.events", "llm.scored")) -> int:
        """Messages on ``topics`` beyond the worker group's committed offsets, asked of the broker."""
        return asyncio.run(group_lag(self.bootstrap, self.group, topics))

    def log_tail(self, chars: int = 3000) -> str:
        path = self.data_dir / "worker.log"
        return path.read_text()[-chars:] if path.exists() else "(no worker log)"

    def wait_for(
        self, predicate: Callable[[], object], timeout_s: float = 90.0, what: str = "condition"
    ) -> None:
        """Poll ``predicate``; fail at once if a worker dies, with the log tail on a timeout."""

        def alive_and_done() -> object:
            for process in self.processes:
                if process.poll() not in (None, 0, -9, -15):
                    raise AssertionError(f"worker died ({process.returncode}):\n{self.log_tail()}")
            return predicate()

        wait_until(
            alive_and_done, what, timeout_s,
            detail=lambda: f"worker log tail:\n{self.log_tail()}",
        )  # fmt: skip

    def wait_windows_stored(self, timeout_s: float = 90.0) -> None:
        """Every changed window is published (the aggregator's pending gauge is zero) and every
        published snapshot is stored. Call it once the aggregator has merged every event it is
        waiting for."""

        def published_and_stored() -> bool:
            samples = scrape(self.metrics_url)
            pending = metric_sum(samples, "llm_monitor_windows_pending")
            emitted = metric_sum(samples, "llm_monitor_windows_emitted_total")
            stored = metric_sum(samples, "llm_monitor_sink_rows_total", table="windows")
            return pending == 0 and stored >= emitted > 0

        self.wait_for(published_and_stored, timeout_s, "every changed window published and stored")

    def stop_all(self) -> None:
        for process in self.processes:
            stop_worker(process)


async def log_ends(bootstrap: str, topics: tuple[str, ...]) -> dict[TopicPartition, int]:
    """Each partition's true end offset, found by reading it: tansu's ListOffsets and fetch
    high watermarks can trail the log by the last record batch, so they cannot be trusted."""
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await reader.start()
    try:
        await reader.topics()  # refresh metadata for every topic
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in sorted(reader.partitions_for_topic(topic) or ())
        ]
        reader.assign(partitions)
        await reader.seek_to_beginning(*partitions)
        ends = dict.fromkeys(partitions, 0)
        while batches := await reader.getmany(timeout_ms=1000, max_records=10_000):
            for tp, records in batches.items():
                ends[tp] = max(ends[tp], records[-1].offset + 1)
        return ends
    finally:
        await reader.stop()


async def group_lag(bootstrap: str, group: str, topics: tuple[str, ...]) -> int:
    """Records on ``topics`` beyond the committed offsets of the app ``group`` (the events
    topic is read by its batch consumer's group, streams/batches.py)."""
    ends = await log_ends(bootstrap, topics)
    lag = 0
    for reader_group in {group_reading(group, tp.topic) for tp in ends}:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=reader_group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            for tp, end in ends.items():
                if group_reading(group, tp.topic) == reader_group:
                    lag += end - ((await consumer.committed(tp)) or 0)
        finally:
            await consumer.stop()
    return lag


@pytest.fixture
def workers(broker: BundledBroker, tmp_path: Path) -> Iterator[WorkerHarness]:
    harness = WorkerHarness(broker.bootstrap, tmp_path / "data")
    harness.data_dir.mkdir()
    try:
        yield harness
    finally:
        harness.stop_all()
