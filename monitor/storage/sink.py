"""The sink's side of storage: one ClickHouse connection, classified failures, a crash-safe spool.

Failures come in two classes (docs: DESIGN.md, "Semantics"), told apart by ``is_transient``:

- transient (ClickHouse unreachable, timing out, overloaded, read-only, a table missing):
  retried with exponential backoff and jitter while Kafka holds the backlog; offsets commit
  only afterwards. Every failed attempt counts in ``llm_monitor_sink_errors_total{table}``.
- deterministic (a value that does not decode, a row ClickHouse refuses): the batch is
  bisected to find the records at fault, the rest is stored, and each record at fault is
  handed back as a ``Refused`` for the caller to dead-letter (streams/sink.py). A record of
  the DLQ topic itself cannot go back to the DLQ: it is stored as its own ``dead_letters`` row.

The common case costs one decode per record and one insert per table; bisection runs only
after a refusal. Decoding, redaction and row building run in a worker thread before the insert
lock is taken: the lock (one client, one ClickHouse session) guards the inserts alone.

If the worker is stopped mid-write, the batch's records are spooled to disk and replayed on
start, so a graceful shutdown can never commit offsets for rows that were not stored; an entry
that can never be replayed is quarantined, not retried on every start (storage/spool.py).
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Final

import msgspec
from clickhouse_connect.driver.exceptions import DatabaseError, DataError, OperationalError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    wait_exponential_jitter,
)

from detectors.pii import PiiScanner
from monitor.config import Settings
from monitor.ingest.decode import RawMessage, dead_letter
from monitor.ingest.dlq import DeadLetter, DeadLetterRow
from monitor.metrics import (
    REASON_REFUSED,
    REASON_REFUSED_DEAD_LETTER,
    REASON_UNDECODABLE,
    REASON_UNDECODABLE_DEAD_LETTER,
    Metrics,
)
from monitor.policy.records import Incident, PolicyRecords
from monitor.scoring.rows import ScoredBatch
from monitor.storage.client import connect, redact_dsn
from monitor.storage.columns import columns_of
from monitor.storage.migrate import migrate
from monitor.storage.spool import Spool, UnreadableEntry
from monitor.storage.writer import TABLES, ClickHouseWriter
from monitor.windows.stats import WindowStats

log = logging.getLogger(__name__)

KIND_SCORED: Final = "scored"
KIND_DEAD_LETTERS: Final = "dead_letters"
KIND_WINDOWS: Final = "windows"
KIND_POLICY: Final = "policy"
# Each kind's tables, in insert order.
KIND_TABLES: Final[dict[str, tuple[str, ...]]] = {
    KIND_SCORED: ("events", "findings", "findings_versions"),  # the last: shadow findings
    KIND_DEAD_LETTERS: ("dead_letters",),
    KIND_WINDOWS: ("windows",),
    KIND_POLICY: ("decisions", "actions", "killswitch", "audit_log", "incidents"),
}
# A record of the DLQ topic that cannot be stored is stored as its own dead letter, reason:
_OWN_DEAD_LETTER = {
    REASON_UNDECODABLE: REASON_UNDECODABLE_DEAD_LETTER,
    REASON_REFUSED: REASON_REFUSED_DEAD_LETTER,
}
# ClickHouse error codes that say the data is wrong: retrying cannot heal them.
DATA_ERROR_CODES: Final = frozenset({
    6,    # CANNOT_PARSE_TEXT
    26,   # CANNOT_PARSE_QUOTED_STRING
    27,   # CANNOT_PARSE_INPUT_ASSERTION_FAILED
    38,   # CANNOT_PARSE_DATE
    41,   # CANNOT_PARSE_DATETIME
    53,   # TYPE_MISMATCH
    69,   # ARGUMENT_OUT_OF_BOUND
    70,   # CANNOT_CONVERT_TYPE
    72,   # CANNOT_PARSE_NUMBER
    117,  # INCORRECT_DATA
    128,  # TOO_LARGE_ARRAY_SIZE
    131,  # TOO_LARGE_STRING_SIZE
    190,  # SIZES_OF_ARRAYS_DONT_MATCH
    321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    349,  # CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
    407,  # DECIMAL_OVERFLOW
    469,  # VIOLATED_CONSTRAINT
})  # fmt: skip
# TOO_MANY_PARTS is overload (merges behind: transient), except for one block spanning more
# partitions than max_partitions_per_insert_block: smaller halves of the batch will do.
TOO_MANY_PARTS: Final = 252
# What clickhouse-connect raises while it serialises a value its column type cannot hold.
CLIENT_DATA_ERRORS: Final = (DataError, TypeError, ValueError, AttributeError, struct.error)
# An incident's evidence is copied this long after it opened, so the events and findings that
# tipped it (still in flight through the other sink agents) are stored by then.
EVIDENCE_DELAY_S: Final = 5.0

_scored = msgspec.msgpack.Decoder(ScoredBatch)
_window = msgspec.msgpack.Decoder(WindowStats)
_dead = msgspec.json.Decoder(DeadLetter)
_policy = msgspec.msgpack.Decoder(PolicyRecords)


def is_transient(exc: BaseException) -> bool:
    """Whether retrying can heal ``exc``: True while ClickHouse is unreachable, slow,
    overloaded or not ready; False when the data itself is refused (then bisect)."""
    if isinstance(exc, OperationalError):  # transport failures, 429/503/504 after retries
        return True
    if isinstance(exc, DatabaseError) and not isinstance(exc, DataError):
        code = exc.code
        refused = code in DATA_ERROR_CODES or (
            code == TOO_MANY_PARTS and "single INSERT block" in str(exc)
        )
        return not refused
    return not isinstance(exc, CLIENT_DATA_ERRORS)


@dataclass(frozen=True)
class Refused:
    """A record the sink cannot store, and why: the caller dead-letters it, then moves on."""

    message: RawMessage
    reason: str
    error: str


DeadLetterFn = Callable[[Sequence[Refused]], Awaitable[None]]


@dataclass(frozen=True)
class _Rejection:
    """A record (by its index in the batch) whose rows ClickHouse refused."""

    record: int
    error: str


@dataclass
class _Table:
    """One table's share of a batch: the insert rows, and where each record's rows end."""

    name: str
    label: str  # of the sink metrics
    rows: list[Sequence[Any]] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._values = columns_of(TABLES[self.name]).values  # as writer.table_rows

    def add(self, structs: Sequence[Any]) -> None:
        """The next record's rows (its row structs, converted to insert values)."""
        self.rows += map(self._values, structs)
        self.ends.append(len(self.rows))

    def records(self) -> list[int]:
        """The records that have rows here."""
        starts = [0, *self.ends][:-1]
        pairs = zip(starts, self.ends, strict=True)
        return [i for i, (start, end) in enumerate(pairs) if end > start]

    def rows_of(self, records: Sequence[int]) -> list[Sequence[Any]]:
        ends = self.ends
        return [row for i in records for row in self.rows[ends[i - 1] if i else 0 : ends[i]]]


