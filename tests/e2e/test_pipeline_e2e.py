"""Real broker, real faust workers (subprocesses), real chdb: events in, rows and metrics out."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
from collections import Counter
from typing import Any

import pytest

from monitor.client import produce
from monitor.devtools.generate import generate_events
from monitor.errors import SchemaError
from monitor.ingest.events import decode_event
from tests.conftest import WorkerHarness

pytestmark = pytest.mark.e2e


def split(records: list[tuple[bytes, bytes]]) -> tuple[int, Counter[str]]:
    valid, reasons = 0, Counter[str]()
    for _, value in records:
        try:
            decode_event(value)
            valid += 1
        except SchemaError as exc:
            reasons[exc.reason] += 1
    return valid, reasons


def query(harness: WorkerHarness, sql: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-m", "monitor.cli", "query", sql, "--format", "json",
         "--data-dir", str(harness.data_dir)],  # fmt: skip
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    rows: list[dict[str, Any]] = json.loads(out.stdout.strip().splitlines()[-1])
    return rows


def scalar(harness: WorkerHarness, sql: str) -> Any:
    return next(iter(query(harness, sql)[0].values()))


def stored(harness: WorkerHarness) -> float:
    return harness.metric("llm_monitor_sink_rows_total", table="events")


def test_golden_path(workers: WorkerHarness) -> None:
    records = list(generate_events(2000, seed=11, bad_fraction=0.02))
    valid, reasons = split(records)
    bad = sum(reasons.values())
    workers.start()
    asyncio.run(produce(workers.bootstrap, "llm.events", records))
    workers.wait_for(
        lambda: (
            stored(workers) >= valid
            and workers.metric("llm_monitor_sink_rows_total", table="dead_letters") >= bad
            and workers.metric("llm_monitor_aggregate_events_total") >= valid
        ),
        what=f"{valid} events stored, {bad} dead letters stored and {valid} events aggregated",
    )
    workers.wait_windows_stored()  # the snapshots of the windows the last events changed
    assert workers.metric("llm_monitor_events_received_total") == len(records)
    assert workers.metric("llm_monitor_events_valid_total") == valid
    for reason, count in reasons.items():
        assert workers.metric("llm_monitor_dead_letters_total", reason=reason) == count
    flags = workers.metric("llm_monitor_detector_flags_total", detector="pii", category="leak")
    workers.stop_all()

    assert scalar(workers, "SELECT count() FROM llm_monitor.events FINAL") == valid
    dead = query(
        workers, "SELECT reason, count() AS n FROM llm_monitor.dead_letters FINAL GROUP BY reason"
    )
    assert {r["reason"]: r["n"] for r in dead} == dict(reasons)
    leaks = query(
        workers,
        "SELECT deployment, count() AS n FROM llm_monitor.findings FINAL "
        "WHERE detector = 'pii' AND category = 'leak' GROUP BY deployment",
    )
    assert {r["deployment"] for r in leaks} == {"canary"}  # the seeded burst, nowhere else
    assert sum(r["n"] for r in leaks) == flags > 0
    assert scalar(workers, "SELECT sum(events) FROM llm_monitor.windows FINAL") == valid
    errors = query(
        workers,
        "SELECT deployment, max(error_rate) AS worst FROM llm_monitor.windows FINAL GROUP BY deployment",
    )
    worst = {r["deployment"]: r["worst"] for r in errors}
    assert worst["canary"] > 0.2 > worst["stable"]  # the seeded error storm
    raw_pii = (
        "SELECT count() FROM llm_monitor.events FINAL WHERE response LIKE '%@corp-example.com%'"
    )
    assert scalar(workers, raw_pii) == 0


def test_replay_does_not_duplicate_rows(workers: WorkerHarness) -> None:
    records = list(generate_events(800, seed=5, bad_fraction=0.0))
    workers.start()
    asyncio.run(produce(workers.bootstrap, "llm.events", records))
    workers.wait_for(lambda: stored(workers) >= 800, what="800 events stored")
    asyncio.run(produce(workers.bootstrap, "llm.events", records))
    workers.wait_for(lambda: stored(workers) >= 1600, what="the replayed 800 stored again")
    workers.stop_all()
    assert scalar(workers, "SELECT count() FROM llm_monitor.events FINAL") == 800
    assert scalar(workers, "SELECT uniqExact(request_id) FROM llm_monitor.events") == 800
    assert scalar(workers, "SELECT count() FROM llm_monitor.findings FINAL") == scalar(
        workers, "SELECT uniqExact(request_id, detector) FROM llm_monitor.findings"
    )


def produce_paced(
    bootstrap: str, records: list[tuple[bytes, bytes]], chunk: int, pause_s: float
) -> None:
    async def run() -> None:
        for i in range(0, len(records), chunk):
            await produce(bootstrap, "llm.events", records[i : i + chunk])
            # Pacing on purpose, not waiting for anything: a producer slower than the worker.
            await asyncio.sleep(pause_s)

    asyncio.run(run())


def test_restart_mid_stream_keeps_every_event_exactly_once(workers: WorkerHarness) -> None:
    records = list(generate_events(6000, seed=3, bad_fraction=0.0))
    # Small batches and a producer slower than the worker, started once the worker is ready,
    # so the kill lands mid-stream rather than after one large insert.
    workers.env_overrides.update({
        "LLM_MONITOR_PIPELINE__BATCH_SIZE": "100",
        "LLM_MONITOR_PIPELINE__SINK_BATCH_SIZE": "2",
    })  # fmt: skip
    first = workers.start()
    workers.wait_for(workers.ready, what="the worker ready")
    producer = threading.Thread(
        target=produce_paced, args=(workers.bootstrap, records, 200, 0.4), daemon=True
    )
    producer.start()
    workers.wait_for(lambda: stored(workers) >= 600, what="600 events stored")
    before = stored(workers)
    first.send_signal(signal.SIGKILL)  # no graceful shutdown, no final commit
    first.wait()
    assert before < 6000, "the worker finished before it could be killed"
    workers.start()
    producer.join(timeout=60)
    # The new worker re-inserts what the killed one stored but had not committed, so its own
    # row count overshoots: wait until the broker says every offset is committed instead
    # (the sink commits only after the insert succeeded).
    workers.wait_for(
        lambda: workers.uncommitted() == 0, timeout_s=120, what="every offset committed"
    )
    workers.stop_all()
    assert scalar(workers, "SELECT count() FROM llm_monitor.events FINAL") == 6000
    assert scalar(workers, "SELECT uniqExact(request_id) FROM llm_monitor.events") == 6000
