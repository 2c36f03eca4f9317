"""Re-score stored events with one detector and store its findings under one version label.

A page at a time: read the next keyset page of events (monitor/history/reader.py), score it,
insert the findings into ``findings_versions``, save the checkpoint (``backfills``). A rerun
continues after the checkpoint; a page scored twice (a crash between the insert and the
checkpoint, or a rerun with ``restart``) inserts rows with the same key, which the table's
ReplacingMergeTree collapses.

The findings never reach windows, rollups or the policy: the live path owns those.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import msgspec
from clickhouse_connect.driver.client import Client

from detectors.base import Detector
from monitor.history.checkpoint import Checkpoint, CheckpointStore
from monitor.history.reader import EventRange, EventReader, position_of
from monitor.history.storage import write_versioned
from monitor.ingest.events import Event
from monitor.scoring.rows import FindingRow


class Backfill:
    """One detector over one database's stored events; findings labelled ``detector_version``
    (the detector's own version unless given)."""

    def __init__(
        self,
        client: Client,
        database: str,
        detector: Detector,
        checkpoints: CheckpointStore,
        *,
        detector_version: str | None = None,
        page_size: int = 500,
    ) -> None:
        label = detector.version if detector_version is None else detector_version
        if not label:
            raise ValueError("detector_version must not be empty")
        self.client = client
        self.database = database
        self.detector = detector
        self.checkpoints = checkpoints
        self.detector_version = label
        self.page_size = page_size
        self._reader = EventReader(client, database, page_size=page_size)

    def resume(self, events: EventRange, *, restart: bool = False) -> Checkpoint:
        """Where to start: the saved checkpoint, or a fresh one, saved (always after
        ``restart``: it supersedes the old one)."""
        saved = self.checkpoints.load(self.detector.name, self.detector_version, events.model)
        if saved is not None and not restart:
            return saved
        revision = 0 if saved is None else saved.revision + 1
        fresh = Checkpoint.fresh(
            self.detector.name, self.detector_version, events.model, events.since_ms, revision
        )
        return self.checkpoints.save(fresh)

    def remaining(self, events: EventRange, checkpoint: Checkpoint) -> int:
        """Events left to score in ``events`` after ``checkpoint``."""
        return self._reader.count(events, checkpoint.position)

    def run(self, events: EventRange, checkpoint: Checkpoint) -> Iterator[Checkpoint]:
        """Score every page after ``checkpoint``; yields the checkpoint saved after each page."""
        for page in self._reader.pages(events, checkpoint.position):
            rows = self.score(page)
            write_versioned(self.client, self.database, rows)
            checkpoint = self.checkpoints.save(
                checkpoint.advanced(
                    position_of(page[-1]),
                    events=len(page),
                    findings=len(rows),
                    flagged=sum(row.finding.flagged for row in rows),
                )
            )
            yield checkpoint

    def score(self, page: Sequence[Event]) -> list[FindingRow]:
        """The detector's findings for ``page``, relabelled, with their events' series."""
        by_id = {event.request_id: event for event in page}
        return [
            FindingRow.of(
                msgspec.structs.replace(finding, detector_version=self.detector_version),
                by_id[finding.request_id],
            )
            for finding in self.detector.score(page)
            if finding.detector == self.detector.name and finding.request_id in by_id
        ]


def missed_by_resume(events: EventRange, checkpoint: Checkpoint) -> bool:
    """Whether resuming ``checkpoint`` skips events of ``events``: the checkpoint's run started
    later than this range does, and it has already moved past that start."""
    return checkpoint.started and events.since_ms < checkpoint.since_ms
