"""What the fault cases share: sizes by mode, figures, role processes, exact offsets, a paced
producer, a real Prometheus evaluating the shipped alert rules.

Sizes: ``LLM_MONITOR_FAULTS=long`` (``make faults``) runs the full loads; unset or ``short``
runs the small ones inside the default ``pytest`` run. Every case records its figure with
``record_figure``: printed at the end of the run and, when ``LLM_MONITOR_FAULTS_OUT`` names a
file, appended to it as one JSON line per figure.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from monitor.devtools.broker import free_port
from monitor.devtools.worker import stop_worker
from monitor.errors import SchemaError
from monitor.ingest.events import Event, decode_event
from streams.batches import group_reading
from tests.conftest import WorkerHarness, wait_until
from tests.e2e.test_pipeline_e2e import query

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/rules/llm-monitor.rules.yml"

MODE = os.environ.get("LLM_MONITOR_FAULTS", "short").strip().lower() or "short"
if MODE not in ("short", "long"):
    raise ValueError(f"LLM_MONITOR_FAULTS={MODE!r}: use 'short' (default) or 'long'")
LONG = MODE == "long"

EVENTS = "llm.events"
# The topics each role reads (the embed role is off in these cases: no semantic detector).
ROLE_INPUTS: dict[str, tuple[str, ...]] = {
    "score": (EVENTS,),
    "aggregate": ("llm.partials",),
    "sink": ("llm.scored", "llm.events.dlq", "llm.windows", "llm.policy"),
    "policy": ("llm.windows", "llm.control", "llm.judge", "llm.actions"),
}
ALL_INPUTS = tuple(dict.fromkeys(t for topics in ROLE_INPUTS.values() for t in topics))
# Short sessions, so that a SIGKILLed member leaves its group in seconds, not the default 8 s.
FAST_REJOIN = {
    "LLM_MONITOR_KAFKA__SESSION_TIMEOUT_S": "3",
    "LLM_MONITOR_KAFKA__HEARTBEAT_INTERVAL_S": "0.5",
    "LLM_MONITOR_KAFKA__REBALANCE_TIMEOUT_S": "3",
}
# Exact windows, as in tests/e2e/test_windows_exact_e2e.py.
WINDOWS = {
    "LLM_MONITOR_PIPELINE__WINDOW_S": "10",
    "LLM_MONITOR_PIPELINE__ALLOWED_LATENESS_S": "0",
    "LLM_MONITOR_PIPELINE__BATCH_SIZE": "200",
}


def size(short: T, long: T) -> T:
    """The short or the long value of a load, by ``LLM_MONITOR_FAULTS``."""
    return long if LONG else short


FIGURES: list[dict[str, Any]] = []


def record_figure(case: str, **values: Any) -> None:
    """Keep a case's figure: printed now and at the end of the run, and appended to
    ``$LLM_MONITOR_FAULTS_OUT`` (JSON lines) when that is set."""
    entry = {"case": case, "mode": MODE, "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
             "load1": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(), **values}  # fmt: skip
    FIGURES.append(entry)
    line = json.dumps(entry, sort_keys=False, default=str)
    print(f"FAULT-FIGURE {line}", flush=True)
    out = os.environ.get("LLM_MONITOR_FAULTS_OUT")
    if out:
        with open(out, "a", encoding="utf-8") as file:
            file.write(line + "\n")


def summary(values: Sequence[float]) -> dict[str, float]:
    """min / median / max of a list of seconds, rounded."""
    ordered = sorted(values)
    if not ordered:
        return {}
    return {"min_s": round(ordered[0], 1), "median_s": round(ordered[len(ordered) // 2], 1),
            "max_s": round(ordered[-1], 1)}  # fmt: skip


def valid_events(records: Sequence[tuple[bytes, bytes]]) -> list[Event]:
    """Every record the decoder accepts (the others go to the DLQ), decoded."""
    events = []
    for _, value in records:
        try:
            events.append(decode_event(value))
        except SchemaError:
            continue
    return events


def stored_ids(harness: WorkerHarness) -> set[str]:
    """request_id of every row of ``events`` FINAL (query once the sink has stopped)."""
    rows = query(harness, "SELECT request_id FROM llm_monitor.events FINAL")
    return {str(row["request_id"]) for row in rows}


def kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL: no graceful shutdown, no final commit, no spool."""
    process.send_signal(signal.SIGKILL)
    process.wait()


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid``, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


