"""The one place we adjust faust's Kafka consumer beyond its settings.

faust-streaming 0.15.3 hard-codes ``fetch_max_wait_ms=1500`` for the worker consumer. One fetch
request covers every assigned partition, and on internal topics fed in bursts (scored batches,
partials, windows) each hop then waits up to 1.5 s: that alone dominates end-to-end latency.
We wrap the factory and set the configured wait before the consumer starts.

It also drops events after a restart with tables to recover: the recovery resumes the stream
partitions while the fetcher is already running and only then seeks them to their committed
offsets. Records fetched in between are discarded by flow control, and the fetch loop, still
walking that stale batch, moves the read offset past them after the seek, so their refetched
copies are dropped as already read. The partition's commit then stalls behind the hole until
the next restart. ``seek_before_resume`` defers resuming stream partitions until the seek is
done, which is the order the recovery means.

And table recovery stops short: faust recovers a changelog up to the high watermark that
ListOffsets reports, and the bundled broker (tansu) reports one past the *first* record of a
partition's last batch, so the newest table writes (windows, kill switches) could be lost while
the records that made them are committed. ``recover_to_log_end`` reads each changelog partition
to its last record before recovery decides where to stop.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

_original = AIOKafkaConsumerThread._create_worker_consumer


def set_fetch_max_wait(ms: int) -> None:
    """Make every faust worker consumer created from now on long-poll for at most ``ms``."""
    if ms <= 0:
        raise ValueError(f"fetch max wait must be > 0 ms, got {ms}")

    def create(self: AIOKafkaConsumerThread, transport: Any) -> Any:
        consumer = _original(self, transport)
        consumer._fetch_max_wait_ms = ms
        return consumer

    AIOKafkaConsumerThread._create_worker_consumer = create  # type: ignore[method-assign]


_original_resume = Consumer.resume_partitions
_original_perform_seek = Consumer.perform_seek
_deferred: dict[int, set[Any]] = {}


def seek_before_resume() -> None:
    """Resume stream (non-changelog) partitions only after the seek that follows the resume."""

    def resume_partitions(self: Consumer, partitions: Iterable[Any]) -> None:
        tps = set(partitions)
        streams = {tp for tp in tps if not tp.topic.endswith("-changelog")}
        _deferred.setdefault(id(self), set()).update(streams)
        if tps - streams:
            _original_resume(self, tps - streams)

    async def perform_seek(self: Consumer) -> None:
        try:
            await _original_perform_seek(self)
        finally:
            deferred = _deferred.pop(id(self), set())
            assigned = self.assignment()
            if deferred & assigned:
                _original_resume(self, deferred & assigned)

    Consumer.resume_partitions = resume_partitions  # type: ignore[method-assign,assignment]
    Consumer.perform_seek = perform_seek  # type: ignore[method-assign]


_build_highwaters = Recovery._build_highwaters


def recover_to_log_end() -> None:
    """Make faust's table recovery read each changelog partition to its last record."""
    if getattr(Recovery._build_highwaters, "to_log_end", False):
        return

    async def build(
        self: Recovery, consumer: Any, tps: set[Any], destination: Counter[Any], title: str
    ) -> None:
        await _build_highwaters(self, consumer, tps, destination, title)
        if not destination:
            return
        bootstrap = ",".join(f"{url.host}:{url.port}" for url in self.app.conf.broker)
        for tp, offset in (await last_offsets(bootstrap, dict(destination))).items():
            if offset > destination[tp]:
                self.log.info("%s ends at offset %d, not %d: recovering to it", tp, offset,
                              destination[tp])  # fmt: skip
                destination[tp] = offset

    build.to_log_end = True  # type: ignore[attr-defined]
    Recovery._build_highwaters = build  # type: ignore[method-assign]


async def last_offsets(bootstrap: str, known: dict[Any, int]) -> dict[Any, int]:
    """Each partition's last offset, read from ``known[tp]`` (a last offset, or -1) on."""
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await reader.start()
    try:
        partitions = {TopicPartition(tp.topic, tp.partition): tp for tp in known}
        reader.assign(list(partitions))
        for partition, tp in partitions.items():
            reader.seek(partition, max(known[tp], 0))
        last = dict(known)
        while batches := await reader.getmany(timeout_ms=500, max_records=10_000):
            for partition, records in batches.items():
                tp = partitions[partition]
                last[tp] = max(last[tp], records[-1].offset)
        return last
    finally:
        await reader.stop()
