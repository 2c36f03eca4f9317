"""The asyncio publisher, on aiokafka: for async apps (FastAPI, aiohttp, async gateways).

The same contract as ``Publisher``: ``publish_nowait`` (or ``await publish``) never waits for
Kafka and never raises for its sake; at most ``max_buffer`` events are pending, beyond that they
are dropped and counted; a background task on the event loop connects (retrying while the
broker is away), sends with aiokafka's batching and settles each event when the broker answers.

Use it from one event loop, the one it first publishes on; close it before that loop ends
(``async with`` or the app's shutdown hook): an atexit hook cannot run a stopped loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from monitor.client.events import DEFAULT_TOPIC, Event, encode_record
from monitor.client.publisher import MAX_REQUEST_BYTES, RETRY_MAX_S, RETRY_MIN_S
from monitor.client.stats import PublisherStats, Tally, publisher_metrics

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

_Item = tuple[bytes, bytes] | None  # a record, or None: stop after what came before
STOP_GRACE_S: Final = 1.0  # how long close() waits for a cancelled sender to wind down


class AsyncPublisher:
    """Publishes events to Kafka from an event loop without ever waiting on or raising for Kafka.

    ``options`` go to aiokafka's ``AIOKafkaProducer`` as they are and override the defaults
    chosen here. With ``registry`` the outcome counts are also exported as
    ``llm_monitor_client_events_total{outcome}``.
    """

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        *,
        topic: str = DEFAULT_TOPIC,
        max_buffer: int = 10_000,
        linger_ms: int = 20,
        close_timeout_s: float = 5.0,
        registry: CollectorRegistry | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        if not bootstrap_servers:
            raise ValueError("bootstrap_servers must name at least one broker, e.g. 'kafka:9092'")
        if not topic:
            raise ValueError("topic must be a non-empty topic name, e.g. 'llm.events'")
        if max_buffer < 1:
            raise ValueError(f"max_buffer must be >= 1, got {max_buffer}")
        if linger_ms < 0:
            raise ValueError(f"linger_ms must be >= 0, got {linger_ms}")
        if close_timeout_s < 0:
            raise ValueError(f"close_timeout_s must be >= 0, got {close_timeout_s}")
        if importlib.util.find_spec("aiokafka") is None:
            raise ImportError("AsyncPublisher needs aiokafka. Fix: pip install aiokafka")
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.max_buffer = max_buffer
        self.linger_ms = linger_ms
        self.close_timeout_s = close_timeout_s
        self.options: dict[str, Any] = dict(options or {})
        self._tally = Tally(max_buffer, publisher_metrics(registry) if registry else None)
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task[None] | None = None
        self._idle: asyncio.Event | None = None
        self._stopping: asyncio.Event | None = None
        self._stop_by: float | None = None
        self._failing = False

    async def start(self) -> None:
        """Start the sender task on the running loop (``publish_nowait`` does it when needed)."""
        if not self._closed:
            self._ensure_started()

    def publish_nowait(self, event: Event) -> bool:
        """Queue ``event`` for sending; False when it was dropped (buffer full or closed).

        Call it from the event loop's thread. Never waits and never raises for Kafka's sake; a
        TypeError means ``event`` holds something JSON cannot encode."""
        key, value = encode_record(event)
        if self._closed:
            self._tally.drop()
            return False
        records = self._ensure_started()
        if not self._tally.accept():
            return False
        assert self._idle is not None  # noqa: S101 - set by _ensure_started
        self._idle.clear()
        records.put_nowait((key, value))
        return True

    async def publish(self, event: Event) -> bool:
        """``publish_nowait`` for code that prefers to await: it does not wait for Kafka."""
        return self.publish_nowait(event)

    async def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every accepted event is delivered or failed; False on timeout."""
        if self._idle is None or self._tally.pending == 0:
            return self._tally.pending == 0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        return self._tally.pending == 0

    async def close(self, timeout_s: float | None = None) -> bool:
        """Send what is buffered and stop; True when every accepted event was delivered.

        Waits at most ``timeout_s`` (default ``close_timeout_s``); events still pending then
        are counted as failed. Later ``publish_nowait`` calls drop their events."""
        if self._closed:
            return self._tally.snapshot().failed == 0
        self._closed = True
        timeout = self.close_timeout_s if timeout_s is None else timeout_s
        task = self._task
        if task is not None and self._queue is not None and self._stopping is not None:
            self._stop_by = time.monotonic() + timeout
            self._queue.put_nowait(None)
            self._stopping.set()
            done, _ = await asyncio.wait({task}, timeout=timeout)
            if not done:
                task.cancel()
                await asyncio.wait({task}, timeout=STOP_GRACE_S)
        lost = self._tally.abandon()
        if lost:
            log.warning("llm-monitor publisher closed with %d events undelivered", lost)
        return self._tally.snapshot().failed == 0

    @property
    def stats(self) -> PublisherStats:
        return self._tally.snapshot()

    @property
    def dropped(self) -> int:
        """Events refused at ``publish_nowait`` (buffer full or closed)."""
        return self._tally.snapshot().dropped

    async def __aenter__(self) -> AsyncPublisher:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _ensure_started(self) -> asyncio.Queue[_Item]:
        loop = asyncio.get_running_loop()
        if self._queue is not None:
            if loop is not self._loop:
                raise RuntimeError(
                    "AsyncPublisher is bound to the event loop it started on; "
                    "create one publisher per loop"
                )
            return self._queue
        self._loop = loop
        self._queue = asyncio.Queue()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = asyncio.Event()
        self._task = loop.create_task(self._run(self._queue), name="llm-monitor-publisher")
        return self._queue

    async def _run(self, records: asyncio.Queue[_Item]) -> None:
        """Gather what arrives within ``linger_ms`` of the first record, then send it all at
        once: aiokafka packs records appended without a pause into one request per broker.
        (Its own linger would also hold back the final flush, so it is left at 0.)"""
        assert self._stopping is not None  # noqa: S101 - set by _ensure_started
        producer = None
        stop = False
        try:
            while not stop and (item := await records.get()) is not None:
                if self.linger_ms and not self._stopping.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), self.linger_ms / 1000)
                batch = [item]
                while not records.empty():
                    if (more := records.get_nowait()) is None:
                        stop = True
                        break
                    batch.append(more)
                if producer is None:
                    producer = await self._connect()
                for record in batch:
                    if producer is None:  # closing, and the broker never answered
                        self._settle(delivered=False)
                    else:
                        await self._send(producer, record)
        finally:
            if producer is not None:
                await self._shut(producer)

    async def _connect(self) -> Any:
        """A started AIOKafkaProducer, retrying with backoff; None once close() gave up."""
        from aiokafka import AIOKafkaProducer

        config: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "linger_ms": 0,
            "max_batch_size": 64 * 1024,
            "max_request_size": MAX_REQUEST_BYTES,
            "request_timeout_ms": 10_000,
        }
        config.update(self.options)
        delay = RETRY_MIN_S
        failures = 0
        assert self._stopping is not None  # noqa: S101 - set by _ensure_started
        while True:
            producer = AIOKafkaProducer(**config)
            try:
                await producer.start()
            except Exception as exc:
                with contextlib.suppress(Exception):
                    await producer.stop()
                failures += 1
                if failures == 1:
                    log.warning("llm-monitor publisher cannot reach Kafka (retrying): %s", exc)
            else:
                if failures:
                    log.warning("llm-monitor publisher connected after %d attempts", failures + 1)
                return producer
            if self._stop_by is not None and time.monotonic() >= self._stop_by:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, RETRY_MAX_S)

    async def _send(self, producer: Any, record: tuple[bytes, bytes]) -> None:
        key, value = record
        try:
            future = await producer.send(self.topic, value=value, key=key)
        except Exception as exc:
            self._failed(exc)
            return
        future.add_done_callback(self._on_done)

    def _on_done(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            self._failed(asyncio.CancelledError())
        elif (exc := future.exception()) is not None:
            self._failed(exc)
        else:
            self._failing = False
            self._settle(delivered=True)

    def _failed(self, exc: BaseException) -> None:
        if not self._failing:  # once per run of failures: the counts say how many
            self._failing = True
            log.warning("llm-monitor publisher: Kafka did not take an event: %r", exc)
        self._settle(delivered=False)

    def _settle(self, *, delivered: bool) -> None:
        if self._tally.settle(delivered) and self._idle is not None:
            self._idle.set()

    async def _shut(self, producer: Any) -> None:
        remaining = self.close_timeout_s
        if self._stop_by is not None:
            remaining = max(0.0, self._stop_by - time.monotonic())
        try:
            await asyncio.wait_for(producer.stop(), max(remaining, STOP_GRACE_S))
        except Exception as exc:
            log.debug("llm-monitor publisher: producer not stopped in time: %s", exc)
