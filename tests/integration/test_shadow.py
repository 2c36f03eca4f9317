"""Shadow mode end to end: a real broker, a real worker, chdb. A candidate ``latency_errors``
(slow at 1 s instead of 5 s) scores live traffic beside the live one; its findings land in
``findings_versions`` under its own version and nowhere the policy reads (``findings``, the
windows, the live detector metrics), and ``llm-monitor compare`` compares the two."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from monitor.client import produce
from tests.conftest import WorkerHarness

pytestmark = pytest.mark.integration

N = 31  # i % 3: 0 slow for both (first and last too, so both versions cover every event)
LATENCIES = (6000.0, 2000.0, 500.0)  # 1: slow for the shadow only, 2: for neither
LIVE, SHADOW = "1.0.0", "1.0.0-fast"
BOTH = sum(1 for i in range(N) if i % 3 == 0)
SHADOW_ONLY = sum(1 for i in range(N) if i % 3 == 1)


def cli(data_dir: Path, *args: str) -> Any:
    out = subprocess.run(
        [sys.executable, "-m", "monitor.cli", *args, "--data-dir", str(data_dir)],
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def query(data_dir: Path, sql: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = cli(data_dir, "query", sql, "--format", "json")
    return rows


def events(now_ms: int) -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(N):
        request_id = f"shadow-{i}"
        body = {
            "request_id": request_id, "timestamp": now_ms - (N - i) * 1000, "model": "m",
            "model_version": "v1", "deployment": "stable", "prompt": "hi", "response": "ok",
            "latency_ms": LATENCIES[i % 3], "status": "ok",
        }  # fmt: skip
        out.append((request_id.encode(), json.dumps(body).encode()))
    return out


def test_shadow_findings_land_in_findings_versions_only_and_compare_reads_them(
    workers: WorkerHarness,
) -> None:
    workers.env_overrides["LLM_MONITOR_DETECTORS__SHADOW"] = json.dumps(
        [{"detector": "latency_errors", "version": SHADOW, "settings": {"slow_ms": 1000}}]
    )
    asyncio.run(produce(workers.bootstrap, "llm.events", events(time.time_ns() // 1_000_000)))
    workers.start()
    workers.wait_for(
        lambda: (
            workers.metric("llm_monitor_sink_rows_total", table="events") >= N
            and workers.metric("llm_monitor_sink_rows_total", table="findings_versions")
            >= BOTH + SHADOW_ONLY
        ),
        what=f"{N} events and {BOTH + SHADOW_ONLY} shadow findings stored",
    )
    workers.wait_windows_stored()
    shadow = {"detector": "latency_errors", "detector_version": SHADOW}
    assert workers.metric("llm_monitor_shadow_findings_total", **shadow, flagged="true") == (
        BOTH + SHADOW_ONLY
    )
    assert workers.metric("llm_monitor_shadow_failures_total", **shadow) == 0
    assert workers.metric("llm_monitor_detector_flags_total", detector="latency_errors") == BOTH
    assert workers.metric("llm_monitor_sink_rows_total", table="findings") == BOTH
    workers.stop_all()

    data = workers.data_dir
    live = query(data, "SELECT detector_version AS v, count() AS n FROM llm_monitor.findings "
                       "FINAL WHERE detector = 'latency_errors' GROUP BY v")  # fmt: skip
    assert live == [{"v": LIVE, "n": BOTH}]
    versions = query(data, "SELECT detector_version AS v, count() AS n, "
                           "countIf(flagged) AS flagged FROM llm_monitor.findings_versions FINAL "
                           "GROUP BY v")  # fmt: skip
    assert versions == [{"v": SHADOW, "n": BOTH + SHADOW_ONLY, "flagged": BOTH + SHADOW_ONLY}]
    windows = query(data, "SELECT sum(events) AS events, sum(flags['latency_errors']) AS flags "
                          "FROM llm_monitor.windows FINAL")  # fmt: skip
    assert windows == [{"events": N, "flags": BOTH}]  # what the policy reads: live only

    report = cli(data, "compare", "--detector", "latency_errors", "--versions",
                 f"{LIVE},{SHADOW}", "--json")  # fmt: skip
    overall = report["overall"]
    counts = [overall[k] for k in ("events", "both_flagged", "a_only", "b_only")]
    assert counts == [N, BOTH, 0, SHADOW_ONLY]
