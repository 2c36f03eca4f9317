"""A real Alertmanager on loopback, for the demo, tests and benchmarks.

The shipped config (deploy/alertmanager/alertmanager.yml) with every webhook receiver pointed
at a local receiver (``Receiver``'s ``/alertmanager`` path) and, optionally, the grouping
timings of every route shortened, so a pushed incident is notified within a second; run with
``--cluster.listen-address=`` (no clustering) and a web port on 127.0.0.1.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from monitor.devtools.broker import free_port
from monitor.errors import MonitorError

SHIPPED_CONFIG = Path(__file__).resolve().parents[2] / "deploy/alertmanager/alertmanager.yml"
BINARIES = ("prometheus-alertmanager", "alertmanager")  # Debian's name, then upstream's


class AlertmanagerError(MonitorError):
    """A local Alertmanager could not be configured, started or reached."""


def alertmanager_binary() -> str | None:
    """The Alertmanager binary on PATH, or None."""
    for name in BINARIES:
        if path := shutil.which(name):
            return path
    return None


def local_config(
    config: dict[str, Any],
    webhook_url: str,
    *,
    group_wait: str | None = "0s",
    group_interval: str | None = "1s",
) -> dict[str, Any]:
    """A copy of ``config`` whose webhook receivers all notify ``webhook_url``, with
    ``group_wait`` and ``group_interval`` set on the root route and every route under it
    (None leaves that timing as configured)."""
    config = copy.deepcopy(config)
    for receiver in config.get("receivers") or []:
        for webhook in receiver.get("webhook_configs") or []:
            webhook["url"] = webhook_url
    timings = {
        key: value
        for key, value in (("group_wait", group_wait), ("group_interval", group_interval))
        if value is not None
    }
    routes = [config["route"]] if config.get("route") else []
    while routes:
        route = routes.pop()
        route.update(timings)
        routes.extend(route.get("routes") or [])
    return config


def load_config(path: Path = SHIPPED_CONFIG) -> dict[str, Any]:
    """The Alertmanager config at ``path`` (the shipped one by default)."""
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise AlertmanagerError(f"cannot read Alertmanager config {path}: {exc}") from exc
    if not isinstance(config, dict) or not isinstance(config.get("route"), dict):
        raise AlertmanagerError(f"{path} is not an Alertmanager config (no route)")
    return config


@dataclass
class LocalAlertmanager:
    """An Alertmanager process on loopback; ``url`` is its base URL (API under /api/v2)."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout_s``."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_alertmanager(
    config: dict[str, Any],
    config_path: Path,
    storage_path: Path,
    log_path: Path,
    *,
    binary: str | None = None,
    port: int | None = None,
    ready_timeout_s: float = 20.0,
) -> LocalAlertmanager:
    """Write ``config`` to ``config_path``, start Alertmanager on 127.0.0.1 (``port``, or a
    free one) with its output in ``log_path``, and wait until ``GET /-/ready`` answers 200;
    AlertmanagerError (the process stopped) when it is not found, exits or is not ready."""
    binary = binary or alertmanager_binary()
    if binary is None:
        raise AlertmanagerError(f"no Alertmanager binary on PATH (tried {', '.join(BINARIES)})")
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = port or free_port()
    with open(log_path, "ab") as log:
        process = subprocess.Popen(  # noqa: S603 - a binary from PATH and our own arguments
            [binary, f"--config.file={config_path}", f"--storage.path={storage_path}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        )  # fmt: skip
    alertmanager = LocalAlertmanager(f"http://127.0.0.1:{port}", process, log_path)
    try:
        wait_ready(alertmanager, ready_timeout_s)
    except BaseException:
        alertmanager.stop()
        raise
    return alertmanager


def wait_ready(alertmanager: LocalAlertmanager, timeout_s: float) -> None:
    """Until ``/-/ready`` answers 200; AlertmanagerError if the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (code := alertmanager.process.poll()) is not None:
            raise AlertmanagerError(
                f"Alertmanager exited with code {code}; see {alertmanager.log_path}"
            )
        try:
            if httpx.get(f"{alertmanager.url}/-/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AlertmanagerError(
        f"Alertmanager not ready at {alertmanager.url} after {timeout_s:.0f}s; "
        f"see {alertmanager.log_path}"
    )
