"""Re-scoring history from the command line: ``backfill`` and ``compare`` (docs/history.md)."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import msgspec
import typer
from clickhouse_connect.driver.exceptions import ClickHouseError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from monitor.cli.common import DataDir, JsonFlag, console, err, fail, settings_for
from monitor.errors import MonitorError, StorageError

if TYPE_CHECKING:
    from monitor.history.checkpoint import Checkpoint
    from monitor.history.compare import Comparison, VersionFindings

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}

Detector = Annotated[
    str, typer.Option("--detector", help="pii, latency_errors, toxicity, hallucination, injection")
]
Since = Annotated[
    str | None,
    typer.Option(
        help="how far back, e.g. 12h, 7d, 2w (default: the text TTL, storage.text_ttl_days)"
    ),
]
Model = Annotated[str | None, typer.Option("--model", help="only this model (events.model)")]


def duration_ms(text: str) -> int:
    """``90s``, ``30m``, ``12h``, ``7d``, ``2w`` in milliseconds; MonitorError otherwise."""
    match = _DURATION.match(text)
    if match is None or int(match.group(1)) == 0:
        raise MonitorError(f"--since {text!r}: a positive number and a unit, e.g. 30m, 12h, 7d, 2w")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def backfill(
    detector: Detector,
    since: Since = None,
    model: Model = None,
    detector_version: Annotated[
        str | None,
        typer.Option(help="label the findings are stored under (default: the detector's)"),
    ] = None,
    restart: Annotated[
        bool, typer.Option("--restart", help="ignore the checkpoint and start over")
    ] = False,
    batch_size: Annotated[int, typer.Option(min=1, max=100_000, help="events per page")] = 256,
    device: Annotated[str, typer.Option(help="embeddings: cpu, auto, cuda or cuda:N")] = "cpu",
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Re-score stored events with a detector (a new version, or one newly enabled) and store
    its findings under a version label, resumably. Scores the text as stored: redacted."""
    from monitor.history.backfill import Backfill, missed_by_resume
    from monitor.history.checkpoint import CheckpointStore
    from monitor.history.reader import EventRange
    from monitor.history.scorer import load_detector, only
    from monitor.history.storage import VERSIONS_TABLE, open_store

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        settings = settings_for(data_dir)
        only(settings.detectors, detector, device)  # a bad name or device fails before any work
        ttl_days = settings.storage.text_ttl_days
        span_ms = duration_ms(since) if since else ttl_days * 86_400_000
        if span_ms > ttl_days * 86_400_000:
            err.print(
                f"[yellow]warning:[/] --since {since} reaches past the text TTL ({ttl_days} days): "
                "older events have no text left, text detectors score them as empty"
            )
        if detector == "pii":
            err.print(
                "[yellow]note:[/] stored text is redacted unless redaction was off: a pii "
                "backfill finds only what redaction left"
            )
        now = _now_ms()
        events = EventRange(now - span_ms, now + 1, model or "")
        client = open_store(settings, writable=True)
        store = CheckpointStore(client, settings.storage.database)
        loaded = load_detector(settings, detector, device=device)
    except MonitorError as exc:
        fail(exc)
    try:
        job = Backfill(
            client, settings.storage.database, loaded.detector, store,
            detector_version=detector_version, page_size=batch_size,
        )  # fmt: skip
        checkpoint = job.resume(events, restart=restart)
        if missed_by_resume(events, checkpoint):
            err.print(
                "[yellow]warning:[/] resuming a backfill that started later than --since: "
                "the events before its start are not read. Fix: --restart"
            )
        started = checkpoint
        total = job.remaining(events, started)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn())  # fmt: skip
        with Progress(*columns, console=err) as bar:
            task = bar.add_task(f"{detector} {job.detector_version}", total=total)
            for checkpoint in job.run(events, started):
                bar.update(task, completed=checkpoint.events - started.events)
    except MonitorError as exc:
        fail(exc)
    except ClickHouseError as exc:
        fail(StorageError(f"{_first_line(exc)}; rerun to resume from the checkpoint"))
    finally:
        loaded.close()
    summary = {
        "detector": checkpoint.detector, "detector_version": checkpoint.detector_version,
        "model": checkpoint.model or None, "table": f"{settings.storage.database}.{VERSIONS_TABLE}",
        "events": checkpoint.events, "findings": checkpoint.findings,
        "flagged": checkpoint.flagged, "events_this_run": checkpoint.events - started.events,
        "findings_this_run": checkpoint.findings - started.findings,
        "position": {"event_time_ms": checkpoint.position.event_time_ms,
                     "request_id": checkpoint.position.request_id},
    }  # fmt: skip
    if as_json:
        sys.stdout.write(json.dumps(summary) + "\n")
        return
    console.print(
        f"{detector} {checkpoint.detector_version}: {summary['events_this_run']} events scored "
        f"this run ({checkpoint.events} in all), {checkpoint.findings} findings, "
        f"{checkpoint.flagged} flagged, in {summary['table']} (checkpoint in "
        f"{settings.storage.database}.backfills)"
    )


