"""The sink: transient failures retried and counted, refused records bisected out and
dead-lettered, the spool replayed on open and quarantined when it cannot be.

ClickHouse is replaced by a fake at the sink's own seams (``connect``, ``migrate`` and
``ClickHouseWriter`` in monitor/storage/sink.py): chdb allows one data path per process, and
this is about what the sink does around the storage, not about the storage (the integration
test tests/integration/test_sink_faults.py runs the real one).
"""

from __future__ import annotations

import asyncio
import json
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, DataError, OperationalError
from prometheus_client import CollectorRegistry

from detectors.base import DetectorRegistry
from detectors.pii import PiiDetector, PiiMatch, PiiScanner
from monitor.config import Settings, load_settings
from monitor.errors import StorageError
from monitor.ingest.decode import RawMessage, dead_letter
from monitor.metrics import Metrics, create_metrics
from monitor.scoring.pipeline import Pipeline
from monitor.scoring.shadow import Shadow
from monitor.storage import sink as sink_module
from monitor.storage.columns import columns_of
from monitor.storage.sink import (
    KIND_DEAD_LETTERS,
    KIND_SCORED,
    KIND_WINDOWS,
    Refused,
    Sink,
    is_transient,
)
from monitor.storage.spool import SpoolEntry
from monitor.storage.writer import TABLES
from monitor.windows.stats import WindowStats
from streams.kafka import send_internal_dead_letter

DLQ = "llm.events.dlq"
Row = Sequence[Any]


def column(table: str, row: Row, name: str) -> Any:
    """The value of column ``name`` in an insert row of ``table``."""
    return row[columns_of(TABLES[table]).names.index(name)]


@dataclass
class FakeStorage:
    """What the sink connected to and the rows it stored. Inserts fail transiently while
    ``down`` (a count of failures to come, or True); rows ``refuse`` matches are refused."""

    down: int | bool = False
    refuse: Callable[[str, Row], bool] = lambda table, row: False
    dsns: list[str] = field(default_factory=list)
    failures: int = 0
    closed: int = 0
    inserts: list[tuple[str, int]] = field(default_factory=list)
    rows: dict[str, list[Row]] = field(default_factory=dict)

    def connect(self, dsn: str) -> FakeStorage:
        self.dsns.append(dsn)
        return self

    def close(self) -> None:
        self.closed += 1

    def writer(self, client: object, database: str, *, redact: bool) -> FakeWriter:
        return FakeWriter(self)

    def column(self, table: str, name: str) -> list[Any]:
        return [column(table, row, name) for row in self.rows.get(table, [])]


@dataclass
class FakeWriter:
    storage: FakeStorage

    def insert_rows(self, table: str, values: Sequence[Row]) -> int:
        storage = self.storage
        storage.inserts.append((table, len(values)))
        if storage.down:
            storage.failures += 1
            if not isinstance(storage.down, bool):
                storage.down -= 1
            raise OperationalError("Error HTTPConnectionPool: Connection refused")
        if any(storage.refuse(table, row) for row in values):
            raise DataError("Unable to create native array for column `events`: error")
        storage.rows.setdefault(table, []).extend(values)
        return len(values)


@pytest.fixture
def storage(monkeypatch: pytest.MonkeyPatch) -> FakeStorage:
    fake = FakeStorage()
    monkeypatch.setattr(sink_module, "connect", fake.connect)
    monkeypatch.setattr(sink_module, "migrate", lambda client, settings: [])
    monkeypatch.setattr(sink_module, "ClickHouseWriter", fake.writer)
    return fake


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path, storage={"retry_max_wait_s": 0.02})


@dataclass
class FakeDlq:
    """The DLQ topic: what was sent to it, acknowledged at once."""

    sent: list[tuple[bytes | None, bytes]] = field(default_factory=list)

    async def send(self, key: bytes | None, value: bytes) -> asyncio.Future[None]:
        self.sent.append((key, value))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def letters(self) -> list[dict[str, Any]]:
        return [json.loads(value) for _, value in self.sent]


def dead_letter_to(dlq: FakeDlq, metrics: Metrics) -> Callable[[Sequence[Refused]], Any]:
    """The sink role's dead-letter path (streams/sink.py) onto a fake topic."""

    async def send(refused: Sequence[Refused]) -> None:
        for r in refused:
            await send_internal_dead_letter(dlq, r.message, r.reason, r.error, metrics)

    return send


