"""The ``aggregate`` role: window partials merged exactly once in a changelog-backed faust table.

``WindowAggregator`` (monitor/windows/aggregate.py) merges each partial, skipping the events of
partials delivered again after a crash; a window's sums and its per-source high-water marks are
one table value, so they restore together from the changelog. A record of the partials topic
that does not decode, or whose partial cannot be merged, is dead-lettered and skipped. A timer
closes windows past their series' watermark (a final snapshot; idle series too, by processing
time) and publishes snapshots of changed windows every ``EMIT_INTERVAL_S``; the agent expires
windows past the retention, since table writes must happen in an event of the key's
partition. With drift on, final windows also feed the rate-drift monitors.

Exactness after a crash needs the table restored to the changelog's end
(``streams.tuning.recover_to_log_end``, applied to every app).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator, MutableMapping
from typing import Any

import faust
import msgspec

from monitor.config import Settings
from monitor.metrics import REASON_UNDECODABLE, REASON_UNPROCESSABLE, Metrics
from monitor.scoring.rows import ScoredBatch
from monitor.windows.aggregate import Merge, WindowAggregator
from monitor.windows.drift import WindowRateDrift
from monitor.windows.stats import PartialError, WindowPartial, WindowStats
from streams.codecs import with_table_codec
from streams.kafka import deliver, kafka_partition, raw_message, send_internal_dead_letter
from streams.observe import observe_findings, observe_window

EMIT_INTERVAL_S = 0.25
SWEEP_INTERVAL_S = 1.0

_partial = msgspec.msgpack.Decoder(WindowPartial)
_msgpack = msgspec.msgpack.Encoder()


def add_aggregate_role(
    app: faust.App, settings: Settings, metrics: Metrics, topics: dict[str, Any]
) -> None:
    k = settings.kafka
    windows_out, scored, dlq = topics[k.windows_topic], topics[k.scored_topic], topics[k.dlq_topic]
    rate_drift = WindowRateDrift() if settings.detectors.drift.enabled else None
    aggregator = window_aggregator(app, settings, metrics)
    dirty: set[str] = set()
    last_sweep = [0.0]

    async def publish(stats: WindowStats) -> list[Any]:
        observe_window(metrics, stats, drift=rate_drift is not None)
        metrics.windows_emitted.labels("true" if stats.is_final else "false").inc()
        sends = [await windows_out.send(key=stats_key(stats), value=_msgpack.encode(stats))]
        drift = rate_drift.update(stats) if rate_drift is not None else []
        if drift:
            observe_findings(metrics, drift)
            sends.append(await scored.send(value=_msgpack.encode(ScoredBatch([], drift))))
        return sends

    async def merge(event: Any) -> None:
        """Merge one record's partial; dead-letter it (and go on) when it cannot be."""
        try:
            partial = _partial.decode(event.value)
            merged = aggregator.add(partial)
        except (msgspec.DecodeError, PartialError) as exc:
            await dead_letter_partial(dlq, event, exc, metrics)
            return
        observe_merge(metrics, merged)
        if merged.changed:
            dirty.add(partial.key)
            metrics.windows_pending.set(len(dirty))

    @app.agent(topics[k.partials_topic], name="aggregate")
    async def aggregate(stream: Any) -> None:
        async for event in stream.events():
            await merge(event)
            if time.monotonic() - last_sweep[0] < SWEEP_INTERVAL_S:
                continue
            last_sweep[0] = time.monotonic()
            # Table writes must happen while handling an event of the key's own partition,
            # so the changelog record lands where recovery will look for it.
            partition = event.message.partition
            for key in aggregator.expired():
                if kafka_partition(key.encode(), k.partitions) == partition:
                    aggregator.expire(key)
                    dirty.discard(key)

    @app.timer(interval=EMIT_INTERVAL_S)  # type: ignore[untyped-decorator]
    async def emit_snapshots() -> None:
        sends = []
        for key in aggregator.due():  # past the watermark, idle series included: final
            stats = aggregator.close(key)
            dirty.discard(key)
            if stats is not None:
                sends.extend(await publish(stats))
        for key in list(dirty):
            dirty.discard(key)
            stats = aggregator.snapshot(key)
            if stats is not None:
                sends.extend(await publish(stats))
        await deliver(sends)
        metrics.windows_pending.set(len(dirty))  # zero: every changed window published, acked


def window_aggregator(
    app: faust.App, settings: Settings, metrics: Metrics | None = None
) -> WindowAggregator:
    """The aggregator over the changelog-backed ``windows`` table."""
    k, p = settings.kafka, settings.pipeline
    skipped = metrics.changelog_skipped.labels("windows").inc if metrics is not None else None
    table = app.Table(
        "windows", default=None, key_type=str, value_type=str, partitions=k.partitions
    )
    with_table_codec(table, skipped)
    return WindowAggregator(
        TextValues(table),
        allowed_lateness_s=p.allowed_lateness_s,
        retention_s=p.window_retention_s,
        idle_timeout_s=p.window_s,  # a window's length without traffic: the series is idle
        bias_confidence=settings.detectors.bias.confidence,
        bias_min_per_group=settings.detectors.bias.min_per_group,
    )


async def dead_letter_partial(dlq: Any, event: Any, exc: Exception, metrics: Metrics) -> None:
    """Dead-letter a partials record that does not decode, or whose partial cannot be merged,
    and wait for the DLQ's ack: only then may its offset commit."""
    undecodable = isinstance(exc, msgspec.DecodeError)
    reason = REASON_UNDECODABLE if undecodable else REASON_UNPROCESSABLE
    message = raw_message(event)
    await deliver([await send_internal_dead_letter(dlq, message, reason, str(exc), metrics)])


def observe_merge(metrics: Metrics, merged: Merge) -> None:
    """Events counted into windows, and events of windows already expired (left out)."""
    if merged.counted:
        metrics.partial_events_merged.inc(merged.counted)
    if merged.late:
        metrics.late_events.inc(merged.late)


class TextValues(MutableMapping[str, bytes]):
    """Bytes over a faust table holding base64 text.

    faust's changelog recovery decodes values with the app's default JSON codec whatever the
    table schema says, so binary values cannot be restored; base64 text round-trips.
    """

    def __init__(self, table: Any) -> None:
        self._table = table

    def __getitem__(self, key: str) -> bytes:
        value = self._table[key]
        if value is None:
            raise KeyError(key)
        return base64.b64decode(value)

    def __setitem__(self, key: str, value: bytes) -> None:
        self._table[key] = base64.b64encode(value).decode("ascii")

    def __delitem__(self, key: str) -> None:
        del self._table[key]

    def __iter__(self) -> Iterator[str]:
        # A skipped changelog record (streams/codecs.py) leaves a None key or value: absent.
        return iter([k for k, v in list(self._table.items()) if k is not None and v is not None])

    def __len__(self) -> int:
        return sum(1 for _ in self)


def stats_key(stats: WindowStats) -> bytes:
    """Windows are keyed by model: one policy worker sees every version and deployment of a
    model (canary against stable) and owns its kill switches."""
    return stats.model.encode()