def _pct(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value * 100:+.2f}%" if signed else f"{value * 100:.2f}%"


def _kappa(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def compare(
    detector: Detector,
    versions: Annotated[
        str | None, typer.Option(help="A,B: two detector versions; omit to list stored ones")
    ] = None,
    since: Annotated[str | None, typer.Option(help="only events this recent, e.g. 7d")] = None,
    model: Model = None,
    examples: Annotated[
        int, typer.Option(min=0, max=1000, help="disagreeing request ids per model version")
    ] = 5,
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Compare two versions of a detector on the same stored events: agreement, flag rates
    and their difference, Cohen's kappa per model version, and where they disagree."""
    from monitor.history.checkpoint import CheckpointStore
    from monitor.history.compare import compare as run_compare
    from monitor.history.compare import stored_versions
    from monitor.history.storage import open_store

    try:
        settings = settings_for(data_dir)
        since_ms = _now_ms() - duration_ms(since) if since else 0
        pair = None if versions is None else [v.strip() for v in versions.split(",")]
        if pair is not None and (len(pair) != 2 or not all(pair)):
            raise MonitorError(f"--versions {versions!r}: two versions, A,B")
        client = open_store(settings, writable=False)
        db = settings.storage.database
        if pair is None:
            backfills = CheckpointStore(client, db).all(detector)
            _print_versions(stored_versions(client, db, detector), backfills, detector, as_json)
            return
        result = run_compare(
            client, db, detector, pair[0], pair[1],
            since_ms=since_ms, model=model or "", examples=examples,
        )  # fmt: skip
    except MonitorError as exc:
        fail(exc)
    except ClickHouseError as exc:
        fail(StorageError(_first_line(exc)))
    if as_json:
        sys.stdout.write(json.dumps(result.as_dict()) + "\n")
        return
    _print_comparison(result)


def _verdict(flagged: bool, score: float) -> str:
    return f"{'flag' if flagged else '-'} {score:.3f}"


def _print_comparison(result: Comparison) -> None:
    table = Table(title=f"{result.detector}: A={result.version_a} vs B={result.version_b}")
    table.add_column("model version")
    for name in ("events", "agreement", "flagged A", "flagged B", "B - A", "kappa"):
        table.add_column(name, justify="right")
    for row in [*result.by_model_version, result.overall]:
        table.add_row(
            "all" if row is result.overall else f"{row.model} {row.model_version}",
            str(row.events), _pct(row.agreement), _pct(row.flag_rate_a),
            _pct(row.flag_rate_b), _pct(row.difference, signed=True), _kappa(row.kappa),
        )  # fmt: skip
    console.print(table)
    if result.examples:
        shown = Table(title="where they disagree (largest score difference first)")
        shown.add_column("model version")
        shown.add_column("request_id", no_wrap=True, min_width=36)
        shown.add_column("A", no_wrap=True)
        shown.add_column("B", no_wrap=True)
        for e in result.examples:
            shown.add_row(
                f"{e.model} {e.model_version}", e.request_id,
                _verdict(e.flagged_a, e.score_a), _verdict(e.flagged_b, e.score_b),
            )  # fmt: skip
        console.print(shown)


def _print_versions(
    found: list[VersionFindings], backfills: list[Checkpoint], detector: str, as_json: bool
) -> None:
    if as_json:
        rows = [asdict(v) for v in found]
        done = [msgspec.to_builtins(c) for c in backfills]
        sys.stdout.write(
            json.dumps({"detector": detector, "versions": rows, "backfills": done}) + "\n"
        )
        return
    table = Table(title=f"stored versions of {detector}")
    for name in ("detector_version", "table", "findings", "flagged"):
        table.add_column(name)
    for v in found:
        table.add_row(v.detector_version, v.table, str(v.findings), str(v.flagged))
    console.print(table)
    if backfills:
        runs = Table(title=f"backfills of {detector}")
        for name in ("detector_version", "model", "events scored", "findings", "up to"):
            runs.add_column(name)
        for c in backfills:
            at = datetime.fromtimestamp(c.position.event_time_ms / 1000, UTC)
            runs.add_row(
                c.detector_version, c.model or "all", str(c.events), str(c.findings),
                at.strftime("%Y-%m-%d %H:%M:%S"),
            )  # fmt: skip
        console.print(runs)
