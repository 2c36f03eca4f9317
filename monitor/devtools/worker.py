"""Worker processes for the demo, tests and benchmarks: start, stop, and read their /metrics.

A worker runs as a child process (`llm-monitor worker`), exactly as in production.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families


def scrape(url: str) -> dict[str, float]:
    """Sum every sample of every metric at ``url`` by full sample name + sorted labels."""
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback URL we built
        text = response.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = sample.value
    return out


def metric_sum(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (each value exactly:
    ``table="findings"`` is not ``table="findings_versions"``)."""
    want = {f"{k}={v}" for k, v in labels.items()}
    total = 0.0
    for key, value in samples.items():
        metric, _, rest = key.partition("{")
        if metric == name and want <= set(rest.removesuffix("}").split(",")):
            total += value
    return total


def start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """`llm-monitor worker` with ``env``, its output appended to ``log_path``."""
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child
    return subprocess.Popen(  # noqa: S603 - our own entry point
        [sys.executable, "-m", "monitor.cli", "worker"], env=env, stdout=log, stderr=log
    )


def stop_worker(process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """SIGTERM (a graceful stop commits offsets), then SIGKILL after ``timeout_s``."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
