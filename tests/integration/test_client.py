"""monitor.client against the real (tansu) broker: every record read back decodes with the
worker's own decoder, keyed by request id; sends are batched (produce requests counted by a
proxy the broker advertises); a full buffer drops and counts without blocking; close and exit
deliver what is buffered. The OpenAI wrapper is driven by the real ``openai`` client against a
loopback OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer

from monitor.client import AsyncPublisher, Event, Publisher, encode_record, instrument, produce
from monitor.devtools.broker import (
    BundledBroker,
    broker_binary,
    free_port,
    start_broker,
    wait_for_port,
)
from monitor.ingest.decode import DecodedBatch, RawMessage, decode_batch
from streams.topics import ensure_topics

pytestmark = pytest.mark.integration

TOPIC = "llm.events"
PARTITIONS = 4
PRODUCE_API_KEY = 0


def event(request_id: str, **fields: Any) -> Event:
    base: dict[str, Any] = {
        "timestamp": int(time.time() * 1000),
        "model": "m",
        "model_version": "v",
    }
    return Event(request_id=request_id, **(base | fields))


def create_topic(bootstrap: str) -> None:
    asyncio.run(ensure_topics(bootstrap, {TOPIC: PARTITIONS}))


def read_back(bootstrap: str, count: int, timeout_s: float = 30.0) -> list[RawMessage]:
    """The first ``count`` records of the events topic (fewer if they never come)."""

    async def read() -> list[RawMessage]:
        consumer = AIOKafkaConsumer(
            TOPIC, bootstrap_servers=bootstrap, auto_offset_reset="earliest"
        )
        await consumer.start()
        records: list[RawMessage] = []
        try:
            deadline = time.monotonic() + timeout_s
            while len(records) < count and time.monotonic() < deadline:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    records.extend(
                        RawMessage(r.value, r.key, r.topic, r.partition, r.offset, r.timestamp)
                        for r in batch
                    )
        finally:
            await consumer.stop()
        return records

    return asyncio.run(read())


def decoded(records: list[RawMessage]) -> DecodedBatch:
    """The worker's decoding of ``records``: every one must be a valid event."""
    batch = decode_batch(records, max_bytes=1_000_000, now_ms=lambda: int(time.time() * 1000))
    assert batch.dead_letters == []
    return batch


def assert_keyed_by_request_id(records: list[RawMessage]) -> None:
    partition_of: dict[bytes, int] = {}
    for record in records:
        key = json.loads(record.value)["request_id"].encode()
        assert record.key == key
        assert partition_of.setdefault(key, record.partition) == record.partition
    assert len({r.partition for r in records}) > 1  # keys spread the events over partitions


# --- a proxy that counts produce requests -----------------------------------------------------


@dataclass
class CountingProxy:
    """Forwards Kafka connections to ``upstream`` and counts the requests by API key."""

    port: int
    upstream: int
    requests: dict[int, int] = field(default_factory=dict)
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)

    def start(self) -> None:
        ready = threading.Event()

        async def serve() -> None:
            await asyncio.start_server(self._client, "127.0.0.1", self.port)
            ready.set()

        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(serve(), self.loop)
        assert ready.wait(10)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)

    @property
    def produce_requests(self) -> int:
        return self.requests.get(PRODUCE_API_KEY, 0)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        with contextlib.suppress(Exception):
            await asyncio.gather(self._requests(reader, up_writer), self._copy(up_reader, writer))
        writer.close()
        up_writer.close()

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            size = await reader.readexactly(4)
            body = await reader.readexactly(struct.unpack(">i", size)[0])
            (api_key,) = struct.unpack(">h", body[:2])
            self.requests[api_key] = self.requests.get(api_key, 0) + 1
            writer.write(size + body)
            await writer.drain()

    async def _copy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[tuple[str, CountingProxy]]:
    """A tansu broker that advertises a counting proxy: every client request passes through it."""
    broker_port, proxy_port = free_port(), free_port()
    command = [
        str(broker_binary()), "--listener-url", f"tcp://127.0.0.1:{broker_port}",
        "--advertised-listener-url", f"tcp://127.0.0.1:{proxy_port}",
        "--storage-engine", "memory://tansu/",
    ]  # fmt: skip
    with open(tmp_path / "broker.log", "ab") as log:
        broker = BundledBroker(broker_port, subprocess.Popen(command, stdout=log, stderr=log))
    proxy = CountingProxy(proxy_port, broker_port)
    try:
        wait_for_port("127.0.0.1", broker_port)
        proxy.start()
        bootstrap = f"127.0.0.1:{proxy_port}"
        create_topic(bootstrap)
        yield bootstrap, proxy
    finally:
        proxy.stop()
        broker.stop()


