"""Span ingest end to end: spans from the real OpenTelemetry SDK, encoded by its own OTLP
encoder, produced to a real broker in both encodings (and through ``demo --input-format
otlp-json``), read by a real worker, stored in chdb: one event per GenAI span, none for the
other spans, fields mapped, the leak flagged and redacted, records refused with their bytes.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from monitor.client import produce
from monitor.ingest.otlp import REASON_INVALID_OTLP, SPANS_PER_RECORD
from tests.conftest import WorkerHarness
from tests.genai_spans import LEAKED_EMAIL, Expected, Traffic, traffic

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

TOPIC = "otlp_spans"
DAY_NS = 86_400 * 1_000_000_000


def query(data_dir: Path, sql: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-m", "monitor.cli", "query", sql, "--format", "json",
         "--data-dir", str(data_dir)],  # fmt: skip
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    rows: list[dict[str, Any]] = json.loads(out.stdout.strip().splitlines()[-1])
    return rows


def scalar(data_dir: Path, sql: str) -> Any:
    return next(iter(query(data_dir, sql)[0].values()))


def stored_rows(data_dir: Path, mixes: list[Traffic]) -> dict[str, dict[str, Any]]:
    ids = {e.request_id for mix in mixes for e in mix.expected}
    rows = query(
        data_dir,
        "SELECT request_id, model, model_version, deployment, route, app, latency_ms, ttft_ms, "
        "input_tokens, output_tokens, status, error_type, prompt, response, pii_types "
        "FROM llm_monitor.events FINAL",
    )
    return {row["request_id"]: row for row in rows if row["request_id"] in ids}


def check_mapped(rows: dict[str, dict[str, Any]], expected: list[Expected]) -> None:
    """Every GenAI span's row holds what its span says (content as stored: redacted)."""
    for item in expected:
        row = rows[item.request_id]
        for name, value in item.fields.items():
            if name == "leak":
                assert LEAKED_EMAIL not in row["response"]
                assert "EMAIL" in row["pii_types"]
            elif name == "prompt":
                assert row["prompt"] == value
            elif name == "response":
                assert row["response"] == (value or "")
            elif name == "attributes":
                continue  # checked in the unit tests; the Map column reads back as text here
            elif name == "error_type":
                assert row["error_type"] == (value or "")
            else:
                assert row[name] == value, (item.request_id, name, row[name], value)


def test_both_encodings_end_to_end(workers: WorkerHarness) -> None:
    protobuf, as_json = traffic(3), traffic(3)  # distinct spans per encoding
    stale = traffic(1, start_ns=time.time_ns() - 30 * DAY_NS)  # older than max_event_age_s
    records = [
        *[(b"", r) for r in protobuf.proto_records()],
        *[(b"", r) for r in as_json.json_records()],
        (b"", b"not an OTLP record"),
        *[(b"", r) for r in stale.proto_records()],
    ]
    expected = protobuf.genai_spans + as_json.genai_spans
    refused = 1 + stale.genai_spans  # the record, and each stale span's event
    workers.start()
    asyncio.run(produce(workers.bootstrap, TOPIC, records))
    workers.wait_for(
        lambda: (
            workers.metric("llm_monitor_sink_rows_total", table="events") >= expected
            and workers.metric("llm_monitor_sink_rows_total", table="dead_letters") >= refused
            and workers.metric("llm_monitor_aggregate_events_total") >= expected
        ),
        what=f"{expected} span events stored and aggregated, {refused} dead letters stored",
    )
    workers.wait_windows_stored()
    others = protobuf.other_spans + as_json.other_spans + stale.other_spans
    assert workers.metric("llm_monitor_otlp_spans_total", outcome="ignored") == others
    assert workers.metric("llm_monitor_otlp_spans_total", outcome="event") == (
        expected + stale.genai_spans
    )
    assert workers.metric("llm_monitor_dead_letters_total", reason=REASON_INVALID_OTLP) == 1
    assert workers.metric("llm_monitor_dead_letters_total", reason="timestamp_out_of_range") == (
        stale.genai_spans
    )
    workers.stop_all()

    data = workers.data_dir
    assert scalar(data, "SELECT count() FROM llm_monitor.events FINAL") == expected
    rows = stored_rows(data, [protobuf, as_json])
    assert len(rows) == expected
    check_mapped(rows, protobuf.expected + as_json.expected)
    leaks = query(
        data,
        "SELECT request_id FROM llm_monitor.findings FINAL "
        "WHERE detector = 'pii' AND category = 'leak' AND flagged",
    )
    leaked = {
        e.request_id for mix in (protobuf, as_json) for e in mix.expected if "leak" in e.fields
    }
    assert {r["request_id"] for r in leaks} == leaked
    assert scalar(data, "SELECT sum(events) FROM llm_monitor.windows FINAL") == expected
    letters = query(
        data,
        "SELECT offset, reason, raw FROM llm_monitor.dead_letters FINAL "
        "WHERE topic = 'otlp_spans' ORDER BY offset",
    )
    assert len(letters) == refused  # a record's refused spans are rows of their own
    [record] = [row for row in letters if row["reason"] == REASON_INVALID_OTLP]
    assert record["raw"] == "not an OTLP record"
    assert record["offset"] % SPANS_PER_RECORD == 0

    # The same records published again: the rows collapse (request id = trace id + span id).
    workers.start()
    asyncio.run(produce(workers.bootstrap, TOPIC, records))
    workers.wait_for(
        lambda: workers.metric("llm_monitor_sink_rows_total", table="events") >= expected,
        what="the republished span events stored again",
    )
    workers.stop_all()
    assert scalar(data, "SELECT count() FROM llm_monitor.events FINAL") == expected


