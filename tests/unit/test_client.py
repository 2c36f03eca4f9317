"""monitor.client without a broker: a light import, the event contract, the outcome counts and
the OpenAI wrapper over duck-typed fake clients (every event it builds must decode)."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from monitor.client import (
    DEFAULT_TOPIC,
    AsyncPublisher,
    Event,
    Feedback,
    Publisher,
    encode_record,
    instrument,
)
from monitor.client.stats import Tally
from monitor.config import KafkaSettings
from monitor.ingest.events import decode_event

HEAVY = ("faust", "torch", "chdb", "sentence_transformers", "detectors", "streams", "sklearn",
         "onnxruntime", "transformers", "aiokafka", "kafka", "pydantic", "openai")  # fmt: skip


def test_import_is_light() -> None:
    code = (
        "import json, sys\n"
        "import monitor.client\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, text=True)
    loaded = set(json.loads(out.stdout))
    assert not loaded & set(HEAVY), f"import monitor.client loaded {sorted(loaded & set(HEAVY))}"


def test_default_topic_is_the_workers() -> None:
    assert KafkaSettings().events_topic == DEFAULT_TOPIC


def test_record_is_keyed_by_request_id_and_decodes_to_the_same_event() -> None:
    event = Event(
        request_id="r-1", timestamp=1_700_000_000_000, model="m", model_version="v",
        deployment="canary", app="chat", prompt="hi", response="hello", latency_ms=12.5,
        ttft_ms=3.0, input_tokens=4, output_tokens=2, cost_usd=0.001, status="ok",
        attributes={"group": "a"}, feedback=Feedback(complaint=True, rating=1.0),
        samples=["hello!"], context=["doc"],
    )  # fmt: skip
    key, value = encode_record(event)
    assert key == b"r-1"
    assert decode_event(value) == event


@pytest.mark.parametrize("publisher", [Publisher, AsyncPublisher])
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_buffer": 0}, "max_buffer must be >= 1"),
        ({"linger_ms": -1}, "linger_ms must be >= 0"),
        ({"close_timeout_s": -1.0}, "close_timeout_s must be >= 0"),
        ({"topic": ""}, "topic must be a non-empty"),
    ],
)
def test_publishers_validate_parameters(
    publisher: type[Publisher | AsyncPublisher], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        publisher("127.0.0.1:9092", **kwargs)
    with pytest.raises(ValueError, match="bootstrap_servers"):
        publisher("")


def test_tally_bounds_pending_and_counts_every_outcome() -> None:
    tally = Tally(max_pending=2)
    assert [tally.accept() for _ in range(3)] == [True, True, False]
    assert not tally.settle(delivered=True)
    assert tally.accept()
    assert not tally.settle(delivered=False)
    assert tally.wait_idle(0.01) is False
    assert tally.abandon() == 1
    assert tally.accept() is False  # abandoned: the publisher is closed
    tally.settle(delivered=True)  # a late answer changes nothing
    stats = tally.snapshot()
    assert (stats.accepted, stats.delivered, stats.dropped, stats.failed) == (3, 1, 2, 2)
    assert stats.pending == 0


def test_closed_publisher_drops_and_exports_counts() -> None:
    registry = CollectorRegistry()
    publisher = Publisher("127.0.0.1:1", registry=registry, flush_at_exit=False)
    assert publisher.close() is True  # nothing was published: no thread, nothing lost
    assert publisher.publish(event("r")) is False
    assert publisher.dropped == 1
    sample = registry.get_sample_value
    assert sample("llm_monitor_client_events_total", {"outcome": "dropped"}) == 1
    assert sample("llm_monitor_client_events_total", {"outcome": "accepted"}) == 0


def test_closed_async_publisher_drops() -> None:
    async def run() -> AsyncPublisher:
        publisher = AsyncPublisher("127.0.0.1:1")
        assert await publisher.close() is True
        assert publisher.publish_nowait(event("r")) is False
        return publisher

    assert asyncio.run(run()).stats.dropped == 1


def event(request_id: str) -> Event:
    return Event(request_id=request_id, timestamp=1_700_000_000_000, model="m", model_version="v")


# --- the OpenAI wrapper over fakes ------------------------------------------------------------


class Sink:
    """Collects events; checks each against the worker's decoder (the contract)."""

    def __init__(self, fail: bool = False) -> None:
        self.events: list[Event] = []
        self.fail = fail

    def publish_nowait(self, event: Event) -> bool:
        if self.fail:
            raise RuntimeError("sink is down")
        decode_event(encode_record(event)[1])
        self.events.append(event)
        return True