# --- the synchronous publisher ----------------------------------------------------------------


def test_events_arrive_keyed_by_request_id_and_decode(broker: BundledBroker) -> None:
    create_topic(broker.bootstrap)
    events = [event(f"r{i}", response=f"answer {i}", latency_ms=float(i)) for i in range(200)]
    events.append(event("r7", response="a retry of r7"))  # same request id, same partition
    with Publisher(broker.bootstrap, flush_at_exit=False) as publisher:
        assert all(publisher.publish(e) for e in events)
        assert publisher.flush(timeout_s=30)
    assert (publisher.stats.delivered, publisher.stats.dropped, publisher.stats.failed) == (
        len(events), 0, 0,
    )  # fmt: skip
    records = read_back(broker.bootstrap, len(events))
    assert len(records) == len(events)
    assert_keyed_by_request_id(records)
    got = decoded(records).events
    assert sorted(got, key=lambda e: (e.request_id, e.response or "")) == sorted(
        events, key=lambda e: (e.request_id, e.response or "")
    )


def test_sends_are_batched(proxied: tuple[str, CountingProxy]) -> None:
    bootstrap, proxy = proxied
    publisher = Publisher(bootstrap, linger_ms=50, flush_at_exit=False)
    for i in range(1000):
        publisher.publish(event(f"r{i}"))
    assert publisher.close(timeout_s=30)
    assert publisher.stats.delivered == 1000
    assert 0 < proxy.produce_requests <= 50, proxy.requests


def test_unreachable_broker_drops_and_counts_without_blocking() -> None:
    publisher = Publisher(f"127.0.0.1:{free_port()}", max_buffer=50, flush_at_exit=False)
    slowest = 0.0
    for i in range(2000):
        started = time.perf_counter()
        publisher.publish(event(f"r{i}"))
        slowest = max(slowest, time.perf_counter() - started)
    assert slowest < 0.25  # microseconds of work: anything near this is a wait on Kafka
    stats = publisher.stats
    assert (stats.accepted, stats.dropped, stats.pending) == (50, 1950, 50)
    started = time.perf_counter()
    assert publisher.close(timeout_s=0.5) is False
    assert time.perf_counter() - started < 2.0
    assert (publisher.stats.failed, publisher.stats.pending) == (50, 0)


def test_close_delivers_what_is_buffered_without_waiting_for_linger(broker: BundledBroker) -> None:
    create_topic(broker.bootstrap)
    publisher = Publisher(broker.bootstrap, linger_ms=20_000, flush_at_exit=False)
    for i in range(300):
        publisher.publish(event(f"r{i}"))
    started = time.monotonic()
    assert publisher.close(timeout_s=15)
    assert time.monotonic() - started < 10
    assert len(decoded(read_back(broker.bootstrap, 300)).events) == 300


def test_events_buffered_while_the_broker_is_down_arrive_when_it_is_up(tmp_path: Path) -> None:
    port = free_port()
    publisher = Publisher(f"127.0.0.1:{port}", flush_at_exit=False)
    for i in range(20):
        publisher.publish(event(f"r{i}"))
    running = start_broker(port=port, log_path=tmp_path / "broker.log")
    try:
        create_topic(running.bootstrap)
        assert publisher.close(timeout_s=30), publisher.stats
        assert len(decoded(read_back(running.bootstrap, 20)).events) == 20
    finally:
        running.stop()