# --- offsets: exact log ends and committed offsets, asked of the broker --------------------

_MAX_RECORDS = 20_000


class Offsets:
    """Exact log ends and a group's committed offsets.

    tansu's ListOffsets and fetch high watermarks can trail the log by its last record batch
    (tests/conftest.py, ``log_ends``), so ends are found by reading the records; this reads
    each partition from where the previous call stopped, so asking often stays cheap.
    """

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self._ends: dict[TopicPartition, int] = {}

    def ends(self, topics: Sequence[str]) -> dict[TopicPartition, int]:
        return asyncio.run(self._read_ends(topics))

    async def _read_ends(self, topics: Sequence[str]) -> dict[TopicPartition, int]:
        reader = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await reader.start()
        try:
            await reader.topics()
            partitions = [
                TopicPartition(topic, p)
                for topic in topics
                for p in sorted(reader.partitions_for_topic(topic) or ())
            ]
            reader.assign(partitions)
            for tp in partitions:
                reader.seek(tp, self._ends.get(tp, 0))
            ends = {tp: self._ends.get(tp, 0) for tp in partitions}
            # Read to the end as it was when this call began: until a poll comes back empty,
            # or holds only records written since (topics written all the time never pause).
            started_ms = time.time() * 1000
            while batches := await reader.getmany(timeout_ms=500, max_records=_MAX_RECORDS):
                count = 0
                newest_first = started_ms
                for tp, records in batches.items():
                    ends[tp] = max(ends[tp], records[-1].offset + 1)
                    count += len(records)
                    newest_first = min(newest_first, records[0].timestamp)
                if count < _MAX_RECORDS and newest_first >= started_ms:
                    break
            self._ends.update(ends)
            return ends
        finally:
            await reader.stop()

    def committed(
        self, group: str, partitions: Sequence[TopicPartition]
    ) -> dict[TopicPartition, int]:
        return asyncio.run(self._committed(group, partitions))

    async def _committed(
        self, group: str, partitions: Sequence[TopicPartition]
    ) -> dict[TopicPartition, int]:
        """Committed offsets of app ``group``, each asked of the group that reads its topic
        (the events topic's batch consumer has its own, streams/batches.py)."""
        done: dict[TopicPartition, int] = {}
        for reader in {group_reading(group, tp.topic) for tp in partitions}:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap, group_id=reader, enable_auto_commit=False
            )
            await consumer.start()
            try:
                for tp in partitions:
                    if group_reading(group, tp.topic) == reader:
                        done[tp] = (await consumer.committed(tp)) or 0
            finally:
                await consumer.stop()
        return done

    def behind(self, group: str, targets: dict[TopicPartition, int]) -> int:
        """Records below ``targets`` the group has not committed yet."""
        done = self.committed(group, list(targets))
        return sum(max(0, end - done[tp]) for tp, end in targets.items())

    def lag(self, group: str, topics: Sequence[str]) -> int:
        """Records on ``topics`` beyond the group's committed offsets."""
        return self.behind(group, self.ends(topics))

    def wait_caught_up(
        self,
        harness: WorkerHarness,
        targets: dict[TopicPartition, int],
        timeout_s: float,
        what: str,
    ) -> float:
        """Wait until ``harness``'s group committed every offset below ``targets``; returns
        when (time.monotonic())."""
        harness.wait_for(lambda: self.behind(harness.group, targets) == 0, timeout_s, what)
        return time.monotonic()


# --- role processes --------------------------------------------------------------------------


@dataclass
class Cluster:
    """Worker processes of one pipeline (one app id), each running some roles, each with its
    own metrics port and data dir; only the process with the sink role opens chdb."""

    bootstrap: str
    root: Path
    env: dict[str, str] = field(default_factory=dict)
    app_id: str = field(default_factory=lambda: f"fault-{os.urandom(4).hex()}")
    members: dict[str, WorkerHarness] = field(default_factory=dict)

    def add(self, name: str, roles: Sequence[str], **env: str) -> WorkerHarness:
        data_dir = self.root / name
        data_dir.mkdir(parents=True, exist_ok=True)
        overrides = {**self.env, "LLM_MONITOR_ROLES": json.dumps(list(roles)), **env}
        harness = WorkerHarness(
            self.bootstrap, data_dir, app_id=self.app_id, env_overrides=overrides
        )
        self.members[name] = harness
        return harness

    def start_all(self, timeout_s: float = 120.0) -> None:
        for harness in self.members.values():
            harness.start()
        for name, harness in self.members.items():
            harness.wait_for(harness.ready, timeout_s, f"the {name} worker ready")

    def check_alive(self) -> None:
        """Fail if any current process died (SIGKILLed ones we replaced are not current)."""
        for name, harness in self.members.items():
            process = harness.processes[-1]
            if process.poll() is not None:
                raise AssertionError(
                    f"the {name} worker died ({process.returncode}):\n{harness.log_tail()}"
                )

    def stop_all(self) -> None:
        for harness in self.members.values():
            harness.stop_all()