def test_demo_reads_otlp_json_lines(tmp_path: Path) -> None:
    """The issue's acceptance run: a file of OTLP/JSON lines from the real SDK through
    ``llm-monitor demo --input-format otlp-json`` (bundled broker, real worker, chdb)."""
    mix = traffic(2)
    path = tmp_path / "spans.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in mix.json_records()))
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if "KAFKA_BOOTSTRAP_SERVERS" not in k}
    env["HF_HUB_OFFLINE"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "monitor.cli", "demo", "--input", str(path),
         "--input-format", "otlp-json", "--no-semantic", "--data-dir", str(data)],  # fmt: skip
        capture_output=True, text=True, timeout=280, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert scalar(data, "SELECT count() FROM llm_monitor.events FINAL") == mix.genai_spans
    assert scalar(data, "SELECT count() FROM llm_monitor.events") == mix.genai_spans
    check_mapped(stored_rows(data, [mix]), mix.expected)
    assert scalar(data, "SELECT count() FROM llm_monitor.dead_letters FINAL") == 0
    flagged = scalar(
        data,
        "SELECT count() FROM llm_monitor.findings FINAL "
        "WHERE detector = 'pii' AND category = 'leak' AND flagged",
    )
    assert flagged == sum("leak" in e.fields for e in mix.expected) > 0


def test_span_events_reach_the_embed_role(workers: WorkerHarness) -> None:
    """With a semantic detector on, span events are forwarded to the embed role under their own
    source (the OTLP topic, their positions): each scored once, beside llm.events traffic."""
    from monitor.devtools.generate import generate_events

    mix = traffic(3)
    events = list(generate_events(200, seed=3, bad_fraction=0.0))
    workers.env_overrides.update({
        "LLM_MONITOR_DETECTORS__TOXICITY__ENABLED": "true",
        "LLM_MONITOR_DETECTORS__EMBEDDING__DEVICE": "cpu",
    })  # fmt: skip
    workers.start()
    asyncio.run(produce(workers.bootstrap, "llm.events", events))
    asyncio.run(produce(workers.bootstrap, TOPIC, [(b"", r) for r in mix.proto_records()]))
    total = len(events) + mix.genai_spans
    workers.wait_for(
        lambda: (
            workers.metric("llm_monitor_embed_batch_events_sum") >= total
            and workers.metric("llm_monitor_sink_rows_total", table="events") >= total
            and workers.metric("llm_monitor_aggregate_events_total") >= total
        ),
        timeout_s=240,
        what=f"{total} events through the embed role, stored and aggregated",
    )
    workers.wait_for(
        lambda: workers.uncommitted(("llm.scored", "llm.partials")) == 0,
        timeout_s=120,
        what="the embed role's findings stored and its partials merged",
    )
    workers.wait_windows_stored()
    assert workers.metric("llm_monitor_internal_dead_letters_total") == 0
    assert workers.metric("llm_monitor_embed_batch_events_sum") == total
    workers.stop_all()

    data = workers.data_dir
    ids = {e.request_id for e in mix.expected}
    answered = [
        r["request_id"]
        for r in query(data, "SELECT request_id FROM llm_monitor.events FINAL WHERE response != ''")
        if r["request_id"] in ids
    ]
    scored = [
        r["request_id"]
        for r in query(
            data, "SELECT request_id FROM llm_monitor.findings FINAL WHERE detector = 'toxicity'"
        )
        if r["request_id"] in ids
    ]
    assert sorted(scored) == sorted(answered) and answered
    assert scalar(data, "SELECT sum(events) FROM llm_monitor.windows FINAL") == total
