"""Real ClickHouse engine (chdb on disk): migrations, writer, replays that collapse."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from detectors.base import DetectorRegistry
from detectors.latency_errors import LatencyErrorsDetector
from detectors.pii import PiiDetector
from monitor.config import StorageSettings
from monitor.ingest.decode import RawMessage, dead_letter
from monitor.scoring.pipeline import Pipeline
from monitor.storage.client import connect, redact_dsn
from monitor.storage.migrate import migrate
from monitor.storage.writer import ClickHouseWriter
from monitor.windows.stats import finalise

# Times outside DateTime's range (1970 to 2106) or at its edge: a TTL of toDateTime(t) + n days
# wrapped for each and deleted the row as soon as it was stored.
EDGE_TIMES_MS = {
    "1900": -2_208_988_800_000,
    "1969": -1_000,
    "epoch": 0,
    "2106": 4_294_967_295_000,
    "2299": 10_413_791_999_000,
    "9999": 253_402_214_400_000,
}

pytestmark = pytest.mark.integration


def test_storage_round_trip_and_idempotent_replay(tmp_path: Path) -> None:
    client = connect(f"chdb://{tmp_path / 'chdb'}")
    applied = migrate(client, StorageSettings())
    assert applied[0] == "0001_initial"
    assert applied == sorted(applied)
    assert migrate(client, StorageSettings()) == []

    pipeline = Pipeline(DetectorRegistry([PiiDetector(), LatencyErrorsDetector()]))
    messages = [
        RawMessage(
            json.dumps(
                {
                    "request_id": f"r{i}",
                    "timestamp": 1_795_514_400_000 + i,
                    "model": "m",
                    "model_version": "v",
                    "prompt": "x",
                    "latency_ms": 10.0 + i,
                    "response": "reach me at eve@example.com",
                    "status": "ok",
                }
            ).encode(),
            None,
            "llm.events",
            0,
            i,
            1_795_514_400_000,
        )  # fmt: skip
        for i in range(50)
    ] + [RawMessage(b"not json, from bob@example.com", None, "llm.events", 0, 99, 0)]
    result = pipeline.process(messages)
    writer = ClickHouseWriter(client, "llm_monitor")
    for _ in range(2):  # a replay after a crash writes the same rows again
        writer.write_events(result.scored.events)
        writer.write_findings(result.scored.findings)
        writer.write_dead_letters(result.dead_letters)
        writer.write_windows([finalise(p, is_final=True, version=1) for p in result.partials])

    def one(sql: str) -> object:
        return client.query(sql).result_rows[0][0]

    assert one("SELECT count() FROM llm_monitor.events FINAL") == 50
    assert one("SELECT count() FROM llm_monitor.findings FINAL WHERE category = 'leak'") == 50
    assert one("SELECT count() FROM llm_monitor.windows FINAL") == 1
    assert one("SELECT raw FROM llm_monitor.dead_letters FINAL") == "not json, from <EMAIL>"
    assert one("SELECT raw_bytes FROM llm_monitor.dead_letters FINAL") == 30
    # Epoch milliseconds go in as DateTime64(3) ticks: the stored time is the event's, exactly.
    first = "SELECT toUnixTimestamp64Milli(min(event_time)) FROM llm_monitor.events FINAL"
    assert one(first) == 1_795_514_400_000
    assert one("SELECT countIf(response LIKE '%@%') FROM llm_monitor.events FINAL") == 0
    rows = client.query(
        "SELECT count() FROM llm_monitor.events FINAL WHERE model = {m:String}",
        parameters={"m": "m"},
    ).result_rows
    assert rows == [(50,)]
    client.close()


def test_dsn_passwords_are_not_logged() -> None:
    assert (
        redact_dsn("https://svc:s3cret@ch.example:8443/db") == "https://svc:***@ch.example:8443/db"
    )
    assert redact_dsn("chdb:///data/chdb") == "chdb:///data/chdb"


def test_rows_with_times_outside_datetime_are_kept_whole_by_the_ttls(tmp_path: Path) -> None:
    client = connect(f"chdb://{tmp_path / 'chdb'}")
    migrate(client, StorageSettings())
    pipeline = Pipeline(DetectorRegistry([PiiDetector()]))
    body = {"request_id": "r", "timestamp": 1_795_514_400_000, "model": "m",
            "model_version": "v", "prompt": "hello", "response": "mail eve@example.com"}  # fmt: skip
    result = pipeline.process([RawMessage(json.dumps(body).encode(), None, "llm.events", 0, 0, 0)])
    event, finding = result.scored.events[0], result.scored.findings[0]
    window = finalise(result.partials[0], is_final=True, version=1)
    bad = RawMessage(b"{not json", None, "llm.events", 0, 0, 0)
    writer = ClickHouseWriter(client, "llm_monitor")
    replace = msgspec.structs.replace
    for name, ms in EDGE_TIMES_MS.items():
        writer.write_events([replace(event, request_id=name, event_time_ms=ms)])
        renamed = replace(finding.finding, request_id=name)
        writer.write_findings([replace(finding, finding=renamed, event_time_ms=ms)])
        writer.write_windows([replace(window, model=name, window_start_ms=ms)])
        letter = dead_letter(replace(bad, offset=ms % 1000), "json", "bad", ms)
        writer.write_dead_letters([replace(letter, key=name.encode())])
    for table in ("events", "findings", "windows", "dead_letters"):
        client.command(f"OPTIMIZE TABLE llm_monitor.{table} FINAL")  # applies TTLs now

    def names(sql: str) -> list[str]:
        return sorted(str(row[0]) for row in client.query(sql).result_rows)

    expected = sorted(EDGE_TIMES_MS)
    assert names("SELECT request_id FROM llm_monitor.events WHERE prompt = 'hello'") == expected
    assert names("SELECT request_id FROM llm_monitor.findings") == expected
    assert names("SELECT model FROM llm_monitor.windows") == expected
    assert names("SELECT key FROM llm_monitor.dead_letters WHERE raw = '{not json'") == expected
    client.close()