# --- a paced producer ---------------------------------------------------------------------


class PacedProducer(threading.Thread):
    """Sends ``records`` to the events topic at ``rate`` records/s from a thread, one
    producer for the whole run; ``sent`` counts the acknowledged ones."""

    def __init__(
        self, bootstrap: str, records: Sequence[tuple[bytes, bytes]], rate: float, step: int = 100
    ) -> None:
        super().__init__(daemon=True)
        self.bootstrap = bootstrap
        self.records = records
        self.rate = rate
        self.step = step
        self.sent = 0
        self.error: BaseException | None = None
        self.finished_at: float | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._produce())
        except BaseException as exc:  # handed to finish()
            self.error = exc
        self.finished_at = time.monotonic()

    async def _produce(self) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, linger_ms=5, max_request_size=4 * 1_048_576,
            request_timeout_ms=120_000,
        )  # fmt: skip
        await producer.start()
        try:
            started = time.monotonic()
            for i in range(0, len(self.records), self.step):
                chunk = self.records[i : i + self.step]
                futures = [
                    await producer.send(EVENTS, value=value, key=key) for key, value in chunk
                ]
                await asyncio.gather(*futures)
                self.sent += len(chunk)
                # Pacing on purpose, not waiting for anything: a steady offered load.
                delay = started + self.sent / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
        finally:
            await producer.stop()

    def finish(self, timeout_s: float) -> None:
        """Join; re-raise what the producer hit."""
        self.join(timeout_s)
        if self.is_alive():
            raise AssertionError(f"the producer did not finish within {timeout_s:g}s")
        if self.error is not None:
            raise AssertionError(f"the producer failed: {self.error!r}") from self.error


def wait_sent(producer: PacedProducer, count: int, timeout_s: float = 600.0) -> None:
    wait_until(lambda: producer.sent >= count or producer.error, f"{count} records sent",
               timeout_s)  # fmt: skip
    if producer.error is not None:
        raise AssertionError(f"the producer failed: {producer.error!r}")


# --- a real Prometheus evaluating the shipped alert rules ---------------------------------


@dataclass
class Prometheus:
    """``prometheus`` on loopback scraping the workers every second and evaluating
    deploy/prometheus/rules/llm-monitor.rules.yml every second."""

    url: str
    process: subprocess.Popen[bytes]

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/query?query={urllib.parse.quote(promql)}"
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
            body = json.loads(response.read())
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def alert_states(self, alertname: str) -> set[str]:
        """The states (pending, firing) the rule has now, for any label set."""
        try:
            rows = self.query(f'ALERTS{{alertname="{alertname}"}}')
        except OSError:
            return set()
        return {row["metric"]["alertstate"] for row in rows}

    def stop(self) -> None:
        stop_worker(self.process, timeout_s=15)


def start_prometheus(targets: Sequence[str], workdir: Path) -> Prometheus:
    """Start Prometheus scraping ``targets`` (host:port) as job llm-monitor; skip the test if
    the binary is missing (./.ci/ensure-tools installs it)."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not found. Fix: run ./.ci/ensure-tools (or `make test`)")
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": "llm-monitor", "static_configs": [{"targets": list(targets)}]}
        ],
    }
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(
        [binary, f"--config.file={path}", f"--storage.tsdb.path={workdir / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],  # fmt: skip
        stdout=subprocess.DEVNULL, stderr=(workdir / "prometheus.log").open("wb"),
    )  # fmt: skip
    prometheus = Prometheus(f"http://127.0.0.1:{port}", process)

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{prometheus.url}/-/ready", timeout=1) as r:  # noqa: S310
                return int(r.status) == 200
        except OSError:
            return process.poll() is not None  # stop polling a dead process

    wait_until(ready, "prometheus ready", 30)
    if process.poll() is not None:
        raise AssertionError((workdir / "prometheus.log").read_text()[-3000:])
    return prometheus
