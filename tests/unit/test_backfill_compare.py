"""compare: the 2x2 table per model version, its rates and kappa, coverage, examples.

A live version's findings are seeded into ``findings`` as the sink stores them; the other
version is backfilled for real. ``latency_errors`` returns findings only for the events it
flags, so "no finding" must count as "not flagged", inside the span both versions covered.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from detectors.latency_errors import LatencyErrorsDetector
from monitor.config import StorageSettings
from monitor.history.backfill import Backfill
from monitor.history.checkpoint import CheckpointStore
from monitor.history.compare import Agreement, cohen_kappa, compare, pooled, stored_versions
from monitor.history.errors import HistoryError
from monitor.history.reader import EventRange, EventReader
from monitor.scoring.rows import EventRow, FindingRow
from monitor.storage.client import connect
from monitor.storage.migrate import migrate
from monitor.storage.writer import ClickHouseWriter
from tests.unit.test_backfill import DB, T0, event_row

ALL = EventRange(T0 - 1, T0 + 10_000_000)


@pytest.mark.parametrize(
    ("both", "a_only", "b_only", "neither", "kappa"),
    [
        (20, 5, 10, 15, 0.4),  # po 0.7, pe 0.5*0.6 + 0.5*0.4 = 0.5
        (10, 0, 0, 40, 1.0),  # perfect agreement
        (0, 25, 25, 0, -1.0),  # perfect disagreement at equal rates
        (5, 5, 5, 5, 0.0),  # chance level
        (0, 0, 0, 30, None),  # nobody flags anything: chance agreement is 1
        (0, 0, 0, 0, None),  # no events
    ],
)
def test_cohen_kappa(
    both: int, a_only: int, b_only: int, neither: int, kappa: float | None
) -> None:
    got = cohen_kappa(both, a_only, b_only, neither)
    assert got == (None if kappa is None else pytest.approx(kappa))


def test_agreement_rates_and_pooling() -> None:
    row = Agreement("m", "v", events=50, scored_by_both=20, both_flagged=20, a_only=5, b_only=10)
    assert row.neither == 15
    assert row.agreement == pytest.approx(0.7)
    assert row.flag_rate_a == pytest.approx(0.5) and row.flag_rate_b == pytest.approx(0.6)
    assert row.difference == pytest.approx(0.1)
    assert row.kappa == pytest.approx(0.4)
    other = Agreement("m", "w", events=10, scored_by_both=0, both_flagged=0, a_only=0, b_only=0)
    assert other.kappa is None and other.agreement == 1.0 and other.difference == 0.0
    total = pooled([row, other])
    assert (total.events, total.both_flagged, total.neither) == (60, 20, 25)
    empty = pooled([])
    assert (empty.agreement, empty.flag_rate_a, empty.difference) == (None, None, None)
    with pytest.raises(ValueError, match="inconsistent"):
        Agreement("m", "v", events=3, scored_by_both=0, both_flagged=2, a_only=2, b_only=0)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    opened = connect(f"chdb://{tmp_path / 'chdb'}")
    migrate(opened, StorageSettings())
    yield opened
    opened.close()


def seeded(client: Client) -> list[EventRow]:
    """Two interleaved series; each starts and ends with an error (flagged by every version,
    so the live findings span the whole series); latencies spread over 0-3 s."""
    rows = []
    for i in range(50):
        series, k = ("v1", i) if i < 30 else ("v2", i - 30)
        last = k == (29 if series == "v1" else 19)
        rows.append(
            event_row(i, t=T0 + 10 * k + (5 if series == "v2" else 0), version=series,
                      latency_ms=float((i * 370) % 3000),
                      status="error" if k == 0 or last else "ok")
        )  # fmt: skip
    ClickHouseWriter(client, DB).write_events(rows)
    live = LatencyErrorsDetector(slow_ms=1000.0)  # version "1.0.0", stored by the sink
    events = EventReader(client, DB, page_size=100).page(ALL)
    ClickHouseWriter(client, DB).write_findings(
        [FindingRow.of(f, e) for e in events for f in live.score([e])]
    )
    return rows


def flags(row: EventRow, slow_ms: float) -> bool:
    return row.status != "ok" or (row.latency_ms or 0.0) > slow_ms


def backfill(client: Client, slow_ms: float, label: str, pages: int | None = None) -> None:
    job = Backfill(client, DB, LatencyErrorsDetector(slow_ms=slow_ms), CheckpointStore(client, DB),
                   detector_version=label, page_size=10)  # fmt: skip
    for _ in itertools.islice(job.run(ALL, job.resume(ALL)), pages):
        pass


def table(rows: list[EventRow], slow_a: float, slow_b: float) -> tuple[int, int, int, int]:
    """(events, both, a only, b only) computed directly from the seeded rows."""
    a = [flags(r, slow_a) for r in rows]
    b = [flags(r, slow_b) for r in rows]
    pairs = list(zip(a, b, strict=True))
    return (len(rows), pairs.count((True, True)), pairs.count((True, False)),
            pairs.count((False, True)))  # fmt: skip


def test_live_against_backfilled_version_per_model_version(client: Client) -> None:
    rows = seeded(client)
    backfill(client, 2000.0, "2.0.0")
    result = compare(client, DB, "latency_errors", "1.0.0", "2.0.0", examples=3)
    by = {r.model_version: r for r in result.by_model_version}
    assert sorted(by) == ["v1", "v2"]
    for version in ("v1", "v2"):
        series = [r for r in rows if r.model_version == version]
        got = by[version]
        assert (got.events, got.both_flagged, got.a_only, got.b_only) == table(series, 1000, 2000)
        assert got.b_only == 0  # a higher threshold never flags more
        assert got.scored_by_both == got.both_flagged  # only flagged events have findings
    assert result.overall.events == 50
    assert result.overall.difference is not None and result.overall.difference < 0
    # Examples: disagreements only, at most 3 per model version, largest score gap first.
    assert {e.model_version for e in result.examples} == {"v1", "v2"}
    assert all(e.flagged_a and not e.flagged_b for e in result.examples)
    assert max(sum(e.model_version == v for e in result.examples) for v in by) == 3
    gaps = [e.score_a - e.score_b for e in result.examples if e.model_version == "v1"]
    assert gaps == sorted(gaps, reverse=True)
    swapped = compare(client, DB, "latency_errors", "2.0.0", "1.0.0", examples=0)
    assert swapped.overall.difference == pytest.approx(-result.overall.difference)
    assert swapped.overall.kappa == pytest.approx(result.overall.kappa)
    assert swapped.examples == []


def test_same_detector_rerun_agrees_completely(client: Client) -> None:
    seeded(client)
    backfill(client, 1000.0, "1.0.0-rerun")
    overall = compare(client, DB, "latency_errors", "1.0.0", "1.0.0-rerun").overall
    assert (overall.events, overall.agreement, overall.kappa) == (50, 1.0, 1.0)


def test_a_version_that_flags_nothing_is_compared_over_what_it_scored(client: Client) -> None:
    rows = seeded(client)
    # Statuses flag whatever the threshold: a version that only looks at errors.
    backfill(client, 1e9, "errors-only")
    overall = compare(client, DB, "latency_errors", "1.0.0", "errors-only").overall
    assert overall.events == 50
    assert overall.flag_rate_b == pytest.approx(sum(r.status != "ok" for r in rows) / 50)
    assert overall.b_only == 0


def test_only_the_span_both_versions_covered_is_compared(client: Client) -> None:
    rows = seeded(client)
    backfill(client, 2000.0, "2.0.0", pages=2)  # 20 events in (time, id) order, then stopped
    done = sorted(rows, key=lambda r: (r.event_time_ms, r.request_id))[:20]
    until = done[-1].event_time_ms
    result = compare(client, DB, "latency_errors", "1.0.0", "2.0.0")
    assert result.overall.events == 20
    for got in result.by_model_version:
        series = [r for r in rows if r.model_version == got.model_version]
        covered = [r for r in series if r.event_time_ms <= until]
        assert (got.events, got.both_flagged, got.a_only, got.b_only) == table(covered, 1000, 2000)


def test_model_and_since_filters(client: Client) -> None:
    seeded(client)
    backfill(client, 2000.0, "2.0.0")
    assert (
        compare(client, DB, "latency_errors", "1.0.0", "2.0.0", model="other").overall.events == 0
    )
    late = compare(client, DB, "latency_errors", "1.0.0", "2.0.0", since_ms=T0 + 150)
    # Filtered findings move the live version's first finding too: at most the later events.
    assert 0 < late.overall.events <= 50 - 15 - 15


def test_versions_must_differ_and_exist(client: Client) -> None:
    seeded(client)
    backfill(client, 2000.0, "2.0.0")
    with pytest.raises(HistoryError, match="twice"):
        compare(client, DB, "latency_errors", "1.0.0", "1.0.0")
    with pytest.raises(HistoryError, match=r"'9\.9'.*stored versions: 1\.0\.0, 2\.0\.0"):
        compare(client, DB, "latency_errors", "1.0.0", "9.9")
    found = {(v.detector_version, v.table) for v in stored_versions(client, DB, "latency_errors")}
    assert found == {("1.0.0", "findings"), ("2.0.0", "findings_versions")}