async def no_dead_letters(refused: Sequence[Refused]) -> None:
    raise AssertionError(f"nothing should be dead-lettered: {refused}")


def message(value: bytes, topic: str, offset: int) -> RawMessage:
    return RawMessage(value, b"key", topic, 3, offset, 1_700_000_000_000)


def scored_messages(*request_ids: str, pipeline: Pipeline | None = None) -> list[RawMessage]:
    """One scored batch per id, as the score role publishes them (PII found in each)."""
    pipeline = pipeline or Pipeline(DetectorRegistry([PiiDetector()]))
    out = []
    for offset, request_id in enumerate(request_ids):
        body = {"request_id": request_id, "timestamp": 1_700_000_000_000, "model": "m",
                "model_version": "v", "prompt": "hi", "response": "mail eve@example.com"}  # fmt: skip
        event = RawMessage(json.dumps(body).encode(), None, "llm.events", 0, offset, 0)
        value = msgspec.msgpack.encode(pipeline.process([event]).scored)
        out.append(message(value, "llm.scored", offset))
    return out


def window(events: int, start_ms: int = 1_700_000_000_000) -> WindowStats:
    return WindowStats(
        model="m", model_version="v", deployment="stable", window_start_ms=start_ms,
        window_end_ms=start_ms + 60_000, events=events, errors=0, timeouts=0, refusals=0,
        error_rate=0.0, complaints=0, complaint_rate=0.0, latency_p50_ms=None,
        latency_p95_ms=None, latency_p99_ms=None, latency_mean_ms=None, latency_max_ms=None,
        input_tokens=0, output_tokens=0, cost_usd=0.0, flags={}, flag_rates={}, is_final=False,
        version=1,
    )  # fmt: skip


def window_messages(events: Sequence[int]) -> list[RawMessage]:
    return [
        message(msgspec.msgpack.encode(window(n, 1_700_000_000_000 + i * 60_000)), "llm.windows", i)
        for i, n in enumerate(events)
    ]


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def new_sink(settings: Settings) -> Sink:
    return Sink(settings, create_metrics(CollectorRegistry()))


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (OperationalError("Error HTTPConnectionPool: Connection refused"), True),
        (ConnectionRefusedError(111, "Connection refused"), True),
        (TimeoutError("timed out"), True),
        (StorageError("cannot open ClickHouse at chdb:///data/chdb"), True),
        (DatabaseError("Code: 241. Memory limit exceeded", code=241), True),
        (DatabaseError("Code: 202. Too many simultaneous queries", code=202), True),
        (DatabaseError("Code: 242. Table is in readonly mode", code=242), True),
        (DatabaseError("Code: 60. Table llm_monitor.events does not exist", code=60), True),
        (DatabaseError("Code: 252. Too many parts (3000). Merges are processing", code=252), True),
        (DatabaseError("The ClickHouse server returned an error"), True),
        (RuntimeError("chdb engine hiccup"), True),
        (DataError("Unable to create native array for column `events`"), False),
        (DatabaseError("Code: 321. Value out of range of data type", code=321), False),
        (DatabaseError("Code: 27. Cannot parse input", code=27), False),
        (DatabaseError("Code: 252. Too many partitions for single INSERT block", code=252), False),
        (struct.error("'I' format requires 0 <= number <= 4294967295"), False),
        (AttributeError("'int' object has no attribute 'encode'"), False),
        (TypeError("an integer is required"), False),
        (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), False),
    ],
)
def test_failures_are_classified_by_type_and_code(error: Exception, transient: bool) -> None:
    assert is_transient(error) is transient


def test_the_common_case_is_one_insert_per_table(settings: Settings, storage: FakeStorage) -> None:
    sink = new_sink(settings)
    asyncio.run(sink.write(KIND_SCORED, scored_messages(*"abcdefgh"), no_dead_letters))
    assert storage.inserts == [("events", 8), ("findings", 8)]
    assert storage.column("events", "request_id") == list("abcdefgh")
    assert sample(sink.metrics, "llm_monitor_sink_rows_total", table="events") == 8
    assert sample(sink.metrics, "llm_monitor_sink_errors_total", table="events") == 0


