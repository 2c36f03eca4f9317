"""Real broker and worker: records that used to crash the score agent sit in one batch with
valid events. Every valid event is stored, every bad record dead-lettered with its reason, and
the worker neither dies nor restarts its agent."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import pytest

from monitor.client import produce
from monitor.devtools.generate import generate_events
from tests.conftest import WorkerHarness

pytestmark = pytest.mark.integration

VALID = 515


def bad_records() -> dict[str, bytes]:
    """The records of the issue, by the reason each must be dead-lettered with."""
    now = int(time.time() * 1000)
    head = {"request_id": "bad", "timestamp": now, "model": "m", "model_version": "v"}
    deep = json.dumps(head)[:-1].encode() + b', "x": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    tokens = json.dumps({**head, "request_id": "tokens", "input_tokens": 2**64 + 1}).encode()
    huge = json.dumps({**head, "request_id": "huge", "prompt": "x" * 3_200_000}).encode()
    return {"too_deep": deep, "schema": tokens, "too_large": huge}


def query(harness: WorkerHarness, sql: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-m", "monitor.cli", "query", sql, "--format", "json",
         "--data-dir", str(harness.data_dir)],  # fmt: skip
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    rows: list[dict[str, Any]] = json.loads(out.stdout.strip().splitlines()[-1])
    return rows


def test_bad_records_in_a_batch_never_cost_the_valid_ones(workers: WorkerHarness) -> None:
    valid = [value for _, value in generate_events(VALID, seed=13, bad_fraction=0.0)]
    bad = bad_records()
    values = valid[:100] + [bad["too_deep"]] + valid[100:300] + [bad["schema"]]
    values += valid[300:400] + [bad["too_large"]] + valid[400:]
    # One key: one partition, so the worker reads them in order, in the same fetch.
    asyncio.run(produce(workers.bootstrap, "llm.events", [(b"same", v) for v in values]))
    process = workers.start()  # after producing, so its first batch holds every record
    workers.wait_for(
        lambda: (
            workers.metric("llm_monitor_sink_rows_total", table="events") >= VALID
            and workers.metric("llm_monitor_sink_rows_total", table="dead_letters") >= len(bad)
        ),
        what=f"{VALID} events and {len(bad)} dead letters stored",
    )
    assert workers.metric("llm_monitor_events_valid_total") == VALID
    for reason in bad:
        assert workers.metric("llm_monitor_dead_letters_total", reason=reason) == 1
    assert process.poll() is None, "the worker died"
    log = workers.log_tail(200_000)
    assert "Restarting dead" not in log and "Traceback" not in log, log[-3000:]
    workers.stop_all()

    events = query(workers, "SELECT count() AS n FROM llm_monitor.events FINAL")
    assert events[0]["n"] == VALID
    dead = query(
        workers,
        "SELECT reason, raw_bytes, error FROM llm_monitor.dead_letters FINAL ORDER BY reason",
    )
    assert [row["reason"] for row in dead] == sorted(bad)
    too_large = next(row for row in dead if row["reason"] == "too_large")
    assert f"of {len(bad['too_large'])} bytes" in too_large["error"]
