"""Backfill on a real chdb: keyset pages, checkpoints that resume, idempotent findings.

Events are seeded through the writer, as the sink stores them; the detector is the real
``latency_errors`` (cheap, deterministic), so a "new version" is a new ``slow_ms``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from detectors.base import Finding
from detectors.latency_errors import LatencyErrorsDetector
from monitor.config import StorageSettings, load_settings
from monitor.history.backfill import Backfill, missed_by_resume
from monitor.history.checkpoint import Checkpoint, CheckpointStore, Position
from monitor.history.errors import HistoryError
from monitor.history.reader import EventRange, EventReader, event_of, position_of
from monitor.history.scorer import batch_detector_names, only
from monitor.history.storage import VERSIONS_TABLE, chdb_holder, write_versioned
from monitor.scoring.rows import EventRow, FindingRow
from monitor.storage.client import connect
from monitor.storage.migrate import migrate
from monitor.storage.writer import ClickHouseWriter

DB = "llm_monitor"
T0 = 1_795_514_400_000  # 2026-11-24; within any TTL while these tests are relevant


def event_row(i: int, *, t: int | None = None, model: str = "m", version: str = "v1",
              latency_ms: float | None = None, status: str = "ok", **fields: object) -> EventRow:  # fmt: skip
    base: dict[str, object] = {
        "request_id": f"r{i:03d}", "event_time_ms": T0 + i * 10 if t is None else t,
        "produced_at_ms": T0, "model": model, "model_version": version,
        "deployment": "stable", "route": "/chat", "app": "a", "prompt": f"p{i}",
        "response": f"answer {i}", "samples": [], "context": [],
        "latency_ms": 100.0 * i if latency_ms is None else latency_ms, "ttft_ms": None,
        "input_tokens": 1, "output_tokens": 2, "cost_usd": None, "status": status,
        "error_type": "", "attributes": {}, "complaint": False, "rating": None, "extra": {},
        "redacted": True, "pii_types": [],
    }  # fmt: skip
    return EventRow(**(base | fields))  # type: ignore[arg-type]


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    """A migrated chdb of its own, closed afterwards (one chdb path per process at a time)."""
    opened = connect(f"chdb://{tmp_path / 'chdb'}")
    migrate(opened, StorageSettings())
    yield opened
    opened.close()


def seed(client: Client, rows: list[EventRow]) -> None:
    ClickHouseWriter(client, DB).write_events(rows)


def everything() -> EventRange:
    return EventRange(T0 - 1, T0 + 10_000_000)


def versioned(client: Client, *, final: bool = True) -> list[tuple[str, str, int]]:
    rows = client.query(
        f"SELECT request_id, detector_version, flagged FROM {DB}.{VERSIONS_TABLE} "  # noqa: S608
        f"{'FINAL' if final else ''} ORDER BY request_id, detector_version"
    ).result_rows
    return [(str(r), str(v), int(f)) for r, v, f in rows]


def job(client: Client, slow_ms: float = 1000.0, **kwargs: object) -> Backfill:
    detector = LatencyErrorsDetector(slow_ms=slow_ms)
    return Backfill(client, DB, detector, CheckpointStore(client, DB), **kwargs)  # type: ignore[arg-type]


def test_pages_cover_the_range_in_key_order_once_each(client: Client) -> None:
    # Ties on event_time across models, inserted out of order, one event stored twice (replay).
    rows = [event_row(i, t=T0 + (i // 3) * 5, model="ab"[i % 2]) for i in range(23)]
    seed(client, rows[::-1])
    seed(client, [rows[4]])
    reader = EventReader(client, DB, page_size=5)
    pages = list(reader.pages(everything()))
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    keys = [(e.timestamp_ms, e.request_id) for p in pages for e in p]
    assert keys == sorted((r.event_time_ms, r.request_id) for r in rows)
    assert reader.count(everything()) == 23
    middle = position_of(pages[1][-1])
    assert reader.count(everything(), middle) == 13
    assert [e.request_id for e in reader.page(everything(), middle)] == [
        e.request_id for e in pages[2]
    ]


def test_a_full_last_page_ends_with_an_empty_read(client: Client) -> None:
    seed(client, [event_row(i) for i in range(10)])
    assert [len(p) for p in EventReader(client, DB, page_size=5).pages(everything())] == [5, 5]


def test_range_bounds_and_model_filter(client: Client) -> None:
    seed(client, [event_row(i, model="ab"[i % 2]) for i in range(10)])  # t = T0 + 10 i
    reader = EventReader(client, DB, page_size=100)
    window = EventRange(T0 + 20, T0 + 70)  # i = 2..6: since inclusive, until exclusive
    assert [e.request_id for e in reader.page(window)] == [f"r{i:03d}" for i in range(2, 7)]
    only_b = EventRange(T0, T0 + 1000, model="b")
    assert [e.request_id for e in reader.page(only_b)] == [f"r{i:03d}" for i in (1, 3, 5, 7, 9)]
    # A position before the range (a checkpoint from a wider run) starts at the range.
    assert len(reader.page(window, Position(T0 - 500, "zzz"))) == 5


def test_stored_rows_read_back_as_events() -> None:
    row = (
        "r1", T0, "m", "v", "canary", "/chat", "app", "", "", ["s"], ["c"], 12.5, None, 3, None,
        0.01, "error", "", {"group": "x"}, 1, 4.0, {"k": "v"},
    )  # fmt: skip
    event = event_of(row)
    assert event.timestamp_ms == T0
    assert (event.prompt, event.response, event.error_type) == (None, None, None)
    assert event.prompt_text == ""
    assert event.feedback is not None and event.feedback.complaint and event.feedback.rating == 4
    assert (event.status, event.samples, event.context) == ("error", ["s"], ["c"])
    assert (event.attributes, event.extra, event.deployment) == (
        {"group": "x"},
        {"k": "v"},
        "canary",
    )
    plain = event_of(("r2", T0, "m", "v", "", "", "", "hi", "yo", [], [], None, None, None,
                      None, None, "ok", "", {}, 0, None, {}))  # fmt: skip
    assert (plain.prompt, plain.response, plain.feedback) == ("hi", "yo", None)


def test_backfill_labels_findings_and_leaves_live_findings_alone(client: Client) -> None:
    rows = [event_row(i) for i in range(30)]  # latency 0 .. 2900 ms
    seed(client, rows)
    live = LatencyErrorsDetector(slow_ms=1000.0)
    by_id = {r.request_id: r for r in rows}
    events = EventReader(client, DB, page_size=100).page(everything())
    live_rows = [FindingRow.of(f, e) for e in events for f in live.score([e])]
    ClickHouseWriter(client, DB).write_findings(live_rows)

    backfill = job(client, slow_ms=2000.0, detector_version="2.0.0-slow2s", page_size=7)
    checkpoint = backfill.resume(everything())
    assert backfill.remaining(everything(), checkpoint) == 30
    final = list(backfill.run(everything(), checkpoint))[-1]

    expected = [(r, "2.0.0-slow2s", 1) for r in sorted(by_id) if by_id[r].latency_ms > 2000]  # type: ignore[operator]
    assert versioned(client) == expected
    assert (final.events, final.findings, final.flagged) == (30, 9, 9)
    assert final.position == Position(rows[-1].event_time_ms, rows[-1].request_id)
    live_now = client.query(f"SELECT count() FROM {DB}.findings FINAL").result_rows[0][0]  # noqa: S608
    assert live_now == len(live_rows) == 19


def test_default_label_is_the_detectors_version(client: Client) -> None:
    seed(client, [event_row(i) for i in range(12)])
    backfill = job(client)
    list(backfill.run(everything(), backfill.resume(everything())))
    assert {v for _, v, _ in versioned(client)} == {LatencyErrorsDetector.version}


def test_an_interrupted_backfill_resumes_where_it_stopped(client: Client) -> None:
    seed(client, [event_row(i) for i in range(40)])
    first = job(client, page_size=6, detector_version="x")
    # Three pages, then the process "dies".
    *_, checkpoint = itertools.islice(first.run(everything(), first.resume(everything())), 3)
    assert checkpoint.events == 18

    again = job(client, page_size=6, detector_version="x")  # a new process
    resumed = again.resume(everything())
    assert resumed == checkpoint
    assert again.remaining(everything(), resumed) == 22
    pages = list(again.run(everything(), resumed))
    assert len(pages) == 4  # 22 events: 6 + 6 + 6 + 4
    assert (pages[-1].events, pages[-1].findings) == (40, 29)  # slower than 1000 ms
    assert [r for r, _, _ in versioned(client)] == [f"r{i:03d}" for i in range(11, 40)]
    # Done: a rerun reads nothing and changes nothing.
    assert list(again.run(everything(), again.resume(everything()))) == []


def test_reruns_and_restarts_do_not_duplicate_findings(client: Client) -> None:
    seed(client, [event_row(i) for i in range(20)])
    for restart in (False, True, True):
        backfill = job(client, page_size=8, detector_version="x")
        list(backfill.run(everything(), backfill.resume(everything(), restart=restart)))
    # A crash between a page's insert and its checkpoint: the same rows inserted again.
    repeat = backfill.score(EventReader(client, DB).page(everything()))
    write_versioned(client, DB, repeat)
    assert len(versioned(client)) == 9  # slower than 1000 ms: r011 .. r019
    client.command(f"OPTIMIZE TABLE {DB}.{VERSIONS_TABLE} FINAL")
    assert len(versioned(client, final=False)) == 9
    latest = CheckpointStore(client, DB).load("latency_errors", "x")
    assert (
        latest is not None and latest.events == 20 and latest.revision == 11
    )  # (fresh + 3 pages) x 3


def test_restart_supersedes_the_checkpoint(client: Client) -> None:
    seed(client, [event_row(i) for i in range(9)])
    backfill = job(client, page_size=4, detector_version="x")
    list(backfill.run(everything(), backfill.resume(everything())))
    fresh = backfill.resume(everything(), restart=True)
    assert not fresh.started and fresh.events == 0
    assert CheckpointStore(client, DB).load("latency_errors", "x") == fresh


def test_checkpoints_are_kept_per_version_and_model_filter(client: Client) -> None:
    store = CheckpointStore(client, DB, clock=lambda: T0)
    a = store.save(Checkpoint.fresh("pii", "1", "", T0))
    b = store.save(Checkpoint.fresh("pii", "1", "m", T0))
    c = store.save(Checkpoint.fresh("pii", "2", "", T0).advanced(Position(T0 + 5, "r"), 3, 2, 1))
    assert store.load("pii", "1") == a
    assert store.load("pii", "1", "m") == b
    assert store.load("pii", "2") == c and c.updated_at_ms == T0 and c.revision == 1
    assert store.load("pii", "3") is None
    assert sorted(x.detector_version + x.model for x in store.all("pii")) == ["1", "1m", "2"]


def test_resuming_with_an_earlier_since_warns_of_the_gap() -> None:
    checkpoint = Checkpoint.fresh("d", "v", "", T0 + 100)
    assert not missed_by_resume(EventRange(T0, T0 + 1000), checkpoint)  # nothing read yet
    moved = checkpoint.advanced(Position(T0 + 200, "r"), 1, 0, 0)
    assert missed_by_resume(EventRange(T0, T0 + 1000), moved)
    assert not missed_by_resume(EventRange(T0 + 150, T0 + 1000), moved)


def test_findings_for_other_detectors_or_events_are_not_written(client: Client) -> None:
    class Chatty:
        name, version = "chatty", "1"

        def score(self, batch: object) -> list[Finding]:
            return [Finding("r000", "chatty", "1", 1.0, True, "c"),
                    Finding("r000", "other", "1", 1.0, True, "c"),
                    Finding("ghost", "chatty", "1", 1.0, True, "c")]  # fmt: skip

    seed(client, [event_row(0)])
    backfill = Backfill(client, DB, Chatty(), CheckpointStore(client, DB))
    rows = backfill.score(EventReader(client, DB).page(everything()))
    assert [(r.finding.request_id, r.finding.detector) for r in rows] == [("r000", "chatty")]


def test_constructor_and_range_validation(client: Client) -> None:
    with pytest.raises(ValueError, match="detector_version"):
        job(client, detector_version="")
    with pytest.raises(ValueError, match="page_size"):
        EventReader(client, DB, page_size=0)
    with pytest.raises(ValueError, match="until_ms"):
        EventRange(T0, T0)


def test_only_enables_the_named_detector() -> None:
    settings = load_settings().detectors
    assert batch_detector_names(settings) == (
        "pii", "latency_errors", "toxicity", "hallucination", "injection"
    )  # fmt: skip
    chosen = only(settings, "toxicity", "cpu")
    assert chosen.toxicity.enabled and not chosen.pii.enabled and not chosen.bias.enabled
    assert chosen.embedding.device == "cpu"
    for name, message in (("bias", "per-group"), ("drift", "stateful"), ("nope", "one of pii")):
        with pytest.raises(HistoryError, match=message):
            only(settings, name, "cpu")
    with pytest.raises(HistoryError, match="--device"):
        only(settings, "injection", "tpu")


def test_a_closed_or_unopened_chdb_is_not_held(tmp_path: Path, client: Client) -> None:
    assert chdb_holder(tmp_path / "never-opened") is None
    assert chdb_holder(tmp_path / "chdb") is None  # held, but by this very process
