"""Real ClickHouse engine (chdb on disk): migrations, writer, replays that collapse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detectors.base import DetectorRegistry
from detectors.latency_errors import LatencyErrorsDetector
from detectors.pii import PiiDetector
from monitor.config import StorageSettings
from monitor.ingest.decode import RawMessage
from monitor.scoring.pipeline import Pipeline
from monitor.storage.client import connect, redact_dsn
from monitor.storage.migrate import migrate
from monitor.storage.writer import ClickHouseWriter
from monitor.windows.stats import finalise

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