def test_shadow_findings_go_to_findings_versions_only(
    settings: Settings, storage: FakeStorage
) -> None:
    shadow = Shadow(PiiDetector(), "1.1.0-shadow")
    pipeline = Pipeline(DetectorRegistry([PiiDetector()]), shadows=[shadow])
    sink = new_sink(settings)
    asyncio.run(sink.write(KIND_SCORED, scored_messages(*"ab", pipeline=pipeline), no_dead_letters))
    assert storage.inserts == [("events", 2), ("findings", 2), ("findings_versions", 2)]
    assert storage.column("findings", "detector_version") == ["1.1.0", "1.1.0"]
    assert storage.column("findings_versions", "detector_version") == ["1.1.0-shadow"] * 2
    assert storage.column("findings_versions", "request_id") == ["a", "b"]
    assert sample(sink.metrics, "llm_monitor_sink_rows_total", table="findings_versions") == 2


def test_transient_failures_are_retried_until_they_heal_and_each_counted(
    settings: Settings, storage: FakeStorage
) -> None:
    storage.down = 3
    sink = new_sink(settings)
    asyncio.run(sink.write(KIND_WINDOWS, window_messages([5, 6]), no_dead_letters))
    assert storage.failures == 3
    assert storage.inserts == [("windows", 2)] * 4  # the whole batch each time, never split
    assert storage.column("windows", "events") == [5, 6]
    assert sample(sink.metrics, "llm_monitor_sink_errors_total", table="windows") == 3


def test_a_row_clickhouse_refuses_is_bisected_out_and_dead_lettered(
    settings: Settings, storage: FakeStorage
) -> None:
    storage.refuse = lambda table, row: column(table, row, "events") < 0
    sink, dlq = new_sink(settings), FakeDlq()
    counts = [1, 2, 3, 4, 5, 6, -1, 8, 9, 10, 11, 12, 13, 14, 15, 16]
    messages = window_messages(counts)
    asyncio.run(sink.write(KIND_WINDOWS, messages, dead_letter_to(dlq, sink.metrics)))

    assert sorted(storage.column("windows", "events")) == sorted(n for n in counts if n >= 0)
    # One failed insert of 16, then halves down to the one record: 2 inserts per level.
    assert len(storage.inserts) == 1 + 2 * 4
    (letter,) = dlq.letters()
    assert (letter["topic"], letter["partition"], letter["offset"]) == ("llm.windows", 3, 6)
    assert letter["reason"] == "refused" and "DataError" in letter["error"]
    assert msgspec.json.decode(msgspec.json.encode(letter["raw"]), type=bytes) == messages[6].value
    metrics = sink.metrics
    assert sample(metrics, "llm_monitor_internal_dead_letters_total",
                  topic="llm.windows", reason="refused") == 1  # fmt: skip
    assert sample(metrics, "llm_monitor_sink_rows_total", table="windows") == 15
    assert sample(metrics, "llm_monitor_sink_errors_total", table="windows") == 0  # not retried


def test_every_refused_record_is_found_and_nothing_else_is_lost(
    settings: Settings, storage: FakeStorage
) -> None:
    storage.refuse = lambda table, row: column(table, row, "events") % 3 == 0
    sink, dlq = new_sink(settings), FakeDlq()
    asyncio.run(
        sink.write(KIND_WINDOWS, window_messages(range(1, 21)), dead_letter_to(dlq, sink.metrics))
    )
    assert sorted(storage.column("windows", "events")) == [n for n in range(1, 21) if n % 3]
    assert sorted(letter["offset"] for letter in dlq.letters()) == [n - 1 for n in range(3, 21, 3)]


def test_undecodable_records_are_dead_lettered_without_a_failed_insert(
    settings: Settings, storage: FakeStorage
) -> None:
    sink, dlq = new_sink(settings), FakeDlq()
    messages = scored_messages("a", "b", "c")
    messages.insert(1, message(b"\xc1 not msgpack", "llm.scored", 7))
    asyncio.run(sink.write(KIND_SCORED, messages, dead_letter_to(dlq, sink.metrics)))
    assert storage.inserts == [("events", 3), ("findings", 3)]
    assert storage.column("events", "request_id") == ["a", "b", "c"]
    (letter,) = dlq.letters()
    assert (letter["topic"], letter["offset"], letter["reason"]) == ("llm.scored", 7, "undecodable")
    assert sample(sink.metrics, "llm_monitor_internal_dead_letters_total",
                  topic="llm.scored", reason="undecodable") == 1  # fmt: skip


