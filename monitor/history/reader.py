"""Stored events back as ``Event`` objects, in keyset pages ordered by ``(event_time, request_id)``.

Each page is one parameterised query that starts strictly after the last row of the previous
page, so a page costs the same wherever it is, rows inserted meanwhile are neither skipped nor
read twice, and a checkpoint is just the last row's key. ``FINAL`` collapses an event stored
twice (a replay) into one.

What comes back is what was stored: text is redacted unless redaction was off, ``messages``
come back as the one prompt string they were stored as, and text older than the text TTL
(``storage.text_ttl_days``) reads as empty.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

from clickhouse_connect.driver.client import Client

from monitor.history.checkpoint import Position
from monitor.ingest.events import Event, Feedback, Status

_RANGE: Final = (
    "event_time >= fromUnixTimestamp64Milli({since:Int64}, 'UTC') "
    "AND event_time < fromUnixTimestamp64Milli({until:Int64}, 'UTC') "
    "AND ({model:String} = '' OR model = {model:String}) "
    "AND (event_time, request_id) > "
    "(fromUnixTimestamp64Milli({after_time:Int64}, 'UTC'), {after_id:String})"
)
# Composed from the constants here only: every value is a bound parameter.
PAGE_SQL: Final = (
    "SELECT request_id, toUnixTimestamp64Milli(event_time), model, model_version, deployment, "  # noqa: S608
    "route, app, prompt, response, samples, context, latency_ms, ttft_ms, input_tokens, "
    "output_tokens, cost_usd, status, error_type, attributes, complaint, rating, extra "
    f"FROM {{db:Identifier}}.events FINAL WHERE {_RANGE} "
    "ORDER BY event_time, request_id LIMIT {limit:UInt32}"
)
COUNT_SQL: Final = f"SELECT count() FROM {{db:Identifier}}.events FINAL WHERE {_RANGE}"  # noqa: S608


@dataclass(frozen=True)
class EventRange:
    """Events with ``since_ms <= event_time < until_ms``, of one model or ("") every model."""

    since_ms: int
    until_ms: int
    model: str = ""

    def __post_init__(self) -> None:
        if self.until_ms <= self.since_ms:
            raise ValueError(f"until_ms ({self.until_ms}) must be after since_ms ({self.since_ms})")

    def start(self) -> Position:
        """Just before the first event of the range."""
        return Position(self.since_ms, "")


class EventReader:
    """Pages of stored events from ``database.events``."""

    def __init__(self, client: Client, database: str, *, page_size: int = 500) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        self.client = client
        self.database = database
        self.page_size = page_size

    def _params(self, events: EventRange, after: Position) -> dict[str, Any]:
        # Never before the range: a checkpoint from a run with a later ``since`` still counts.
        if after.event_time_ms < events.since_ms:
            after = events.start()
        return {
            "db": self.database, "since": events.since_ms, "until": events.until_ms,
            "model": events.model, "after_time": after.event_time_ms, "after_id": after.request_id,
        }  # fmt: skip

    def count(self, events: EventRange, after: Position | None = None) -> int:
        """Events in the range after ``after`` (from its start when None)."""
        params = self._params(events, after or events.start())
        return int(self.client.query(COUNT_SQL, parameters=params).result_rows[0][0])

    def page(self, events: EventRange, after: Position | None = None) -> list[Event]:
        """Up to ``page_size`` events of the range just after ``after``, in key order."""
        params = self._params(events, after or events.start()) | {"limit": self.page_size}
        return [event_of(row) for row in self.client.query(PAGE_SQL, parameters=params).result_rows]

    def pages(self, events: EventRange, after: Position | None = None) -> Iterator[list[Event]]:
        """Every page of the range after ``after``, until one comes back short."""
        while True:
            page = self.page(events, after)
            if page:
                yield page
            if len(page) < self.page_size:
                return
            after = position_of(page[-1])


def position_of(event: Event) -> Position:
    return Position(event.timestamp_ms, event.request_id)


def event_of(row: Sequence[Any]) -> Event:
    """An ``Event`` from one ``PAGE_SQL`` row: empty stored strings read as absent fields."""
    (request_id, time_ms, model, model_version, deployment, route, app, prompt, response,
     samples, context, latency_ms, ttft_ms, input_tokens, output_tokens, cost_usd, status,
     error_type, attributes, complaint, rating, extra) = row  # fmt: skip
    feedback = Feedback(bool(complaint), rating) if complaint or rating is not None else None
    return Event(
        request_id=request_id,
        timestamp=int(time_ms),
        model=model,
        model_version=model_version,
        deployment=deployment,
        route=route,
        app=app,
        prompt=prompt or None,
        response=response or None,
        samples=list(samples),
        context=list(context),
        latency_ms=latency_ms,
        ttft_ms=ttft_ms,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost_usd=cost_usd,
        status=cast(Status, status),
        error_type=error_type or None,
        attributes=dict(attributes),
        feedback=feedback,
        extra=dict(extra),
    )