class SyncCompletions:
    def __init__(self, respond: Callable[[dict[str, Any]], Any]) -> None:
        self.respond = respond
        self.calls: list[dict[str, Any]] = []

    def create(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        return self.respond(kwargs)


class AsyncCompletions(SyncCompletions):
    async def create(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        return self.respond(kwargs)


def fake_client(completions: SyncCompletions) -> Any:
    return SimpleNamespace(chat=SimpleNamespace(completions=completions))


def completion(*texts: str, refusal: str | None = None, finish: str = "stop") -> Any:
    choices = [
        SimpleNamespace(
            index=i, message=SimpleNamespace(role="assistant", content=t, refusal=refusal),
            finish_reason=finish,
        )
        for i, t in enumerate(texts)
    ]  # fmt: skip
    usage = SimpleNamespace(prompt_tokens=7, completion_tokens=3, total_tokens=10)
    return SimpleNamespace(id="c-1", model="gpt-x-2024-01-01", choices=choices, usage=usage)


def chunk(text: str | None, *, usage: Any = None, finish: str | None = None) -> Any:
    choices = [] if text is None and finish is None else [
        SimpleNamespace(index=0, delta=SimpleNamespace(content=text), finish_reason=finish)
    ]  # fmt: skip
    return SimpleNamespace(model="gpt-x-2024-01-01", choices=choices, usage=usage)


class FakeStream:
    def __init__(self, chunks: list[Any], error: Exception | None = None) -> None:
        self.chunks = chunks
        self.error = error
        self.closed = False
        self.response = "raw-response"

    def __iter__(self) -> Iterator[Any]:
        yield from self.chunks
        if self.error is not None:
            raise self.error

    async def __aiter__(self) -> AsyncIterator[Any]:
        for c in self.chunks:
            yield c
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self.closed = True


class Boom(Exception):
    status_code = 429


class APITimeoutError(Exception):
    pass


MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]


def ticking(*values: float) -> Callable[[], float]:
    it = itertools.chain(values, itertools.repeat(values[-1]))
    return lambda: next(it)


def instrumented(completions: SyncCompletions, sink: Sink, **kwargs: Any) -> Any:
    options: dict[str, Any] = {
        "clock": ticking(10.0, 10.25), "wall_clock_ms": lambda: 1_700_000_000_000,
        "request_ids": iter(f"req-{i}" for i in itertools.count()).__next__,
        "app": "support", "deployment": "canary", "route": "/chat",
    } | kwargs  # fmt: skip
    return instrument(fake_client(completions), sink, **options)


def test_call_is_recorded_and_its_result_returned_unchanged() -> None:
    response = completion("hi there", "hello!")
    completions = SyncCompletions(lambda _: response)
    sink = Sink()
    client = instrumented(completions, sink, attributes={"tenant": "acme"})
    result = client.chat.completions.create(model="gpt-x", messages=MESSAGES, n=2)
    assert result is response
    assert completions.calls == [{"model": "gpt-x", "messages": MESSAGES, "n": 2}]
    (e,) = sink.events
    assert (e.request_id, e.timestamp, e.model, e.model_version) == (
        "req-0",
        1_700_000_000_000,
        "gpt-x",
        "gpt-x-2024-01-01",
    )
    assert (e.app, e.deployment, e.route, e.status, e.error_type) == (
        "support",
        "canary",
        "/chat",
        "ok",
        None,
    )
    assert (e.prompt, e.response, e.samples) == ("be brief\nhello", "hi there", ["hello!"])
    assert (e.latency_ms, e.ttft_ms, e.input_tokens, e.output_tokens) == (250.0, None, 7, 3)
    assert e.attributes == {"tenant": "acme"}


def test_given_model_version_wins_and_text_can_be_left_out() -> None:
    sink = Sink()
    client = instrumented(
        SyncCompletions(lambda _: completion("secret")), sink, model_version="v7",
        capture_text=False,
    )  # fmt: skip
    client.chat.completions.create(model="gpt-x", messages=MESSAGES)
    (e,) = sink.events
    assert (e.model_version, e.prompt, e.response, e.samples) == ("v7", None, None, [])


def test_content_parts_mappings_and_refusals() -> None:
    response = {
        "model": "m-served",
        "choices": [{"index": 0, "message": {"content": None, "refusal": "I can't help"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 1},
    }  # fmt: skip
    sink = Sink()
    client = instrumented(SyncCompletions(lambda _: response), sink)
    parts = [{"role": "user", "content": [{"type": "text", "text": "look"},
                                          {"type": "image_url", "image_url": {"url": "x"}}]}]  # fmt: skip
    assert client.chat.completions.create(model="m", messages=parts) is response
    (e,) = sink.events
    assert (e.status, e.prompt, e.response, e.input_tokens) == (
        "refused",
        "look",
        "I can't help",
        2,
    )


@pytest.mark.parametrize(
    ("error", "status", "attributes"),
    [(Boom("rate limited"), "error", {"http_status": "429"}),
     (APITimeoutError("slow"), "timeout", {}), (TimeoutError(), "timeout", {})],
)  # fmt: skip
def test_exception_is_recorded_and_reraised_unchanged(
    error: Exception, status: str, attributes: dict[str, str]
) -> None:
    def respond(_: dict[str, Any]) -> Any:
        raise error

    sink = Sink()
    client = instrumented(SyncCompletions(respond), sink)
    with pytest.raises(type(error)) as raised:
        client.chat.completions.create(model="gpt-x", messages=MESSAGES)
    assert raised.value is error
    (e,) = sink.events
    assert (e.status, e.error_type, e.response, e.model, e.model_version) == (
        status,
        type(error).__name__,
        None,
        "gpt-x",
        "gpt-x",
    )
    assert e.attributes == attributes
    assert e.latency_ms == 250.0


def test_publishing_errors_never_reach_the_caller() -> None:
    response = completion("fine")
    client = instrumented(SyncCompletions(lambda _: response), Sink(fail=True))
    assert client.chat.completions.create(model="gpt-x", messages=MESSAGES) is response


def test_instrumenting_again_replaces_the_settings() -> None:
    completions = SyncCompletions(lambda _: completion("x"))
    first, second = Sink(), Sink()
    client = instrumented(completions, first)
    instrument(client, second, app="other")
    client.chat.completions.create(model="gpt-x", messages=MESSAGES)
    assert (len(first.events), [e.app for e in second.events]) == (0, ["other"])
    assert len(completions.calls) == 1


def test_what_is_not_a_client_or_a_bad_label_is_refused() -> None:
    with pytest.raises(TypeError, match="no chat.completions.create"):
        instrument(object(), Sink())
    with pytest.raises(ValueError, match="deployment"):
        instrument(fake_client(SyncCompletions(lambda _: None)), Sink(), deployment="x" * 300)
    with pytest.raises(ValueError, match="attributes"):
        instrument(
            fake_client(SyncCompletions(lambda _: None)), Sink(),
            attributes={str(i): "v" for i in range(64)},
        )  # fmt: skip


STREAM = [chunk(""), chunk("Hel"), chunk("lo"), chunk(None, finish="stop"),
          chunk(None, usage=SimpleNamespace(prompt_tokens=5, completion_tokens=2))]  # fmt: skip


def test_stream_passes_chunks_through_and_records_ttft_text_and_usage() -> None:
    stream = FakeStream(STREAM)
    sink = Sink()
    # call start, first chunk with text, end of stream
    client = instrumented(SyncCompletions(lambda _: stream), sink, clock=ticking(1.0, 1.125, 1.5))
    result = client.chat.completions.create(model="gpt-x", messages=MESSAGES, stream=True)
    assert result.response == "raw-response"  # attributes are the stream's
    assert not sink.events  # nothing until the stream ends
    received = list(result)
    assert len(received) == len(STREAM)
    assert all(a is b for a, b in zip(received, STREAM, strict=True))
    (e,) = sink.events
    assert (e.status, e.response, e.ttft_ms, e.latency_ms) == ("ok", "Hello", 125.0, 500.0)
    assert (e.input_tokens, e.output_tokens, e.model_version) == (5, 2, "gpt-x-2024-01-01")
    result.close()
    assert stream.closed and len(sink.events) == 1


def test_stream_error_is_recorded_and_reraised_unchanged() -> None:
    error = Boom("dropped")
    sink = Sink()
    client = instrumented(SyncCompletions(lambda _: FakeStream(STREAM[:2], error)), sink)
    stream = client.chat.completions.create(model="gpt-x", messages=MESSAGES, stream=True)
    with pytest.raises(Boom) as raised:
        for _ in stream:
            pass
    assert raised.value is error
    (e,) = sink.events
    assert (e.status, e.error_type, e.response) == ("error", "Boom", "Hel")


def test_stream_closed_early_is_recorded_once() -> None:
    sink = Sink()
    client = instrumented(SyncCompletions(lambda _: FakeStream(STREAM)), sink)
    with client.chat.completions.create(model="gpt-x", messages=MESSAGES, stream=True) as s:
        for c in s:
            if c.choices and c.choices[0].delta.content == "Hel":
                break
    (e,) = sink.events
    assert (e.status, e.response) == ("ok", "Hel")


def test_async_client_call_stream_and_error() -> None:
    response = completion("hi")
    error = Boom("no")
    replies: list[Any] = [response, FakeStream(STREAM), error]

    def respond(_: dict[str, Any]) -> Any:
        reply = replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply

    sink = Sink()
    client = instrumented(AsyncCompletions(respond), sink, clock=ticking(0.0))

    async def run() -> None:
        create = client.chat.completions.create
        assert await create(model="gpt-x", messages=MESSAGES) is response
        stream = await create(model="gpt-x", messages=MESSAGES, stream=True)
        assert [c async for c in stream] == STREAM
        with pytest.raises(Boom) as raised:
            await create(model="gpt-x", messages=MESSAGES)
        assert raised.value is error

    asyncio.run(run())
    statuses = [(e.status, e.response, e.output_tokens) for e in sink.events]
    assert statuses == [("ok", "hi", 3), ("ok", "Hello", 2), ("error", None, None)]


def test_real_openai_clients_are_told_apart() -> None:
    openai = pytest.importorskip("openai")
    sink = Sink()
    sync = instrument(openai.OpenAI(api_key="k", base_url="http://127.0.0.1:1/v1"), sink)
    aio = instrument(openai.AsyncOpenAI(api_key="k", base_url="http://127.0.0.1:1/v1"), sink)
    assert not asyncio.iscoroutinefunction(sync.chat.completions.create)
    assert asyncio.iscoroutinefunction(aio.chat.completions.create)