def dlq_message(offset: int, *, partition: int = 0, raw: bytes = b"{bad event") -> RawMessage:
    """A record of the DLQ topic: an event's dead letter, as the score role writes it."""
    event = RawMessage(raw, b"k", "llm.events", partition, 40 + offset, 1_700_000_000_000)
    letter = dead_letter(event, "json", "malformed JSON", 1_700_000_000_500)
    return message(msgspec.json.encode(letter), DLQ, offset)


def test_poison_on_the_dlq_topic_is_stored_as_its_own_dead_letter(
    settings: Settings, storage: FakeStorage
) -> None:
    storage.refuse = lambda table, row: column(table, row, "partition") < 0
    sink = new_sink(settings)
    messages = [dlq_message(0), message(b"not json {", DLQ, 1), dlq_message(2, partition=-1)]
    asyncio.run(sink.write(KIND_DEAD_LETTERS, messages, no_dead_letters))

    stored = {
        (column("dead_letters", r, "topic"), column("dead_letters", r, "offset")):
        column("dead_letters", r, "reason") for r in storage.rows["dead_letters"]
    }  # fmt: skip
    assert stored == {
        ("llm.events", 40): "json",  # the valid dead letter, as it was
        (DLQ, 1): "undecodable_dead_letter",  # the poison records, under their own origin
        (DLQ, 2): "refused_dead_letter",
    }
    metrics = sink.metrics
    for reason in ("undecodable_dead_letter", "refused_dead_letter"):
        assert sample(metrics, "llm_monitor_internal_dead_letters_total",
                      topic=DLQ, reason=reason) == 1  # fmt: skip
    assert sample(metrics, "llm_monitor_sink_dropped_records_total", topic=DLQ) == 0


def test_a_dlq_record_that_cannot_be_stored_at_all_is_dropped_logged_and_counted(
    settings: Settings, storage: FakeStorage, caplog: pytest.LogCaptureFixture
) -> None:
    poison = ("POISON", "UE9JU09O")  # as is, and base64 in the DLQ record's JSON
    storage.refuse = lambda table, row: any(p in column(table, row, "raw") for p in poison)
    sink = new_sink(settings)
    messages = [dlq_message(0), dlq_message(1, raw=b"POISON")]
    asyncio.run(sink.write(KIND_DEAD_LETTERS, messages, no_dead_letters))
    assert storage.column("dead_letters", "offset") == [40]
    assert sample(sink.metrics, "llm_monitor_sink_dropped_records_total", topic=DLQ) == 1
    assert f"dropped {DLQ}[3]@1" in caplog.text


class BlockingScanner(PiiScanner):
    """Redaction that waits until ``released`` is set: a slow, huge dead letter."""

    def __init__(self, released: threading.Event) -> None:
        super().__init__()
        self.released = released

    def scan(self, text: str) -> list[PiiMatch]:
        self.released.wait(timeout=10)
        return super().scan(text)


def test_redacting_a_dead_letter_holds_no_lock_other_tables_wait_for(
    settings: Settings, storage: FakeStorage
) -> None:
    released = threading.Event()
    sink = new_sink(settings)
    sink._scanner = BlockingScanner(released)

    async def scenario() -> None:
        await sink.open()
        redacting = asyncio.create_task(
            sink.write(KIND_DEAD_LETTERS, [dlq_message(0)], no_dead_letters)
        )
        await asyncio.sleep(0.05)  # let it reach the redaction
        await asyncio.wait_for(
            sink.write(KIND_WINDOWS, window_messages([1]), no_dead_letters), timeout=5
        )
        assert not redacting.done()
        released.set()
        await redacting

    asyncio.run(scenario())
    assert [table for table, _ in storage.inserts] == ["windows", "dead_letters"]


