"""A topic read in batches by a plain aiokafka consumer, beside faust's consumer.

faust hands every record through its per-message machinery (the consumer thread, the conductor,
one stream event each, then ``take_events``): on the events topic, the one with a record per
LLM call, that cost more CPU than validating, scoring and redacting the event (profile in
docs/benchmarks.md). The score role keeps no table, so it needs none of what faust is for
(changelogs, recovery); this consumer fetches up to ``batch_size`` records at once, hands them
to the role as one list, and commits each partition's next offset only after the role returns,
that is after every record it produced was acknowledged: the same at-least-once contract,
which the sink's and the windows' dedup keys turn into exactly-once rows.

Its group is ``<app id>.<topic>`` (``consumer_group``): the role's workers share partitions
through it, apart from faust's group (whose assignor protocol differs).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import mode
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from monitor.config import Settings
from monitor.ingest.decode import RawMessage
from monitor.metrics import Metrics

log = logging.getLogger(__name__)

Handler = Callable[[list[RawMessage]], Awaitable[None]]
LAG_INTERVAL_S = 2.0
STOP_GRACE_S = 15.0
RETRY_PAUSE_S = 1.0


def consumer_group(app_id: str, topic: str) -> str:
    """The consumer group of the batch consumer reading ``topic`` for app ``app_id``."""
    return f"{app_id}.{topic}"


def group_reading(app_id: str, topic: str, batch_topics: tuple[str, ...] = ("llm.events",)) -> str:
    """The group whose committed offsets say how far app ``app_id`` has read ``topic``: a
    batch consumer's for ``batch_topics`` (the events topic), faust's for the rest."""
    return consumer_group(app_id, topic) if topic in batch_topics else app_id


class BatchConsumer:
    """Reads ``topic`` in batches and calls ``handle`` with each; commits after it returns."""

    def __init__(
        self, settings: Settings, app_id: str, topic: str, handle: Handler, metrics: Metrics
    ) -> None:
        k, p = settings.kafka, settings.pipeline
        self.topic, self.group = topic, consumer_group(app_id, topic)
        self.batch_size, self.batch_wait_s = p.batch_size, p.batch_wait_s
        self.handle, self.metrics = handle, metrics
        self._consumer_args: dict[str, Any] = {
            "bootstrap_servers": str(k.bootstrap_servers),
            "group_id": self.group,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "max_poll_records": p.batch_size,
            "fetch_max_wait_ms": k.fetch_max_wait_ms,
            "max_partition_fetch_bytes": 4 * 1_048_576,
            "session_timeout_ms": int(k.session_timeout_s * 1000),
            "heartbeat_interval_ms": int(k.heartbeat_interval_s * 1000),
            "rebalance_timeout_ms": int(k.rebalance_timeout_s * 1000),
            "request_timeout_ms": int(max(40.0, k.session_timeout_s * 2) * 1000),
        }
        self._consumer: AIOKafkaConsumer | None = None
        self.committed: dict[TopicPartition, int] = {}
        self._stopping: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._lag_task: asyncio.Task[None] | None = None

    @property
    def consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("the batch consumer is not started")
        return self._consumer

    @property
    def stopping(self) -> asyncio.Event:
        if self._stopping is None:
            raise RuntimeError("the batch consumer is not started")
        return self._stopping

    def assignment(self) -> set[TopicPartition]:
        return set(self._consumer.assignment()) if self._consumer is not None else set()

    async def start(self) -> None:
        """Create the consumer on the running loop (the app is built before there is one)."""
        self._stopping = asyncio.Event()
        self._consumer = AIOKafkaConsumer(**self._consumer_args)
        await self.consumer.start()
        self.consumer.subscribe([self.topic], listener=_Forget(self.committed))
        self._task = asyncio.create_task(self._run(), name=f"batches:{self.topic}")
        self._lag_task = asyncio.create_task(self._export_lag(), name=f"lag:{self.topic}")

    async def stop(self) -> None:
        """Finish the batch in hand (so a graceful stop replays nothing), then leave the group."""
        self.stopping.set()
        if self._lag_task is not None:
            self._lag_task.cancel()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), STOP_GRACE_S)
            except TimeoutError:
                self._task.cancel()
            except Exception:  # noqa: S110 - already logged by _run
                pass
        if self._consumer is not None:
            await self._consumer.stop()

    async def _run(self) -> None:
        while not self.stopping.is_set():
            messages = await self._next_batch()
            if not messages:
                continue
            try:
                await self.handle(messages)
            except Exception:
                # Nothing is committed: read the batch again (its outputs are keyed, so a
                # repeat is absorbed downstream) after a pause, rather than lose it.
                log.exception("a batch of %d records from %s failed; retrying it", len(messages),
                              self.topic)  # fmt: skip
                self._rewind(messages)
                await asyncio.sleep(RETRY_PAUSE_S)
                continue
            await self._commit(messages)

    def _rewind(self, messages: list[RawMessage]) -> None:
        firsts: dict[TopicPartition, int] = {}
        for m in messages:
            tp = TopicPartition(m.topic, m.partition)
            firsts[tp] = min(firsts.get(tp, m.offset), m.offset)
        for tp, offset in firsts.items():
            if tp in self.consumer.assignment():
                self.consumer.seek(tp, offset)

    async def _next_batch(self) -> list[RawMessage]:
        """Up to ``batch_size`` records: what arrives within ``batch_wait_s`` of the first."""
        messages: list[RawMessage] = []
        deadline: float | None = None
        while len(messages) < self.batch_size and not self.stopping.is_set():
            wait_s = 0.5 if deadline is None else deadline - time.monotonic()
            if wait_s <= 0:
                break
            batches = await self.consumer.getmany(
                timeout_ms=int(wait_s * 1000), max_records=self.batch_size - len(messages)
            )
            for records in batches.values():
                messages.extend(_raw(r) for r in records)
            if messages and deadline is None:
                deadline = time.monotonic() + self.batch_wait_s
            if deadline is None and not batches:
                break  # idle: go round again, so a stop is seen
        return messages

    async def _commit(self, messages: list[RawMessage]) -> None:
        ends: dict[TopicPartition, int] = {}
        for m in messages:
            tp = TopicPartition(m.topic, m.partition)
            ends[tp] = max(ends.get(tp, 0), m.offset + 1)
        try:
            await self.consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in ends.items()})
            self.committed.update(ends)
        except (CommitFailedError, IllegalStateError) as exc:
            # A rebalance took partitions during the batch: their new owner reads them again
            # from the last commit, and the downstream dedup keys absorb the repeat.
            log.warning("commit of %s after a rebalance failed: %s", self.topic, exc)
        except KafkaError as exc:
            log.warning("commit of %s failed, retried with the next batch: %s", self.topic, exc)

    async def _export_lag(self) -> None:
        while True:
            await asyncio.sleep(LAG_INTERVAL_S)
            for tp in self.consumer.assignment():
                highwater = self.consumer.highwater(tp)
                if highwater is None:
                    continue
                done = self.committed.get(tp)
                if done is None:
                    try:
                        done = self.committed[tp] = await self.consumer.committed(tp) or 0
                    except KafkaError:
                        continue
                lag = max(0, highwater - done)
                self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)


class _Forget(ConsumerRebalanceListener):  # type: ignore[misc]
    """Forget committed offsets across a rebalance: another member may have moved them."""

    def __init__(self, committed: dict[TopicPartition, int]) -> None:
        self.committed = committed

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.committed.clear()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.committed.clear()


def _raw(record: Any) -> RawMessage:
    return RawMessage(
        value=record.value or b"",
        key=record.key,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timestamp_ms=int(record.timestamp),
    )


def run_with_app(app: Any, consumer: BatchConsumer) -> None:
    """Start ``consumer`` with the faust app (after its recovery) and stop it with the app."""

    class Batches(mode.Service):
        async def on_started(self) -> None:
            await consumer.start()

        async def on_stop(self) -> None:
            await consumer.stop()

    batch_consumers(app).append(consumer)
    app.service(Batches)


def batch_consumers(app: Any) -> list[BatchConsumer]:
    """The batch consumers attached to ``app`` (for /health and readiness)."""
    found: list[BatchConsumer] | None = getattr(app, "monitor_batch_consumers", None)
    if found is None:
        found = []
        app.monitor_batch_consumers = found
    return found
