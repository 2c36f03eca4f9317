"""Shared fixtures: a real tansu broker per test, worker processes, metrics scraping."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from monitor.broker import BundledBroker, ensure_topics, free_port, pipeline_topics, start_broker
from monitor.config import KafkaSettings
from monitor.demo import metric_sum, scrape, start_worker, stop_worker

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BundledBroker]:
    """A fresh tansu broker on a free loopback port (memory storage), stopped afterwards."""
    running = start_broker(log_path=tmp_path / "broker.log")
    try:
        yield running
    finally:
        running.stop()


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

    def metric(self, name: str, **labels: str) -> float:
        try:
            return metric_sum(scrape(self.metrics_url), name, **labels)
        except OSError:
            return -1.0

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for process in self.processes:
                if process.poll() not in (None, 0, -9, -15):
                    log = (self.data_dir / "worker.log").read_text()[-3000:]
                    raise AssertionError(f"worker died ({process.returncode}):\n{log}")
            if predicate():
                return
            time.sleep(0.25)
        log = (self.data_dir / "worker.log").read_text()[-3000:]
        raise AssertionError(f"condition not met within {timeout_s}s; worker log tail:\n{log}")

    def stop_all(self) -> None:
        for process in self.processes:
            stop_worker(process)


@pytest.fixture
def workers(broker: BundledBroker, tmp_path: Path) -> Iterator[WorkerHarness]:
    harness = WorkerHarness(broker.bootstrap, tmp_path / "data")
    harness.data_dir.mkdir()
    try:
        yield harness
    finally:
        harness.stop_all()