async def cancel_mid_retry(sink: Sink, storage: FakeStorage, messages: list[RawMessage]) -> None:
    """Start a write, let it fail twice (so it is backing off between retries), cancel it."""
    task = asyncio.create_task(sink.write(KIND_SCORED, messages, no_dead_letters))

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
    interrupted = scored_messages("a", "b")

    storage.down = True
    first = new_sink(settings)
    asyncio.run(cancel_mid_retry(first, storage, interrupted))
    assert storage.rows == {}
    assert [entry for _, entry in first.spool.entries()] == [SpoolEntry(KIND_SCORED, interrupted)]
    assert sample(first.metrics, "llm_monitor_sink_errors_total", table="events") == (
        storage.failures
    )

    storage.down = False
    second = new_sink(settings)  # the next worker, on the same data dir
    asyncio.run(second.write(KIND_SCORED, scored_messages("c"), no_dead_letters))
    assert storage.dsns == [settings.storage_dsn] * 2
    assert storage.column("events", "request_id") == ["a", "b", "c"]  # the spool first
    assert sorted(storage.column("findings", "request_id")) == ["a", "b", "c"]
    assert list(second.spool.entries()) == []
    assert sample(second.metrics, "llm_monitor_sink_rows_total", table="events") == 3


def test_a_spool_left_by_a_crash_is_replayed_when_the_sink_opens(
    settings: Settings, storage: FakeStorage
) -> None:
    sink = new_sink(settings)
    sink.spool.save(KIND_SCORED, scored_messages("x"))
    asyncio.run(sink.start())
    assert storage.column("events", "request_id") == ["x"]
    assert list(sink.spool.entries()) == []
    asyncio.run(sink.open())  # opening again replays nothing twice
    assert storage.column("events", "request_id") == ["x"]


def quarantined(sink: Sink) -> list[str]:
    return sorted(path.name for path in sink.spool.quarantine_dir.glob("*"))


def test_an_unreadable_spool_entry_is_quarantined_and_the_sink_opens(
    settings: Settings, storage: FakeStorage, caplog: pytest.LogCaptureFixture
) -> None:
    sink = new_sink(settings)
    corrupt = sink.spool.save(KIND_SCORED, [])
    corrupt.write_bytes(b"\x93 truncated")
    unknown = sink.spool.save("no-such-kind", scored_messages("u"))
    good = sink.spool.save(KIND_SCORED, scored_messages("g"))

    asyncio.run(sink.open())
    assert storage.column("events", "request_id") == ["g"]  # later entries still replayed
    assert sink.spool.paths() == []
    assert quarantined(sink) == sorted([corrupt.name, unknown.name])
    assert not good.exists()
    assert sample(sink.metrics, "llm_monitor_spool_quarantined_total", reason="unreadable") == 2
    assert "spool/quarantine" in caplog.text and "msgspec.msgpack.decode" in caplog.text


def test_a_spool_entry_with_refused_rows_stores_the_rest_and_is_quarantined(
    settings: Settings, storage: FakeStorage
) -> None:
    storage.refuse = lambda table, row: column(table, row, "events") < 0
    sink = new_sink(settings)
    entry = sink.spool.save(KIND_WINDOWS, window_messages([1, -1, 3]))
    asyncio.run(sink.open())
    assert storage.column("windows", "events") == [1, 3]
    assert quarantined(sink) == [entry.name]
    assert sample(sink.metrics, "llm_monitor_spool_quarantined_total", reason="refused") == 1


def test_a_transient_failure_while_replaying_keeps_the_entry_for_the_next_open(
    settings: Settings, storage: FakeStorage
) -> None:
    sink = new_sink(settings)
    entry = sink.spool.save(KIND_WINDOWS, window_messages([7]))
    storage.down = 1
    with pytest.raises(OperationalError):
        asyncio.run(sink.open())
    assert sink.spool.paths() == [entry] and quarantined(sink) == []
    assert storage.closed == 1  # the next open connects afresh

    asyncio.run(sink.write(KIND_WINDOWS, window_messages([8]), no_dead_letters))
    assert storage.column("windows", "events") == [7, 8]
    assert sink.spool.paths() == []


def test_a_spool_entry_of_raw_values_from_before_is_replayed(
    settings: Settings, storage: FakeStorage
) -> None:
    sink = new_sink(settings)
    values = [m.value for m in window_messages([4, 5])]
    path = sink.spool.directory / "00000000000000000001-windows-old.msgpack"
    path.parent.mkdir(parents=True)
    path.write_bytes(msgspec.msgpack.encode({"kind": KIND_WINDOWS, "values": values}))
    asyncio.run(sink.open())
    assert storage.column("windows", "events") == [4, 5]
    assert sink.spool.paths() == []
