"""Where a backfill stopped: one row per (detector, version, model filter) in ``backfills``.

The position is the last ``(event_time, request_id)`` whose findings were written: a rerun
reads from just after it. A page's findings are inserted before its checkpoint, so a crash
between the two re-scores that page, and ``findings_versions`` collapses the repeat. Kept in
ClickHouse beside the data rather than in a file: a checkpoint cannot outlive the events it
points into, it works the same with a ClickHouse server, and ``compare`` reads it to know which
events a version scored even where it found nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

import msgspec
from clickhouse_connect.driver.client import Client

from monitor.storage.columns import EpochMs, columns_of

TABLE: Final = "backfills"
_SELECT: Final = (
    "SELECT detector, detector_version, model, toUnixTimestamp64Milli(since), "
    "toUnixTimestamp64Milli(event_time), request_id, events, findings, flagged, revision, "
    "toUnixTimestamp64Milli(updated_at) FROM {db:Identifier}.backfills FINAL "
    "WHERE detector = {detector:String} "
    "AND ({version:String} = '' OR detector_version = {version:String}) "
    "AND ({version:String} = '' OR model = {model:String})"
)


class Position(msgspec.Struct, frozen=True):
    """A point in ``(event_time, request_id)`` order; reading resumes strictly after it.
    ``(t, "")`` is just before every event at ``t``: request ids are never empty."""

    event_time_ms: EpochMs
    request_id: str


class Checkpoint(msgspec.Struct, frozen=True, kw_only=True):
    """A backfill's progress, a row of ``backfills``. ``model`` is the model filter ("" for
    every model); ``since_ms`` the start of the range of the run that started it; counts are
    totals over every run since; ``revision`` orders the saves."""

    detector: str
    detector_version: str
    model: str = ""
    since_ms: EpochMs
    position: Position
    events: int = 0
    findings: int = 0
    flagged: int = 0
    revision: int = 0
    updated_at_ms: EpochMs = 0

    @classmethod
    def fresh(
        cls, detector: str, detector_version: str, model: str, since_ms: int, revision: int = 0
    ) -> Checkpoint:
        """Nothing scored yet: positioned just before ``since_ms``."""
        return cls(
            detector=detector,
            detector_version=detector_version,
            model=model,
            since_ms=since_ms,
            position=Position(since_ms, ""),
            revision=revision,
        )

    @property
    def started(self) -> bool:
        """Whether any event was scored under this checkpoint."""
        return self.position != Position(self.since_ms, "")

    def advanced(self, position: Position, events: int, findings: int, flagged: int) -> Checkpoint:
        """This checkpoint after one more page."""
        return msgspec.structs.replace(
            self,
            position=position,
            events=self.events + events,
            findings=self.findings + findings,
            flagged=self.flagged + flagged,
            revision=self.revision + 1,
        )


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class CheckpointStore:
    """Checkpoints in ``database.backfills``. ``clock`` stamps ``updated_at`` (wall time, for
    people reading the table; ordering comes from ``revision``)."""

    def __init__(
        self, client: Client, database: str, *, clock: Callable[[], int] = _wall_clock_ms
    ) -> None:
        self.client = client
        self.database = database
        self.clock = clock

    def load(self, detector: str, detector_version: str, model: str = "") -> Checkpoint | None:
        """The latest saved checkpoint, or None when there is none."""
        if not detector_version:
            raise ValueError("detector_version must not be empty")
        found = self._select(detector, detector_version, model)
        return found[0] if found else None

    def all(self, detector: str) -> list[Checkpoint]:
        """Every backfill of ``detector``: its latest checkpoint each."""
        return self._select(detector, "", "")

    def _select(self, detector: str, version: str, model: str) -> list[Checkpoint]:
        params = {"db": self.database, "detector": detector, "version": version, "model": model}
        rows = self.client.query(_SELECT, parameters=params).result_rows
        return [
            Checkpoint(
                detector=d, detector_version=v, model=m, since_ms=int(since),
                position=Position(int(at), request_id), events=int(events),
                findings=int(findings), flagged=int(flagged), revision=int(revision),
                updated_at_ms=int(updated),
            )
            for d, v, m, since, at, request_id, events, findings, flagged, revision, updated in rows
        ]  # fmt: skip

    def save(self, checkpoint: Checkpoint) -> Checkpoint:
        """Insert ``checkpoint`` stamped with the time; returns what was stored."""
        stamped = msgspec.structs.replace(checkpoint, updated_at_ms=self.clock())
        columns = columns_of(Checkpoint)
        self.client.insert(
            f"{self.database}.{TABLE}", [columns.values(stamped)], column_names=list(columns.names)
        )
        return stamped
