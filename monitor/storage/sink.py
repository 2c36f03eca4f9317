"""The sink's side of storage: one ClickHouse connection, retried inserts, a crash-safe spool.

Kafka holds the backlog while ClickHouse is down: a batch is retried with exponential backoff
and jitter until it lands, and its offsets are committed only afterwards. If the worker is
stopped mid-retry, the batch's raw Kafka values are spooled to disk and replayed on start, so
a graceful shutdown can never commit offsets for rows that were not stored (storage/spool.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Final

import msgspec
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from monitor.config import Settings
from monitor.ingest.dlq import DeadLetter
from monitor.metrics import Metrics
from monitor.policy.records import Incident, PolicyRecords
from monitor.scoring.rows import ScoredBatch
from monitor.storage.client import connect, redact_dsn
from monitor.storage.migrate import migrate
from monitor.storage.spool import Spool
from monitor.storage.writer import ClickHouseWriter
from monitor.windows.stats import WindowStats

log = logging.getLogger(__name__)

KIND_SCORED: Final = "scored"
KIND_DEAD_LETTERS: Final = "dead_letters"
KIND_WINDOWS: Final = "windows"
KIND_POLICY: Final = "policy"
# An incident's evidence is copied this long after it opened, so the events and findings that
# tipped it (still in flight through the other sink agents) are stored by then.
EVIDENCE_DELAY_S: Final = 5.0

_scored = msgspec.msgpack.Decoder(ScoredBatch)
_window = msgspec.msgpack.Decoder(WindowStats)
_dead = msgspec.json.Decoder(DeadLetter)
_policy = msgspec.msgpack.Decoder(PolicyRecords)


class Sink:
    """Writes decoded Kafka values to ClickHouse. One per process; owns the chdb path."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.spool = Spool(settings.data_dir / "spool")
        self._writer: ClickHouseWriter | None = None
        self._lock = asyncio.Lock()
        self._open_lock = asyncio.Lock()
        self._evidence_tasks: set[asyncio.Task[None]] = set()

    async def open(self) -> ClickHouseWriter:
        """Connect, migrate and replay the spool, once: concurrent callers wait for the first."""
        async with self._open_lock:
            return await self._open()

    async def _open(self) -> ClickHouseWriter:
        if self._writer is None:
            dsn = self.settings.storage_dsn
            log.info("opening ClickHouse at %s", redact_dsn(dsn))
            client = await asyncio.to_thread(connect, dsn)
            applied = await asyncio.to_thread(migrate, client, self.settings.storage)
            if applied:
                log.info("applied migrations: %s", ", ".join(applied))
            self._writer = ClickHouseWriter(
                client, self.settings.storage.database, redact=self.settings.storage.redact
            )
            await self._replay_spool()
        return self._writer

    async def write(self, kind: str, values: Sequence[bytes]) -> None:
        """Insert the rows carried by ``values`` (raw Kafka values of one kind), retrying."""
        if not values:
            return
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(Exception),
                wait=wait_exponential_jitter(
                    initial=0.1, max=self.settings.storage.retry_max_wait_s
                ),
                before_sleep=self._log_retry(kind),
                reraise=True,
            ):
                with attempt:
                    async with self._lock:
                        writer = await self.open()
                        await asyncio.to_thread(self._insert, writer, kind, values)
        except asyncio.CancelledError:
            self._spool(kind, values)
            raise
        if kind == KIND_POLICY:
            for incident in (i for v in values for i in _policy.decode(v).incidents):
                task = asyncio.create_task(self._copy_evidence(incident))
                self._evidence_tasks.add(task)
                task.add_done_callback(self._evidence_tasks.discard)

    async def _copy_evidence(self, incident: Incident) -> None:
        """Copy an incident's evidence out of the TTL'd tables once it has landed."""
        await asyncio.sleep(EVIDENCE_DELAY_S)
        try:
            async with self._lock:
                writer = await self.open()
                rows = await asyncio.to_thread(writer.copy_evidence, incident)
            log.info("incident %s: %d evidence rows preserved", incident.incident_id, rows)
            self.metrics.incident_evidence.labels("copied").inc()
        except Exception:  # `llm-monitor incident report` copies again if this failed
            log.exception("incident %s: evidence copy failed", incident.incident_id)
            self.metrics.incident_evidence.labels("failed").inc()

    def _insert(self, writer: ClickHouseWriter, kind: str, values: Sequence[bytes]) -> None:
        tables: list[tuple[str, Callable[[], int]]]
        if kind == KIND_SCORED:
            batches = [_scored.decode(v) for v in values]
            events = [row for b in batches for row in b.events]
            findings = [row for b in batches for row in b.findings]
            tables = [
                ("events", lambda: writer.write_events(events)),
                ("findings", lambda: writer.write_findings(findings)),
            ]
        elif kind == KIND_DEAD_LETTERS:
            letters = [_dead.decode(v) for v in values]
            tables = [("dead_letters", lambda: writer.write_dead_letters(letters))]
        elif kind == KIND_WINDOWS:
            stats = [_window.decode(v) for v in values]
            tables = [("windows", lambda: writer.write_windows(stats))]
        elif kind == KIND_POLICY:
            records = [_policy.decode(v) for v in values]
            tables = [("policy", lambda: sum(writer.write_policy(records).values()))]
        else:
            raise ValueError(f"unknown sink kind {kind!r}")
        for table, insert in tables:
            started = time.perf_counter()
            try:
                rows = insert()
            except Exception:
                self.metrics.sink_errors.labels(table).inc()
                raise
            self.metrics.sink_insert_seconds.labels(table).observe(time.perf_counter() - started)
            self.metrics.sink_batch_rows.labels(table).observe(rows)
            self.metrics.sink_rows.labels(table).inc(rows)
        if kind == KIND_SCORED:
            now_ms = time.time() * 1000
            for row in events:
                self.metrics.end_to_end_seconds.observe(
                    max(0.0, now_ms - row.produced_at_ms) / 1000
                )

    def _log_retry(self, kind: str) -> Callable[[RetryCallState], None]:
        def before_sleep(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            log.warning(
                "insert of %s failed (attempt %d), retrying in %.1fs; Kafka holds the backlog: %s",
                kind,
                state.attempt_number,
                wait,
                error,
            )

        return before_sleep

    def _spool(self, kind: str, values: Sequence[bytes]) -> None:
        path = self.spool.save(kind, values)
        log.warning("stopped mid-insert: spooled %d %s values to %s", len(values), kind, path)

    async def _replay_spool(self) -> None:
        assert self._writer is not None  # noqa: S101 - called from open()
        for path, entry in self.spool.entries():
            await asyncio.to_thread(self._insert, self._writer, entry.kind, entry.values)
            self.spool.remove(path)
            log.info("replayed spooled %s batch from %s", entry.kind, path)