@dataclass
class _Batch:
    """Records of one kind, decoded, with their rows per table and what was refused."""

    kind: str
    messages: Sequence[RawMessage]
    tables: list[_Table]
    decoded: list[Any] = field(default_factory=list)  # None where a record did not decode
    refused: dict[int, tuple[str, str]] = field(default_factory=dict)  # record: reason, error


Op = Callable[[ClickHouseWriter], Awaitable[list[_Rejection]]]
Run = Callable[[str, Op], Awaitable[list[_Rejection]]]
# A record's row structs, one sequence per table of its kind (KIND_TABLES order).
Parts = tuple[Sequence[Any], ...]
Split = Callable[[bytes], tuple[Any, Parts]]


def _split_scored(value: bytes) -> tuple[ScoredBatch, Parts]:
    batch = _scored.decode(value)
    return batch, (batch.events, batch.findings, batch.shadow)


def _split_windows(value: bytes) -> tuple[WindowStats, Parts]:
    stats = _window.decode(value)
    return stats, ([stats],)


def _split_policy(value: bytes) -> tuple[PolicyRecords, Parts]:
    r = _policy.decode(value)
    return r, (r.decisions, r.attempts, r.killswitch, r.audit, r.incidents)


class Sink:
    """Writes Kafka records to ClickHouse. One per process; owns the chdb path."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.spool = Spool(settings.data_dir / "spool")
        self._scanner = PiiScanner() if settings.storage.redact else None
        self._writer: ClickHouseWriter | None = None
        self._lock = asyncio.Lock()  # one client: inserts one at a time, nothing else under it
        self._open_lock = asyncio.Lock()
        self._evidence_tasks: set[asyncio.Task[None]] = set()
        self._splits: dict[str, Split] = {
            KIND_SCORED: _split_scored, KIND_DEAD_LETTERS: self._split_dead_letter,
            KIND_WINDOWS: _split_windows, KIND_POLICY: _split_policy,
        }  # fmt: skip

    async def start(self) -> None:
        """Open storage and replay the spool at worker start; while storage is not reachable,
        the first write retries opening instead."""
        try:
            await self.open()
        except Exception as exc:
            log.warning("storage is not ready at start (%s); writes retry until it is", exc)

    async def open(self) -> ClickHouseWriter:
        """Connect, migrate and replay the spool, once: concurrent callers wait for the first."""
        async with self._open_lock:
            if self._writer is None:
                self._writer = await self._open()
            return self._writer

    async def _open(self) -> ClickHouseWriter:
        dsn = self.settings.storage_dsn
        log.info("opening ClickHouse at %s", redact_dsn(dsn))
        client = await asyncio.to_thread(connect, dsn)
        try:
            applied = await asyncio.to_thread(migrate, client, self.settings.storage)
            if applied:
                log.info("applied migrations: %s", ", ".join(applied))
            writer = ClickHouseWriter(
                client, self.settings.storage.database, redact=self.settings.storage.redact
            )
            await self._replay_spool(writer)
        except BaseException:
            client.close()  # the next open connects afresh
            raise
        return writer

    async def write(
        self, kind: str, messages: Sequence[RawMessage], send_dead_letters: DeadLetterFn
    ) -> None:
        """Store the rows carried by ``messages`` (Kafka records of one kind), retrying
        transient failures. Records that can never be stored go to ``send_dead_letters``,
        awaited here: offsets commit only once every record is stored or dead-lettered."""
        if not messages:
            return
        try:
            batch = await asyncio.to_thread(self._prepare, kind, messages)
            refused = await self._store(batch, self._retried)
            if refused:
                await send_dead_letters(refused)
        except asyncio.CancelledError:
            self._spool(kind, messages)
            raise
        self._stored(batch)

    def _prepare(self, kind: str, messages: Sequence[RawMessage]) -> _Batch:
        """Decode every record and build its rows (CPU only: run in a thread, no lock held)."""
        split = self._splits.get(kind)
        if split is None:
            raise ValueError(f"unknown sink kind {kind!r}; known: {', '.join(self._splits)}")
        label = KIND_POLICY if kind == KIND_POLICY else None
        tables = [_Table(name, label or name) for name in KIND_TABLES[kind]]
        batch = _Batch(kind, messages, tables)
        for i, message in enumerate(messages):
            try:
                item, parts = split(message.value)
            except msgspec.DecodeError as exc:
                batch.refused[i] = (REASON_UNDECODABLE, f"{type(exc).__name__}: {exc}")
                item, parts = None, ((),) * len(tables)
            batch.decoded.append(item)
            for table, part in zip(tables, parts, strict=True):
                table.add(part)
        return batch

    def _split_dead_letter(self, value: bytes) -> tuple[DeadLetter, Parts]:
        letter = _dead.decode(value)
        return letter, ([DeadLetterRow.of(letter, self._scanner)],)

    async def _store(self, batch: _Batch, run: Run) -> list[Refused]:
        """Insert every table of ``batch`` through ``run``; returns the records to dead-letter
        (none for the DLQ topic, whose records are stored as their own dead letters)."""
        for table in batch.tables:
            for rejection in await run(table.label, partial(self._insert_table, table)):
                batch.refused.setdefault(rejection.record, (REASON_REFUSED, rejection.error))
        if not batch.refused:
            return []
        refused = [Refused(batch.messages[i], *why) for i, why in sorted(batch.refused.items())]
        for r in refused:
            log.warning(
                "%s record %s[%d]@%d cannot be stored (%s: %s)",
                batch.kind, r.message.topic, r.message.partition, r.message.offset, r.reason,
                r.error,
            )  # fmt: skip
        if batch.kind == KIND_DEAD_LETTERS:
            await self._store_own_dead_letters(refused, run)
            return []
        return refused

    async def _insert_table(self, table: _Table, writer: ClickHouseWriter) -> list[_Rejection]:
        """Insert the table's rows; if ClickHouse refuses them, find the records at fault."""
        error = await self._try_insert(writer, table, table.rows)
        if error is None:
            return []
        log.warning("ClickHouse refused rows of %s (%s); bisecting the batch", table.name, error)
        return await self._bisect(writer, table, table.records(), error)

    async def _bisect(
        self, writer: ClickHouseWriter, table: _Table, records: list[int], error: str
    ) -> list[_Rejection]:
        """``records`` were refused together: insert each half, splitting a refused half again
        until each record at fault stands alone. Stores everything else."""
        if len(records) == 1:
            return [_Rejection(records[0], error)]
        middle = len(records) // 2
        rejected = []
        for half in (records[:middle], records[middle:]):
            half_error = await self._try_insert(writer, table, table.rows_of(half))
            if half_error is not None:
                rejected += await self._bisect(writer, table, half, half_error)
        return rejected

    async def _try_insert(
        self, writer: ClickHouseWriter, table: _Table, rows: Sequence[Sequence[Any]]
    ) -> str | None:
        """One insert: None once stored, the error if ClickHouse refuses the rows; a transient
        failure raises (the caller's retry handles it)."""
        if not rows:
            return None
        try:
            async with self._lock:
                started = time.perf_counter()
                await asyncio.to_thread(writer.insert_rows, table.name, rows)
                elapsed = time.perf_counter() - started
        except Exception as exc:
            if is_transient(exc):
                raise
            return f"{type(exc).__name__}: {exc}"
        self.metrics.sink_insert_seconds.labels(table.label).observe(elapsed)
        self.metrics.sink_batch_rows.labels(table.label).observe(len(rows))
        self.metrics.sink_rows.labels(table.label).inc(len(rows))
        return None

    async def _store_own_dead_letters(self, refused: list[Refused], run: Run) -> None:
        """Records of the DLQ topic that cannot be stored as they are: each is stored as a dead
        letter of its own (its raw bytes as text). One ClickHouse refuses even so is logged
        and counted in ``llm_monitor_sink_dropped_records_total``."""
        now_ms = time.time_ns() // 1_000_000
        letters = [
            dead_letter(r.message, _OWN_DEAD_LETTER[r.reason], r.error, now_ms) for r in refused
        ]
        table = await asyncio.to_thread(self._dead_letter_rows, letters)
        dropped = {r.record for r in await run(table.label, partial(self._insert_table, table))}
        for i, letter in enumerate(letters):
            if i in dropped:
                log.error(
                    "dropped %s[%d]@%d: neither it nor its dead letter can be stored (%s). It "
                    "stays in Kafka until the topic's retention: read it there to recover it",
                    letter.topic, letter.partition, letter.offset, letter.error,
                )  # fmt: skip
                self.metrics.sink_dropped.labels(letter.topic).inc()
            else:
                self.metrics.internal_dead_letters.labels(letter.topic, letter.reason).inc()

    def _dead_letter_rows(self, letters: Sequence[DeadLetter]) -> _Table:
        """One dead_letters row per letter, redacted unless redaction is off (in a thread)."""
        table = _Table("dead_letters", "dead_letters")
        for letter in letters:
            table.add([DeadLetterRow.of(letter, self._scanner)])
        return table

    async def _retried(self, label: str, op: Op) -> list[_Rejection]:
        """``op`` on the open writer, retried with backoff while its failures are transient."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(is_transient),
            wait=wait_exponential_jitter(initial=0.1, max=self.settings.storage.retry_max_wait_s),
            before_sleep=self._count_retry(label),
            reraise=True,
        ):
            with attempt:
                return await op(await self.open())
        raise AssertionError("unreachable: AsyncRetrying returns or raises")  # pragma: no cover

    def _count_retry(self, label: str) -> Callable[[RetryCallState], None]:
        def before_sleep(state: RetryCallState) -> None:
            self.metrics.sink_errors.labels(label).inc()
            error = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            log.warning(
                "insert into %s failed (attempt %d), retrying in %.1fs; Kafka holds the "
                "backlog: %s",
                label, state.attempt_number, wait, error,
            )  # fmt: skip

        return before_sleep

    def _stored(self, batch: _Batch) -> None:
        """After a batch is stored: end-to-end latency of its events; incident evidence."""
        if batch.kind == KIND_SCORED:
            now_ms = time.time() * 1000
            for i, scored in enumerate(batch.decoded):
                if scored is not None and i not in batch.refused:
                    for row in scored.events:
                        self.metrics.end_to_end_seconds.observe(
                            max(0.0, now_ms - row.produced_at_ms) / 1000
                        )
        elif batch.kind == KIND_POLICY:
            for records in batch.decoded:
                for incident in records.incidents if records is not None else ():
                    task = asyncio.create_task(self._copy_evidence(incident))
                    self._evidence_tasks.add(task)
                    task.add_done_callback(self._evidence_tasks.discard)

    async def _copy_evidence(self, incident: Incident) -> None:
        """Copy an incident's evidence out of the TTL'd tables once it has landed."""
        await asyncio.sleep(EVIDENCE_DELAY_S)
        try:
            writer = await self.open()
            async with self._lock:
                rows = await asyncio.to_thread(writer.copy_evidence, incident)
            log.info("incident %s: %d evidence rows preserved", incident.incident_id, rows)
            self.metrics.incident_evidence.labels("copied").inc()
        except Exception:  # `llm-monitor incident report` copies again if this failed
            log.exception("incident %s: evidence copy failed", incident.incident_id)
            self.metrics.incident_evidence.labels("failed").inc()

    def _spool(self, kind: str, messages: Sequence[RawMessage]) -> None:
        path = self.spool.save(kind, messages)
        log.warning("stopped mid-insert: spooled %d %s records to %s", len(messages), kind, path)

    async def _replay_spool(self, writer: ClickHouseWriter) -> None:
        """Store every spooled batch, oldest first. A transient failure stops the replay and
        keeps the entry for the next open; an entry that can never be stored is quarantined."""

        async def once(label: str, op: Op) -> list[_Rejection]:
            return await op(writer)

        for path in self.spool.paths():
            try:
                entry = self.spool.load(path)
                batch = await asyncio.to_thread(self._prepare, entry.kind, entry.messages)
            except (UnreadableEntry, ValueError) as exc:
                self._quarantine(path, "unreadable", str(exc))
                continue
            refused = await self._store(batch, once)
            if refused:
                first = refused[0]
                self._quarantine(
                    path, "refused", f"{len(refused)} of {len(entry.messages)} records cannot be "
                    f"stored, the first {first.message.topic}[{first.message.partition}]@"
                    f"{first.message.offset}: {first.reason}: {first.error}",
                )  # fmt: skip
                continue
            self.spool.remove(path)
            log.info("replayed spooled %s batch from %s", entry.kind, path)

    def _quarantine(self, path: Path, reason: str, error: str) -> None:
        moved = self.spool.quarantine(path)
        self.metrics.spool_quarantined.labels(reason).inc()
        log.error(
            "spool entry %s cannot be replayed (%s: %s): moved to %s and the worker goes on; "
            "the rows it could store are stored. Inspect it with `python -c \"import msgspec, "
            "sys; print(msgspec.msgpack.decode(open(sys.argv[1], 'rb').read()))\" %s` (kind, "
            "then each record's value, key, topic, partition, offset); once fixed, produce the "
            "records again to their topic, then delete the file",
            path.name, reason, error, moved, moved,
        )  # fmt: skip
