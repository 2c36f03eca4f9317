"""Windows are exact after crashes: a worker (every role, semantic detectors off) SIGKILLed
twice mid-stream and restarted; every window's final snapshot counts exactly the events stored
for it, although the killed workers' uncommitted batches were processed, and their partials
merged, a second time."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading

import msgspec
import pytest
from aiokafka import AIOKafkaConsumer

from monitor.devtools.generate import generate_events
from monitor.ingest.events import decode_event
from monitor.windows.stats import WindowStats, window_start
from tests.conftest import WorkerHarness, log_ends
from tests.e2e.test_pipeline_e2e import produce_paced, query, scalar

pytestmark = pytest.mark.e2e

_stats = msgspec.msgpack.Decoder(WindowStats).decode
EVENTS = 20_000
WINDOW_S = 10  # an idle series closes its last window after one window of silence (EVENTS_SQL)

WINDOWS_SQL = """
SELECT model, model_version, deployment, toUnixTimestamp64Milli(window_start) AS start,
       events, is_final
FROM llm_monitor.windows FINAL
"""
EVENTS_SQL = """
SELECT model, model_version, deployment,
       intDiv(toUnixTimestamp64Milli(event_time), 10000) * 10000 AS start,
       count() AS events
FROM llm_monitor.events FINAL
GROUP BY model, model_version, deployment, start
"""


def windows_of(records: list[tuple[bytes, bytes]]) -> set[tuple[str, str, str, int]]:
    """(model, version, deployment, window start) of every window the records fall in."""
    events = [decode_event(value) for _, value in records]
    return {(e.model, e.model_version, e.deployment, window_start(e.timestamp_ms, WINDOW_S))
            for e in events}  # fmt: skip


async def final_windows(bootstrap: str) -> set[tuple[str, str, str, int]]:
    """Windows whose newest snapshot on the windows topic is final, read from the broker."""
    ends = await log_ends(bootstrap, ("llm.windows",))
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await reader.start()
    try:
        reader.assign(list(ends))
        await reader.seek_to_beginning(*ends)
        newest: dict[tuple[str, str, str, int], WindowStats] = {}
        while [tp for tp, end in ends.items() if await reader.position(tp) < end]:
            for records in (await reader.getmany(timeout_ms=1000)).values():
                for record in records:
                    stats = _stats(record.value)
                    key = (stats.model, stats.model_version, stats.deployment,
                           stats.window_start_ms)  # fmt: skip
                    if key not in newest or newest[key].version < stats.version:
                        newest[key] = stats
        return {key for key, stats in newest.items() if stats.is_final}
    finally:
        await reader.stop()


def merged(workers: WorkerHarness) -> float:
    """Events the current worker process counted into windows (replays not included)."""
    return workers.metric("llm_monitor_aggregate_events_total")


def kill(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGKILL)  # no graceful shutdown, no final commit
    process.wait()


def test_windows_count_each_event_once_across_kills(workers: WorkerHarness) -> None:
    records = list(generate_events(EVENTS, seed=13, bad_fraction=0.0))
    workers.env_overrides.update({
        "LLM_MONITOR_PIPELINE__WINDOW_S": str(WINDOW_S),
        "LLM_MONITOR_PIPELINE__ALLOWED_LATENESS_S": "0",
        "LLM_MONITOR_PIPELINE__BATCH_SIZE": "200",
    })  # fmt: skip
    first = workers.start()
    workers.wait_for(workers.ready, what="the worker ready")
    # A producer slower than the worker, so that both kills land mid-stream.
    producer = threading.Thread(
        target=produce_paced, args=(workers.bootstrap, records, 500, 0.3), daemon=True
    )
    producer.start()
    workers.wait_for(lambda: merged(workers) >= 3000, what="3000 events in windows")
    kill(first)
    second = workers.start()
    workers.wait_for(lambda: merged(workers) >= 3000, what="3000 more events in windows")
    kill(second)
    workers.start()
    producer.join(timeout=120)
    assert not producer.is_alive(), "the producer did not finish"
    workers.wait_for(
        lambda: workers.uncommitted(("llm.events", "llm.scored", "llm.partials")) == 0,
        timeout_s=120,
        what="every event scored, stored and merged, and its offsets committed",
    )
    expected = windows_of(records)
    # Idle series close their last windows after WINDOW_S without traffic.
    workers.wait_for(
        lambda: asyncio.run(final_windows(workers.bootstrap)) >= expected,
        what=f"the final snapshot of each of the {len(expected)} windows published",
    )
    workers.wait_for(
        lambda: workers.uncommitted(("llm.windows",)) == 0,
        what="every published snapshot stored (the sink commits after its insert)",
    )
    workers.stop_all()

    assert scalar(workers, "SELECT count() FROM llm_monitor.events FINAL") == EVENTS
    rows = query(workers, WINDOWS_SQL)
    key = ("model", "model_version", "deployment", "start")
    windows = {tuple(r[k] for k in key): int(r["events"]) for r in rows}
    stored = {tuple(r[k] for k in key): int(r["events"]) for r in query(workers, EVENTS_SQL)}
    over = {k: windows[k] - stored.get(k, 0) for k in windows if windows[k] != stored.get(k, 0)}
    assert over == {}, f"{len(over)} windows miscounted (window minus stored): {over}"
    assert windows == stored
    assert all(int(r["is_final"]) == 1 for r in rows)