def test_interpreter_exit_flushes(broker: BundledBroker) -> None:
    create_topic(broker.bootstrap)
    script = (
        "from monitor.client import Event, Publisher\n"
        f"p = Publisher({broker.bootstrap!r}, linger_ms=60_000)\n"
        "for i in range(50):\n"
        "    p.publish(Event(request_id=f'x{i}', timestamp=1_700_000_000_000, model='m',\n"
        "                    model_version='v'))\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    records = read_back(broker.bootstrap, 50)
    assert sorted(r.key or b"" for r in records) == sorted(f"x{i}".encode() for i in range(50))


def test_a_forked_worker_publishes_through_its_own_sender(broker: BundledBroker) -> None:
    """A pre-fork server (gunicorn --preload): the child's events are sent by the child."""
    create_topic(broker.bootstrap)
    script = (
        "import os\n"
        "from monitor.client import Event, Publisher\n"
        f"p = Publisher({broker.bootstrap!r})\n"
        "def publish(prefix):\n"
        "    for i in range(5):\n"
        "        p.publish(Event(request_id=f'{prefix}{i}', timestamp=1_700_000_000_000,\n"
        "                        model='m', model_version='v'))\n"
        "publish('parent')\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    publish('child')\n"
        "else:\n"
        "    assert os.waitpid(pid, 0)[1] == 0\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    keys = sorted(r.key or b"" for r in read_back(broker.bootstrap, 10))
    assert keys == sorted(f"{who}{i}".encode() for who in ("child", "parent") for i in range(5))


def test_produce_sends_encoded_records(broker: BundledBroker) -> None:
    """The bulk path of `llm-monitor replay`, probe and the demo."""
    create_topic(broker.bootstrap)
    records = [encode_record(event(f"r{i}")) for i in range(10)]
    assert asyncio.run(produce(broker.bootstrap, TOPIC, records)) == 10
    assert len(decoded(read_back(broker.bootstrap, 10)).events) == 10


# --- the asyncio publisher --------------------------------------------------------------------


def test_async_events_arrive_keyed_and_decode(broker: BundledBroker) -> None:
    create_topic(broker.bootstrap)
    events = [event(f"r{i}", prompt=f"q{i}") for i in range(200)]

    async def run() -> AsyncPublisher:
        async with AsyncPublisher(broker.bootstrap) as publisher:
            for e in events:
                assert await publisher.publish(e)
            assert await publisher.flush(timeout_s=30)
        return publisher

    stats = asyncio.run(run()).stats
    assert (stats.delivered, stats.dropped, stats.failed) == (200, 0, 0)
    records = read_back(broker.bootstrap, 200)
    assert_keyed_by_request_id(records)
    assert {e.request_id for e in decoded(records).events} == {e.request_id for e in events}


def test_async_sends_are_batched(proxied: tuple[str, CountingProxy]) -> None:
    bootstrap, proxy = proxied

    async def run() -> AsyncPublisher:
        publisher = AsyncPublisher(bootstrap, linger_ms=50)
        for i in range(1000):
            publisher.publish_nowait(event(f"r{i}"))
            if i % 100 == 0:
                await asyncio.sleep(0)  # an app yields now and then
        assert await publisher.close(timeout_s=30)
        return publisher

    assert asyncio.run(run()).stats.delivered == 1000
    assert 0 < proxy.produce_requests <= 50, proxy.requests


def test_async_unreachable_broker_drops_and_counts_without_blocking() -> None:
    async def run() -> AsyncPublisher:
        publisher = AsyncPublisher(f"127.0.0.1:{free_port()}", max_buffer=50)
        started = time.perf_counter()
        for i in range(2000):
            publisher.publish_nowait(event(f"r{i}"))
        assert time.perf_counter() - started < 1.0
        await asyncio.sleep(0.3)  # let the sender try (and fail) to connect
        assert (publisher.stats.accepted, publisher.stats.dropped) == (50, 1950)
        started = time.perf_counter()
        assert await publisher.close(timeout_s=0.5) is False
        assert time.perf_counter() - started < 3.0
        return publisher

    stats = asyncio.run(run()).stats
    assert (stats.failed, stats.pending) == (50, 0)


def test_async_close_delivers_what_is_buffered(broker: BundledBroker) -> None:
    create_topic(broker.bootstrap)

    async def run() -> None:
        publisher = AsyncPublisher(broker.bootstrap, linger_ms=20_000)
        for i in range(300):
            publisher.publish_nowait(event(f"r{i}"))
        started = time.monotonic()
        assert await publisher.close(timeout_s=15)
        assert time.monotonic() - started < 10

    asyncio.run(run())
    assert len(decoded(read_back(broker.bootstrap, 300)).events) == 300


# --- the OpenAI wrapper, real openai client, loopback server ----------------------------------


def completion_body(request: dict[str, Any]) -> dict[str, Any]:
    choices = [
        {"index": i, "message": {"role": "assistant", "content": f"answer {i}"},
         "finish_reason": "stop"}
        for i in range(request.get("n", 1))
    ]  # fmt: skip
    return {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1_700_000_000,
        "model": f"{request['model']}-2024-08-06", "choices": choices,
        "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15},
    }  # fmt: skip


def stream_chunks(request: dict[str, Any]) -> list[dict[str, Any]]:
    base = {"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": f"{request['model']}-2024-08-06"}  # fmt: skip
    deltas = [{"role": "assistant", "content": ""}, {"content": "Hel"}, {"content": "lo"}]
    chunks = [base | {"choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
    chunks.append(base | {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if request.get("stream_options", {}).get("include_usage"):
        usage = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
        chunks.append(base | {"choices": [], "usage": usage})
    return chunks


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if body["model"] == "missing":
        error = {"message": "model not found", "type": "invalid_request_error", "code": None}
        return web.json_response({"error": error}, status=404)
    if not body.get("stream"):
        return web.json_response(completion_body(body))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for c in stream_chunks(body):
        await response.write(f"data: {json.dumps(c)}\n\n".encode())
        await asyncio.sleep(0.01)
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


@pytest.fixture
def llm_server() -> Iterator[str]:
    """An OpenAI-compatible chat endpoint on loopback, served from its own thread."""
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat_completions)
    runner = web.AppRunner(app)
    port = free_port()

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]


def check_openai_events(records: list[RawMessage]) -> None:
    """The three calls each test makes: plain (n=2), streamed, and one that fails."""
    events = {e.response and e.response[:3]: e for e in decoded(records).events}
    plain, streamed, failed = events["ans"], events["Hel"], events[None]
    assert (plain.status, plain.response, plain.samples) == ("ok", "answer 0", ["answer 1"])
    assert (plain.model, plain.model_version, plain.deployment, plain.app) == (
        "gpt-test",
        "gpt-test-2024-08-06",
        "canary",
        "support-bot",
    )
    assert (plain.prompt, plain.input_tokens, plain.output_tokens) == ("be brief\nhello", 11, 4)
    assert plain.latency_ms is not None and plain.latency_ms > 0
    assert (streamed.status, streamed.response, streamed.output_tokens) == ("ok", "Hello", 2)
    assert streamed.ttft_ms is not None and streamed.latency_ms is not None
    assert 0 < streamed.ttft_ms <= streamed.latency_ms
    assert (failed.status, failed.error_type, failed.model) == ("error", "NotFoundError", "missing")
    assert failed.attributes == {"http_status": "404"}


def test_openai_client_calls_become_events(broker: BundledBroker, llm_server: str) -> None:
    openai = pytest.importorskip("openai")
    create_topic(broker.bootstrap)
    publisher = Publisher(broker.bootstrap, flush_at_exit=False)
    client = instrument(
        openai.OpenAI(api_key="test", base_url=llm_server, max_retries=0), publisher,
        app="support-bot", deployment="canary",
    )  # fmt: skip
    reply = client.chat.completions.create(model="gpt-test", messages=MESSAGES, n=2)
    assert isinstance(reply, openai.types.chat.ChatCompletion)
    assert reply.choices[0].message.content == "answer 0"
    stream = client.chat.completions.create(
        model="gpt-test", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert all(isinstance(c, openai.types.chat.ChatCompletionChunk) for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="missing", messages=MESSAGES)
    assert publisher.close(timeout_s=15)
    check_openai_events(read_back(broker.bootstrap, 3))


def test_async_openai_client_calls_become_events(broker: BundledBroker, llm_server: str) -> None:
    openai = pytest.importorskip("openai")
    create_topic(broker.bootstrap)

    async def run() -> None:
        async with AsyncPublisher(broker.bootstrap) as publisher:
            client = instrument(
                openai.AsyncOpenAI(api_key="test", base_url=llm_server, max_retries=0),
                publisher, app="support-bot", deployment="canary",
            )  # fmt: skip
            reply = await client.chat.completions.create(model="gpt-test", messages=MESSAGES, n=2)
            assert reply.choices[1].message.content == "answer 1"
            stream = await client.chat.completions.create(
                model="gpt-test", messages=MESSAGES, stream=True,
                stream_options={"include_usage": True},
            )  # fmt: skip
            async with stream:
                text = "".join(
                    [c.choices[0].delta.content or "" async for c in stream if c.choices]
                )
            assert text == "Hello"
            with pytest.raises(openai.NotFoundError):
                await client.chat.completions.create(model="missing", messages=MESSAGES)
        assert publisher.stats.delivered == 3

    asyncio.run(run())
    check_openai_events(read_back(broker.bootstrap, 3))
