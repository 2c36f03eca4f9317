"""The two patches of faust's Kafka consumer in streams/tuning.py, each on its own."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from typing import Any, cast

import faust
import pytest
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaDriverConsumer
from faust.types import TP

from streams import tuning


@pytest.fixture(autouse=True)
def faust_as_shipped(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """faust's own methods during each test (a worker built in this process may have patched
    them already), whatever was there put back afterwards."""
    monkeypatch.setattr(AIOKafkaConsumerThread, "_create_worker_consumer", tuning._original)
    monkeypatch.setattr(Consumer, "resume_partitions", tuning._original_resume)
    monkeypatch.setattr(Consumer, "perform_seek", tuning._original_perform_seek)
    yield
    tuning._deferred.clear()


def worker_consumer_wait_ms() -> int:
    """The fetch wait of the worker consumer faust builds for an app (nothing connects)."""

    async def build() -> int:
        app = faust.App("tuning-test", broker="kafka://127.0.0.1:9")
        thread = cast(Any, app.consumer)._thread
        consumer = thread._create_worker_consumer(app.transport)
        try:
            return int(consumer._fetch_max_wait_ms)
        finally:
            await consumer.stop()

    return asyncio.run(build())


def test_worker_consumer_gets_the_configured_fetch_wait() -> None:
    assert worker_consumer_wait_ms() == 1500  # what faust-streaming hard-codes
    tuning.set_fetch_max_wait(25)
    assert worker_consumer_wait_ms() == 25
    tuning.set_fetch_max_wait(40)  # set again: the latest wins, not wrapped twice
    assert worker_consumer_wait_ms() == 40


@pytest.mark.parametrize("ms", [0, -1])
def test_fetch_wait_must_be_positive(ms: int) -> None:
    with pytest.raises(ValueError, match="> 0 ms"):
        tuning.set_fetch_max_wait(ms)
    assert worker_consumer_wait_ms() == 1500  # nothing patched


EVENTS0, SCORED1 = TP("llm.events", 0), TP("llm.scored", 1)
CHANGELOG0 = TP("app-windows-changelog", 0)
GONE = TP("llm.events", 5)  # revoked before the seek finished


class FakeConsumer:
    """Only what the patched methods touch: the assignment."""

    def __init__(self, assigned: set[TP]) -> None:
        self.assigned = assigned

    def assignment(self) -> set[TP]:
        return self.assigned


class Recorder:
    """Stands in for faust's own resume and seek, recording the order they run in."""

    def __init__(self, seek_error: Exception | None = None) -> None:
        self.calls: list[tuple[str, set[TP]]] = []
        self.seek_error = seek_error

    def resume(self, consumer: Consumer, partitions: Iterable[TP]) -> None:
        self.calls.append(("resume", set(partitions)))

    async def perform_seek(self, consumer: Consumer) -> None:
        await asyncio.sleep(0)
        self.calls.append(("seek", set()))
        if self.seek_error is not None:
            raise self.seek_error


@pytest.fixture
def patched(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder()
    monkeypatch.setattr(tuning, "_original_resume", recorder.resume)
    monkeypatch.setattr(tuning, "_original_perform_seek", recorder.perform_seek)
    tuning.seek_before_resume()
    return recorder


def test_stream_partitions_resume_after_the_seek_changelogs_at_once(patched: Recorder) -> None:
    consumer = cast(Consumer, FakeConsumer({EVENTS0, SCORED1, CHANGELOG0}))
    Consumer.resume_partitions(consumer, [EVENTS0, SCORED1, CHANGELOG0, GONE])
    assert patched.calls == [("resume", {CHANGELOG0})]  # recovery reads changelogs right away
    asyncio.run(Consumer.perform_seek(consumer))
    assert patched.calls == [("resume", {CHANGELOG0}), ("seek", set()),
                             ("resume", {EVENTS0, SCORED1})]  # fmt: skip
    asyncio.run(Consumer.perform_seek(consumer))  # nothing deferred any more
    assert patched.calls[-1] == ("seek", set())


def test_a_failed_seek_still_resumes(patched: Recorder) -> None:
    patched.seek_error = RuntimeError("seek failed")
    consumer = cast(Consumer, FakeConsumer({EVENTS0}))
    Consumer.resume_partitions(consumer, [EVENTS0])
    assert patched.calls == []  # no changelog: nothing resumed before the seek
    with pytest.raises(RuntimeError, match="seek failed"):
        asyncio.run(Consumer.perform_seek(consumer))
    assert patched.calls == [("seek", set()), ("resume", {EVENTS0})]


def test_deferred_partitions_are_per_consumer(patched: Recorder) -> None:
    first = cast(Consumer, FakeConsumer({EVENTS0}))
    second = cast(Consumer, FakeConsumer({SCORED1}))
    Consumer.resume_partitions(first, [EVENTS0])
    Consumer.resume_partitions(second, [SCORED1])
    asyncio.run(Consumer.perform_seek(second))
    assert patched.calls == [("seek", set()), ("resume", {SCORED1})]
    asyncio.run(Consumer.perform_seek(first))
    assert patched.calls[-1] == ("resume", {EVENTS0})


def test_the_driver_consumer_gets_the_seek_order() -> None:
    tuning.seek_before_resume()
    # faust's aiokafka Consumer inherits both methods: patching the base class reaches it.
    for name in ("resume_partitions", "perform_seek"):
        method = getattr(AIOKafkaDriverConsumer, name)
        assert method is getattr(Consumer, name)
        assert method.__module__ == tuning.__name__
