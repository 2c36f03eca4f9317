"""The ``aggregate`` role: window partials merged in a changelog-backed faust table.

Snapshots of changed windows are published every ``EMIT_INTERVAL_S``; windows past the
watermark are closed (a final snapshot) and, past the retention, expired. With drift on, final
windows also feed the rate-drift monitors.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator, MutableMapping
from typing import Any

import faust
import msgspec

from monitor.config import Settings
from monitor.metrics import Metrics
from monitor.scoring.rows import ScoredBatch
from monitor.windows.aggregate import WindowAggregator
from monitor.windows.drift import WindowRateDrift
from monitor.windows.stats import WindowPartial, WindowStats
from streams.kafka import deliver, kafka_partition
from streams.observe import observe_findings, observe_window

EMIT_INTERVAL_S = 0.25
SWEEP_INTERVAL_S = 1.0

_partial = msgspec.msgpack.Decoder(WindowPartial)
_msgpack = msgspec.msgpack.Encoder()


def add_aggregate_role(
    app: faust.App, settings: Settings, metrics: Metrics, topics: dict[str, Any]
) -> None:
    k = settings.kafka
    windows_out, scored = topics[k.windows_topic], topics[k.scored_topic]
    rate_drift = WindowRateDrift() if settings.detectors.drift.enabled else None
    table = app.Table(
        "windows", default=None, key_type=str, value_type=str, partitions=k.partitions
    )
    aggregator = WindowAggregator(
        TextValues(table),
        allowed_lateness_s=settings.pipeline.allowed_lateness_s,
        retention_s=settings.pipeline.window_retention_s,
        bias_confidence=settings.detectors.bias.confidence,
        bias_min_per_group=settings.detectors.bias.min_per_group,
    )
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

    @app.agent(topics[k.partials_topic], name="aggregate")
    async def aggregate(stream: Any) -> None:
        async for event in stream.events():
            partial = _partial.decode(event.value)
            if aggregator.add(partial):
                metrics.partial_events_merged.inc(partial.events)
                dirty.add(partial.key)
                metrics.windows_pending.set(len(dirty))
            else:
                metrics.late_events.inc(partial.events)
            if time.monotonic() - last_sweep[0] < SWEEP_INTERVAL_S:
                continue
            last_sweep[0] = time.monotonic()
            # Table writes must happen while handling an event of the key's own partition,
            # so the changelog record lands where recovery will look for it.
            partition = event.message.partition
            sends = []
            for key in aggregator.due():
                stats = aggregator.close(key)
                dirty.discard(key)
                if stats is not None:
                    sends.extend(await publish(stats))
            for key in aggregator.expired():
                if kafka_partition(key.encode(), k.partitions) == partition:
                    aggregator.expire(key)
                    dirty.discard(key)
            await deliver(sends)

    @app.timer(interval=EMIT_INTERVAL_S)  # type: ignore[untyped-decorator]
    async def emit_snapshots() -> None:
        sends = []
        for key in list(dirty):
            dirty.discard(key)
            stats = aggregator.snapshot(key)
            if stats is not None:
                sends.extend(await publish(stats))
        await deliver(sends)
        metrics.windows_pending.set(len(dirty))  # zero: every changed window published, acked


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
        return iter(list(self._table.keys()))

    def __len__(self) -> int:
        return len(self._table)


def stats_key(stats: WindowStats) -> bytes:
    """Windows are keyed by model: one policy worker sees every version and deployment of a
    model (canary against stable) and owns its kill switches."""
    return stats.model.encode()
