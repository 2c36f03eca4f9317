"""The synchronous publisher, on kafka-python: for WSGI apps, scripts and gateways.

``publish`` never blocks the caller and never raises for Kafka's sake: it encodes the event,
takes it if fewer than ``max_buffer`` events are pending (counting a drop otherwise) and hands
it to a background thread. That thread connects (retrying while the broker is away), sends with
kafka-python's batching (``linger_ms``), and settles each event when the broker answers. At
most ``max_buffer`` events are held at any time, whatever the broker does, so a Kafka outage
costs the app a bounded amount of memory and a count of dropped events, never a stalled call.

``close`` (also run at interpreter exit) sends what is buffered, waiting at most
``close_timeout_s``; what it could not deliver by then is counted as failed.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from monitor.client.events import DEFAULT_TOPIC, Event, encode_record
from monitor.client.stats import PublisherStats, Tally, publisher_metrics

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

_Item = tuple[bytes, bytes] | None  # a record, or None: stop after what came before
MAX_REQUEST_BYTES: Final = 4 * 1_048_576  # as the worker's producers (monitor/client/bulk.py)
RETRY_MIN_S: Final = 0.2
RETRY_MAX_S: Final = 5.0


# Publishers alive in this process, so that a forked child (a pre-fork server such as gunicorn
# --preload) starts its own sender instead of waiting on its parent's thread and locks.
_LIVE: weakref.WeakSet[Publisher] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for publisher in list(_LIVE):
        publisher._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Publisher:
    """Publishes events to Kafka from any thread without ever blocking or raising for Kafka.

    ``options`` go to kafka-python's ``KafkaProducer`` as they are (security settings, acks,
    compression, timeouts) and override the defaults chosen here. With ``registry`` the
    outcome counts are also exported as ``llm_monitor_client_events_total{outcome}``.
    """

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        *,
        topic: str = DEFAULT_TOPIC,
        max_buffer: int = 10_000,
        linger_ms: int = 20,
        close_timeout_s: float = 5.0,
        flush_at_exit: bool = True,
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
        if importlib.util.find_spec("kafka") is None:
            raise ImportError("Publisher needs kafka-python. Fix: pip install kafka-python")
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.max_buffer = max_buffer
        self.linger_ms = linger_ms
        self.close_timeout_s = close_timeout_s
        self.flush_at_exit = flush_at_exit
        self.options: dict[str, Any] = dict(options or {})
        self._tally = Tally(max_buffer, publisher_metrics(registry) if registry else None)
        self._lock = threading.Lock()
        self._closed = False
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stop_by: float | None = None  # monotonic deadline set by close()
        self._wake = threading.Event()
        self._failing = False
        if flush_at_exit:
            atexit.register(self._close_at_exit)
        _LIVE.add(self)

    def publish(self, event: Event) -> bool:
        """Queue ``event`` for sending; False when it was dropped (buffer full or closed).

        Never blocks and never raises for Kafka's sake; a TypeError means ``event`` holds
        something JSON cannot encode."""
        key, value = encode_record(event)
        if self._closed:
            self._tally.drop()
            return False
        if self._thread is None:
            self._start()
        if not self._tally.accept():
            return False
        self._queue.put((key, value))
        return True

    publish_nowait = publish  # the name the OpenAI wrapper calls, shared with AsyncPublisher

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every accepted event is delivered or failed; False on timeout."""
        return self._tally.wait_idle(timeout_s)

    def close(self, timeout_s: float | None = None) -> bool:
        """Send what is buffered and stop; True when every accepted event was delivered.

        Waits at most ``timeout_s`` (default ``close_timeout_s``); events still pending then
        are counted as failed. Later ``publish`` calls drop their events."""
        with self._lock:
            if self._closed:
                return self._tally.snapshot().failed == 0
            self._closed = True
        atexit.unregister(self._close_at_exit)
        timeout = self.close_timeout_s if timeout_s is None else timeout_s
        thread = self._thread
        if thread is not None:
            self._stop_by = time.monotonic() + timeout
            self._queue.put(None)
            self._wake.set()
            thread.join(timeout)
        lost = self._tally.abandon()
        if lost:
            log.warning("llm-monitor publisher closed with %d events undelivered", lost)
        return self._tally.snapshot().failed == 0

    @property
    def stats(self) -> PublisherStats:
        return self._tally.snapshot()

    @property
    def dropped(self) -> int:
        """Events refused at ``publish`` (buffer full or closed)."""
        return self._tally.snapshot().dropped

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _close_at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def _start(self) -> None:
        """Start the sender thread (at the first publish in this process)."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._run, args=(self._queue,), name="llm-monitor-publisher", daemon=True
            )
            self._thread.start()

    def _forked(self) -> None:
        """In a forked child: the parent's thread, buffer and locks are not this process's."""
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._queue = queue.SimpleQueue()
        self._thread = None
        self._stop_by = None
        self._tally.forked()

    def _run(self, records: queue.SimpleQueue[_Item]) -> None:
        producer = None
        try:
            while (item := records.get()) is not None:
                if producer is None:
                    producer = self._connect()
                if producer is None:  # closing, and the broker never answered
                    self._tally.settle(delivered=False)
                    continue
                self._send(producer, item)
        finally:
            if producer is not None:
                self._shut(producer)

    def _connect(self) -> Any:
        """A connected KafkaProducer, retrying with backoff; None once close() gave up."""
        from kafka import KafkaProducer  # type: ignore[import-untyped]

        config: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "linger_ms": self.linger_ms,
            "batch_size": 64 * 1024,
            "max_request_size": MAX_REQUEST_BYTES,
            "max_block_ms": 5_000,
            "bootstrap_timeout_ms": 5_000,
            "allow_auto_create_topics": False,
        }
        config.update(self.options)
        delay = RETRY_MIN_S
        failures = 0
        while True:
            try:
                producer = KafkaProducer(**config)
            except Exception as exc:
                failures += 1
                if failures == 1:
                    log.warning("llm-monitor publisher cannot reach Kafka (retrying): %s", exc)
            else:
                if failures:
                    log.warning("llm-monitor publisher connected after %d attempts", failures + 1)
                if self.flush_at_exit and not self._closed:
                    # kafka-python registers its own exit hook, which would close the producer
                    # before ours ran (hooks run last-in first-out): ours must come after it.
                    atexit.unregister(self._close_at_exit)
                    atexit.register(self._close_at_exit)
                return producer
            if self._stop_by is not None and time.monotonic() >= self._stop_by:
                return None
            self._wake.wait(delay if self._stop_by is None else min(delay, self._remaining()))
            delay = min(delay * 2, RETRY_MAX_S)

    def _send(self, producer: Any, record: tuple[bytes, bytes]) -> None:
        key, value = record
        try:
            future = producer.send(self.topic, value=value, key=key)
        except Exception as exc:
            self._failed(exc)
            return
        future.add_callback(self._delivered)
        future.add_errback(self._failed)

    def _delivered(self, _metadata: object) -> None:
        self._failing = False
        self._tally.settle(delivered=True)

    def _failed(self, exc: BaseException) -> None:
        if not self._failing:  # once per run of failures: the counts say how many
            self._failing = True
            log.warning("llm-monitor publisher: Kafka did not take an event: %r", exc)
        self._tally.settle(delivered=False)

    def _shut(self, producer: Any) -> None:
        """Close the producer within the time close() allows; if its buffer does not empty by
        then, finish closing in the background (batches expire after delivery_timeout_ms)."""
        try:
            producer.close(timeout=self._remaining())
        except Exception as exc:
            log.debug("llm-monitor publisher: producer not flushed in time: %s", exc)
            threading.Thread(target=self._close_later, args=(producer,), daemon=True).start()

    @staticmethod
    def _close_later(producer: Any) -> None:
        with contextlib.suppress(Exception):
            producer.close()

    def _remaining(self) -> float:
        if self._stop_by is None:
            return self.close_timeout_s
        return max(0.0, self._stop_by - time.monotonic())
