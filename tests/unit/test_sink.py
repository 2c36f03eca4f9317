"""The sink spools a batch whose insert is cut short and replays it when it next opens.

ClickHouse is replaced by a fake at the sink's own seams (``connect``, ``migrate`` and
``ClickHouseWriter`` in monitor/storage/sink.py): chdb allows one data path per process, and
this is about what the sink does around the storage, not about the storage.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from detectors.base import DetectorRegistry
from detectors.pii import PiiDetector
from monitor.config import Settings, load_settings
from monitor.errors import StorageError
from monitor.ingest.decode import RawMessage
from monitor.metrics import create_metrics
from monitor.scoring.pipeline import Pipeline
from monitor.scoring.rows import EventRow, FindingRow
from monitor.storage import sink as sink_module
from monitor.storage.sink import KIND_SCORED, Sink
from monitor.storage.spool import SpoolEntry


@dataclass
class FakeStorage:
    """What the sink connected to, and the rows it stored; inserts fail while ``down``."""

    down: bool = False
    dsns: list[str] = field(default_factory=list)
    failures: int = 0
    events: list[EventRow] = field(default_factory=list)
    findings: list[FindingRow] = field(default_factory=list)

    def connect(self, dsn: str) -> FakeStorage:
        self.dsns.append(dsn)
        return self

    def writer(self, client: object, database: str, *, redact: bool) -> FakeWriter:
        return FakeWriter(self)


@dataclass
class FakeWriter:
    storage: FakeStorage

    def write_events(self, rows: Sequence[EventRow]) -> int:
        if self.storage.down:
            self.storage.failures += 1
            raise StorageError("ClickHouse is down")
        self.storage.events.extend(rows)
        return len(rows)

    def write_findings(self, rows: Sequence[FindingRow]) -> int:
        self.storage.findings.extend(rows)
        return len(rows)


@pytest.fixture
def storage(monkeypatch: pytest.MonkeyPatch) -> FakeStorage:
    fake = FakeStorage()
    monkeypatch.setattr(sink_module, "connect", fake.connect)
    monkeypatch.setattr(sink_module, "migrate", lambda client, settings: [])
    monkeypatch.setattr(sink_module, "ClickHouseWriter", fake.writer)
    return fake


def scored_values(*request_ids: str) -> list[bytes]:
    """One scored batch per id, as the score role publishes them (PII found in each)."""
    pipeline = Pipeline(DetectorRegistry([PiiDetector()]))
    values = []
    for offset, request_id in enumerate(request_ids):
        body = {"request_id": request_id, "timestamp": 1_700_000_000_000, "model": "m",
                "model_version": "v", "prompt": "hi", "response": "mail eve@example.com"}  # fmt: skip
        message = RawMessage(json.dumps(body).encode(), None, "llm.events", 0, offset, 0)
        values.append(msgspec.msgpack.encode(pipeline.process([message]).scored))
    return values


def new_sink(settings: Settings) -> Sink:
    return Sink(settings, create_metrics(CollectorRegistry()))


async def cancel_mid_retry(sink: Sink, storage: FakeStorage, values: list[bytes]) -> None:
    """Start a write, let it fail twice (so it is backing off between retries), cancel it."""
    task = asyncio.create_task(sink.write(KIND_SCORED, values))

    async def failed_twice() -> None:
        while storage.failures < 2:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(failed_twice(), timeout=30)
    assert not task.done(), "the write must still be retrying"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_a_cancelled_write_is_spooled_and_replayed_first_on_open(
    tmp_path: Path, storage: FakeStorage
) -> None:
    settings = load_settings(data_dir=tmp_path)
    assert settings.storage_dsn == f"chdb://{(tmp_path / 'chdb').resolve()}"
    interrupted = scored_values("a", "b")

    storage.down = True
    first = new_sink(settings)
    asyncio.run(cancel_mid_retry(first, storage, interrupted))
    assert storage.events == []
    assert [entry for _, entry in first.spool.entries()] == [SpoolEntry(KIND_SCORED, interrupted)]
    assert first.metrics.registry.get_sample_value(
        "llm_monitor_sink_errors_total", {"table": "events"}
    ) == storage.failures  # fmt: skip

    storage.down = False
    second = new_sink(settings)  # the next worker, on the same data dir
    asyncio.run(second.write(KIND_SCORED, scored_values("c")))
    assert storage.dsns == [settings.storage_dsn] * 2
    assert [row.request_id for row in storage.events] == ["a", "b", "c"]  # the spool first
    assert sorted(row.finding.request_id for row in storage.findings) == ["a", "b", "c"]
    assert list(second.spool.entries()) == []
    assert second.metrics.registry.get_sample_value(
        "llm_monitor_sink_rows_total", {"table": "events"}
    ) == 3  # fmt: skip


def test_a_spool_left_by_a_crash_is_replayed_when_the_sink_opens(
    tmp_path: Path, storage: FakeStorage
) -> None:
    settings = load_settings(data_dir=tmp_path)
    sink = new_sink(settings)
    sink.spool.save(KIND_SCORED, scored_values("x"))
    asyncio.run(sink.open())
    assert [row.request_id for row in storage.events] == ["x"]
    assert list(sink.spool.entries()) == []
    asyncio.run(sink.open())  # opening again replays nothing twice
    assert [row.request_id for row in storage.events] == ["x"]
