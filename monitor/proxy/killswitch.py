"""Kill-switch state for the proxy, followed from the policy topic.

The policy role applies every engage and release (API commands from the control topic, and the
kills its own rules decide) and publishes the resulting ``KillSwitchState`` in a
``PolicyRecords`` envelope on the policy topic (``llm.policy``, msgpack) before the API call
returns. The proxy reads that topic with its own consumer, without a consumer group (it
commits nothing and reads every partition from the beginning, so it knows the current state at
start), and keeps the latest state per ``model/deployment`` in memory; a request looks it up in
a dict. Records carry no key, so states of one switch may sit in different partitions:
the one with the latest ``changed_at_ms`` wins, whatever the order they are read in.

Fail-open: while the broker cannot be reached the proxy knows no state and passes every call
through (``synced`` is False, the health and metrics say so); once read, a state is kept
through a later broker outage (a switch engaged stays engaged).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

import msgspec

from monitor.policy.records import KillSwitchState

if TYPE_CHECKING:
    from monitor.proxy.metrics import ProxyMetrics

log = logging.getLogger(__name__)

DEFAULT_POLICY_TOPIC: Final = "llm.policy"  # monitor.config.KafkaSettings.policy_topic
RETRY_MIN_S: Final = 0.2
RETRY_MAX_S: Final = 5.0
FETCH_WAIT_MS: Final = 100  # how long a fetch waits for new records: bounds the reaction time


class _KillSwitches(msgspec.Struct):
    """The part of a ``PolicyRecords`` envelope the proxy reads; the rest is skipped."""

    killswitch: list[KillSwitchState] = msgspec.field(default_factory=list)


_records = msgspec.msgpack.Decoder(_KillSwitches)


class KillSwitchView(Protocol):
    """What the proxy asks of kill-switch state, per request and for its health page."""

    @property
    def synced(self) -> bool:
        """Whether the state read so far is current (the topic was read to its end once)."""
        ...

    def engaged(self, model: str, deployment: str) -> KillSwitchState | None:
        """The engaged switch of ``model/deployment``, or None (released, unknown)."""
        ...

    def health(self) -> dict[str, Any]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class KillSwitchTable:
    """The latest state per ``model/deployment``: the newest ``changed_at_ms`` wins."""

    def __init__(self) -> None:
        self._states: dict[str, KillSwitchState] = {}
        self._engaged: dict[str, KillSwitchState] = {}

    def apply(self, state: KillSwitchState) -> bool:
        """Take ``state`` unless an equally new or newer one is known; whether it changed."""
        key = state.key
        current = self._states.get(key)
        if current is not None and current.changed_at_ms > state.changed_at_ms:
            return False
        self._states[key] = state
        if state.engaged:
            self._engaged[key] = state
        else:
            self._engaged.pop(key, None)
        return current is None or current.engaged != state.engaged

    def apply_record(self, value: bytes) -> int:
        """Apply the kill-switch states of one policy-topic record; how many it held.
        Raises ``msgspec.DecodeError`` for a record that is not a ``PolicyRecords``."""
        states = _records.decode(value).killswitch
        for state in states:
            self.apply(state)
        return len(states)

    def engaged(self, model: str, deployment: str) -> KillSwitchState | None:
        return self._engaged.get(f"{model}/{deployment}")

    @property
    def engaged_keys(self) -> list[str]:
        return sorted(self._engaged)


class StaticKillSwitches:
    """Fixed state: for ``--no-kill-switch``, tests and benchmarks."""

    def __init__(self, states: Sequence[KillSwitchState] = ()) -> None:
        self.table = KillSwitchTable()
        for state in states:
            self.table.apply(state)

    @property
    def synced(self) -> bool:
        return True

    def engaged(self, model: str, deployment: str) -> KillSwitchState | None:
        return self.table.engaged(model, deployment)

    def health(self) -> dict[str, Any]:
        return {"source": "static", "synced": True, "engaged": self.table.engaged_keys}

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class KillSwitchFollower:
    """Follows the policy topic with an aiokafka consumer in a background task.

    ``options`` go to ``AIOKafkaConsumer`` as they are (security settings). The task connects
    with backoff while the broker is away; reading never blocks a request."""

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        *,
        topic: str = DEFAULT_POLICY_TOPIC,
        options: Mapping[str, Any] | None = None,
        metrics: ProxyMetrics | None = None,
    ) -> None:
        if not bootstrap_servers:
            raise ValueError("bootstrap_servers must name at least one broker, e.g. 'kafka:9092'")
        if not topic:
            raise ValueError("topic must be the policy topic's name, e.g. 'llm.policy'")
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.options: dict[str, Any] = dict(options or {})
        self.table = KillSwitchTable()
        self._metrics = metrics
        self._task: asyncio.Task[None] | None = None
        self._state = "stopped"  # stopped | connecting | catching_up | live
        self._synced = False
        self._states = 0
        self._undecodable = 0
        self._last_error = ""
        self._update_gauges()

    @property
    def synced(self) -> bool:
        return self._synced

    def engaged(self, model: str, deployment: str) -> KillSwitchState | None:
        return self.table.engaged(model, deployment)

    def health(self) -> dict[str, Any]:
        return {
            "source": f"kafka:{self.topic}",
            "state": self._state,
            "synced": self._synced,
            "engaged": self.table.engaged_keys,
            "states_read": self._states,
            "undecodable": self._undecodable,
            "last_error": self._last_error,
        }

    async def start(self) -> None:
        if self._task is None:
            self._state = "connecting"
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="llm-monitor-proxy-killswitch"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._state = "stopped"

    async def _run(self) -> None:
        delay = RETRY_MIN_S
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._last_error = f"{type(exc).__name__}: {exc}"[:300]
                if self._state != "connecting":  # it was following: start the backoff over
                    delay = RETRY_MIN_S
                if delay == RETRY_MIN_S:
                    log.warning("proxy: cannot follow %s (retrying): %s", self.topic, exc)
                self._state = "connecting"
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_S)

    async def _follow(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        config: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "group_id": None,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "fetch_max_wait_ms": FETCH_WAIT_MS,
            "request_timeout_ms": 10_000,
            "metadata_max_age_ms": 30_000,
        }
        config.update(self.options)
        consumer = AIOKafkaConsumer(**config)
        try:
            await consumer.start()
            partitions: set[int] = set()
            while not partitions:  # the worker creates the topic; until then nothing is engaged
                await consumer.topics()
                partitions = set(consumer.partitions_for_topic(self.topic) or ())
                if not partitions:
                    self._mark_synced()  # no topic, no policy role yet: no switch is engaged
                    await asyncio.sleep(1.0)
            assigned = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            consumer.assign(assigned)
            await consumer.seek_to_beginning(*assigned)
            ends = await consumer.end_offsets(assigned)
            if not self._synced:
                self._state = "catching_up"
            self._last_error = ""
            while True:
                if not self._synced and await _reached(consumer, ends):
                    self._mark_synced()
                if self._synced:
                    self._state = "live"
                # Returns as soon as records arrive (FETCH_WAIT_MS): the timeout only paces
                # the loop while nothing happens.
                batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
                for records in batches.values():
                    for record in records:
                        self._take(record.value)
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()

    def _take(self, value: bytes | None) -> None:
        if not value:
            return
        try:
            self._states += self.table.apply_record(value)
        except msgspec.DecodeError:
            self._undecodable += 1  # the worker dead-letters such records; not ours to judge
            if self._metrics is not None:
                self._metrics.killswitch_records.labels("undecodable").inc()
            return
        if self._metrics is not None:
            self._metrics.killswitch_records.labels("read").inc()
        self._update_gauges()

    def _mark_synced(self) -> None:
        if not self._synced:
            self._synced = True
            log.info("proxy: kill-switch state synced, engaged: %s", self.table.engaged_keys)
        self._update_gauges()

    def _update_gauges(self) -> None:
        if self._metrics is not None:
            self._metrics.killswitch_synced.set(1 if self._synced else 0)
            self._metrics.killswitch_engaged.set(len(self.table.engaged_keys))


async def _reached(consumer: Any, ends: Mapping[Any, int]) -> bool:
    """Whether every partition was read up to the end it had when the follower started."""
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return False
    return True
