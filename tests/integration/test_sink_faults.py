"""Poison on every internal topic, next to valid traffic, through a real broker, worker and chdb.

One record that cannot be decoded on each of llm.scored, llm.events.dlq, llm.windows,
llm.policy, llm.control, llm.judge, llm.actions and llm.embed, and one window snapshot
ClickHouse refuses (a negative count for a UInt64 column) in a batch of valid ones: every
valid event and window is stored, each poison record is dead-lettered (a ``dead_letters`` row
with its topic, partition and offset) and counted, and no agent crashes.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass

import msgspec
import pytest
from aiokafka import AIOKafkaProducer

from detectors.base import DetectorRegistry
from detectors.pii import PiiDetector
from monitor.client import produce
from monitor.devtools.generate import generate_events
from monitor.ingest.decode import RawMessage
from monitor.scoring.pipeline import Pipeline
from monitor.windows.stats import WindowStats, finalise
from tests.conftest import WorkerHarness
from tests.e2e.test_pipeline_e2e import query, scalar, split, stored

pytestmark = pytest.mark.integration

POISON = b"\xc1 neither msgpack nor JSON"
DLQ = "llm.events.dlq"
FAULT_MODEL = "fault-model"
# Who dead-letters a poison record of each topic, and why: llm.windows has two readers (the
# sink and the policy role); a record of the DLQ itself is stored as its own dead letter.
EXPECTED = {
    "llm.scored": ("undecodable", 1),
    DLQ: ("undecodable_dead_letter", 1),
    "llm.windows": ("undecodable", 2),
    "llm.policy": ("undecodable", 1),
    "llm.control": ("undecodable", 1),
    "llm.judge": ("undecodable", 1),
    "llm.actions": ("undecodable", 1),
    "llm.embed": ("undecodable", 1),
}


@dataclass(frozen=True)
class Sent:
    topic: str
    partition: int
    offset: int


async def send_each(bootstrap: str, records: list[tuple[str, bytes, bytes]]) -> list[Sent]:
    """Send (topic, key, value) records one by one; where each landed."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        sent = []
        for topic, key, value in records:
            meta = await producer.send_and_wait(topic, value=value, key=key)
            sent.append(Sent(topic, meta.partition, meta.offset))
        return sent
    finally:
        await producer.stop()


def fault_windows(count: int) -> list[WindowStats]:
    """Valid snapshots of one series (real sketches), one per minute."""
    pipeline = Pipeline(DetectorRegistry([PiiDetector()]), window_s=60)
    start_ms = (int(time.time()) // 60 - count - 1) * 60_000
    events = [
        json.dumps({"request_id": f"w{i}", "timestamp": start_ms + i * 60_000 + 1,
                    "model": FAULT_MODEL, "model_version": "v1", "latency_ms": 100.0 + i,
                    "response": "ok"}).encode()
        for i in range(count)
    ]  # fmt: skip
    messages = [RawMessage(v, None, "llm.events", 0, i, 0) for i, v in enumerate(events)]
    partials = sorted(pipeline.process(messages).partials, key=lambda p: p.window_start_ms)
    return [finalise(p, is_final=True, version=1) for p in partials]


def agent_crashes(log: str) -> list[str]:
    """Agent crashes in a worker log: faust's "Crashed reason=" (a rebalance's cancel aside)
    or a traceback through the roles' own code."""
    crashed = [
        line for line in log.splitlines() if "Crashed reason=" in line and "Cancelled" not in line
    ]
    return crashed + re.findall(r'File ".*/streams/\w+\.py", line \d+.*', log)


def test_poison_on_every_internal_topic_is_dead_lettered_and_the_rest_stored(
    workers: WorkerHarness,
) -> None:
    workers.env_overrides.update({
        "LLM_MONITOR_DETECTORS__INJECTION__ENABLED": "true",  # so the embed role runs
        "LLM_MONITOR_DETECTORS__EMBEDDING__DEVICE": "cpu",
    })  # fmt: skip
    records = list(generate_events(400, seed=17, bad_fraction=0.0))
    valid, _ = split(records)
    windows = fault_windows(5)
    refused = msgspec.structs.replace(windows[2], input_tokens=-1)  # UInt64: refused
    window_records = [
        ("llm.windows", FAULT_MODEL.encode(), msgspec.msgpack.encode(w))
        for w in (*windows[:2], refused, *windows[3:])
    ]
    workers.start()
    workers.wait_for(workers.ready, timeout_s=180, what="the worker ready")

    asyncio.run(produce(workers.bootstrap, "llm.events", records))
    poison = asyncio.run(
        send_each(workers.bootstrap, [(topic, b"poison", POISON) for topic in EXPECTED])
    )
    sent_windows = asyncio.run(send_each(workers.bootstrap, window_records))

    def dead_lettered(topic: str, reason: str) -> float:
        return workers.metric("llm_monitor_internal_dead_letters_total", topic=topic, reason=reason)

    # Every dead letter but the DLQ's own goes through the DLQ topic and is stored from there.
    letters = sum(n for topic, (_, n) in EXPECTED.items() if topic != DLQ) + 1
    workers.wait_for(
        lambda: (
            stored(workers) >= valid
            and all(dead_lettered(t, reason) >= n for t, (reason, n) in EXPECTED.items())
            and dead_lettered("llm.windows", "refused") >= 1
            and workers.metric("llm_monitor_sink_rows_total", table="dead_letters") >= letters + 1
            and workers.metric("llm_monitor_sink_rows_total", table="windows") >= 4
        ),
        timeout_s=180,
        what="valid rows stored and every poison record dead-lettered",
    )
    assert workers.ready()  # /health answers: no agent took the worker down
    assert workers.metric("llm_monitor_sink_errors_total") == 0  # nothing was retried
    workers.stop_all()

    log = (workers.data_dir / "worker.log").read_text()
    assert agent_crashes(log) == []
    assert scalar(workers, "SELECT count() FROM llm_monitor.events FINAL") == valid
    rows = query(
        workers,
        "SELECT topic, partition, offset, reason, raw_bytes FROM llm_monitor.dead_letters FINAL",
    )
    found = {(r["topic"], r["partition"], int(r["offset"])): r for r in rows}
    for sent in poison:
        row = found.get((sent.topic, sent.partition, sent.offset))
        assert row is not None, f"no dead letter for {sent}: {rows}"
        assert row["reason"] == EXPECTED[sent.topic][0], sent
        assert row["raw_bytes"] == len(POISON), sent
    bad = sent_windows[2]
    assert found[(bad.topic, bad.partition, bad.offset)]["reason"] == "refused"
    kept = query(
        workers,
        "SELECT toUnixTimestamp64Milli(window_start) AS start FROM llm_monitor.windows FINAL "
        "WHERE model = 'fault-model' ORDER BY start",
    )
    assert [r["start"] for r in kept] == [
        w.window_start_ms for i, w in enumerate(windows) if i != 2
    ]
