"""One event per call of an OpenAI-compatible client's ``chat.completions.create``.

``instrument(client, publisher, ...)`` replaces ``client.chat.completions.create`` on that
client with a wrapper that times the call and publishes what it saw: latency (and time to first
token when streaming), token usage, status, the prompt (the messages' text) and the response
(the first choice's text; further choices become ``samples``). The call's result and its
exceptions are the original ones: the same object is returned, the same exception re-raised;
a stream is handed back as a thin wrapper that yields the very same chunks. Nothing the
recording does can fail the call: its own errors are logged and forgotten.

Duck-typed: it needs no ``openai`` import, only objects shaped like its responses (attributes
or mapping keys ``choices``, ``usage``, ``model``), so other OpenAI-compatible clients work too.
Sync and async clients are told apart by their ``create``. Streams carry token counts only when
the request asks for them (``stream_options={"include_usage": True}``).
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any, Final, Protocol, TypeVar

from monitor.client.events import Event, Status, new_request_id, now_ms
from monitor.ingest.events import (
    MAX_ATTRIBUTE_CHARS,
    MAX_ATTRIBUTES,
    MAX_DURATION_MS,
    MAX_SAMPLES,
    MAX_TOKENS,
)

log = logging.getLogger(__name__)

C = TypeVar("C")
MAX_LABEL_CHARS: Final = 256  # model, version, deployment, app, route, error type
ORIGINAL: Final = "__llm_monitor_original__"  # set on the wrapper: the create it wraps
_OWN: Final = frozenset({"_stream", "_call", "_iterator"})


class EventSink(Protocol):
    """Where events go: ``Publisher`` and ``AsyncPublisher`` both fit."""

    def publish_nowait(self, event: Event) -> bool: ...


def instrument(
    client: C,
    publisher: EventSink,
    *,
    model_version: str | None = None,
    deployment: str = "stable",
    app: str = "",
    route: str = "",
    attributes: Mapping[str, str] | None = None,
    capture_text: bool = True,
    clock: Callable[[], float] = time.perf_counter,
    wall_clock_ms: Callable[[], int] = now_ms,
    request_ids: Callable[[], str] = new_request_id,
) -> C:
    """Record every ``client.chat.completions.create`` call as one event; returns ``client``.

    ``model_version`` defaults to the model the response names (the provider's snapshot, e.g.
    ``gpt-4o-2024-08-06``), else the requested model. ``capture_text=False`` leaves prompt and
    response out of the events. Instrumenting a client again replaces the earlier settings.
    Copies made later by ``client.with_options(...)`` are not instrumented."""
    for name, value in (("deployment", deployment), ("app", app), ("route", route)):
        if len(value) > MAX_LABEL_CHARS:
            raise ValueError(f"{name} must be at most {MAX_LABEL_CHARS} characters")
    if model_version is not None and not 0 < len(model_version) <= MAX_LABEL_CHARS:
        raise ValueError(f"model_version must be 1 to {MAX_LABEL_CHARS} characters, or None")
    attrs = dict(attributes or {})
    if len(attrs) > MAX_ATTRIBUTES - 1:  # one is kept for http_status
        raise ValueError(f"attributes must have at most {MAX_ATTRIBUTES - 1} entries")
    if any(len(k) > MAX_ATTRIBUTE_CHARS or len(v) > MAX_ATTRIBUTE_CHARS for k, v in attrs.items()):
        raise ValueError(f"attribute keys and values must be at most {MAX_ATTRIBUTE_CHARS} chars")
    try:
        target: Any = client
        completions = target.chat.completions
        create = completions.create
    except AttributeError as exc:
        raise TypeError(
            f"{type(client).__name__} is not an OpenAI-compatible client: "
            "it has no chat.completions.create"
        ) from exc
    original = getattr(create, ORIGINAL, create)
    recorder = _Recorder(
        sink=publisher,
        model_version=model_version,
        deployment=deployment,
        app=app,
        route=route,
        attributes=attrs,
        capture_text=capture_text,
        clock=clock,
        wall_clock_ms=wall_clock_ms,
        request_ids=request_ids,
    )
    if inspect.iscoroutinefunction(inspect.unwrap(original)):
        wrapper = _async_create(original, recorder)
    else:
        wrapper = _sync_create(original, recorder)
    setattr(wrapper, ORIGINAL, original)
    completions.create = wrapper
    return client


def _sync_create(original: Callable[..., Any], recorder: _Recorder) -> Callable[..., Any]:
    @functools.wraps(original)
    def create(*args: Any, **kwargs: Any) -> Any:
        call = _Call(recorder, kwargs)
        try:
            result = original(*args, **kwargs)
        except BaseException as exc:
            call.failed(exc)
            raise
        if kwargs.get("stream") is True:
            return InstrumentedStream(result, call)
        call.completed(result)
        return result

    return create


def _async_create(original: Callable[..., Any], recorder: _Recorder) -> Callable[..., Any]:
    @functools.wraps(original)
    async def create(*args: Any, **kwargs: Any) -> Any:
        call = _Call(recorder, kwargs)
        try:
            result = await original(*args, **kwargs)
        except BaseException as exc:
            call.failed(exc)
            raise
        if kwargs.get("stream") is True:
            return InstrumentedAsyncStream(result, call)
        call.completed(result)
        return result

    return create


class InstrumentedStream:
    """The call's stream, chunk for chunk; the event is published when it ends, fails or is
    closed (``close``, ``with``, or garbage collection of an abandoned stream). Every other
    attribute is the original stream's."""

    def __init__(self, stream: Any, call: _Call) -> None:
        self._stream = stream
        self._call = call
        self._iterator: Iterator[Any] | None = None

    def __iter__(self) -> InstrumentedStream:
        return self

    def __next__(self) -> Any:
        if self._iterator is None:
            self._iterator = iter(self._stream)
        try:
            chunk = next(self._iterator)
        except StopIteration:
            self._call.ended()
            raise
        except BaseException as exc:
            self._call.failed(exc)
            raise
        self._call.chunk(chunk)
        return chunk

    def close(self) -> None:
        self._call.ended()
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> InstrumentedStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        if name in _OWN:  # not set: __init__ did not run
            raise AttributeError(name)
        return getattr(self._stream, name)

    def __del__(self) -> None:
        call = self.__dict__.get("_call")
        if call is not None:
            call.ended()


class InstrumentedAsyncStream:
    """The async counterpart of ``InstrumentedStream``."""

    def __init__(self, stream: Any, call: _Call) -> None:
        self._stream = stream
        self._call = call
        self._iterator: AsyncIterator[Any] | None = None

    def __aiter__(self) -> InstrumentedAsyncStream:
        return self

    async def __anext__(self) -> Any:
        if self._iterator is None:
            self._iterator = aiter(self._stream)
        try:
            chunk = await anext(self._iterator)
        except StopAsyncIteration:
            self._call.ended()
            raise
        except BaseException as exc:
            self._call.failed(exc)
            raise
        self._call.chunk(chunk)
        return chunk

    async def close(self) -> None:
        self._call.ended()
        close = getattr(self._stream, "close", None)
        if close is not None:
            result = close()
            if inspect.isawaitable(result):
                await result

    aclose = close

    async def __aenter__(self) -> InstrumentedAsyncStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __getattr__(self, name: str) -> Any:
        if name in _OWN:  # not set: __init__ did not run
            raise AttributeError(name)
        return getattr(self._stream, name)

    def __del__(self) -> None:
        call = self.__dict__.get("_call")
        if call is not None:
            call.ended()


class _Recorder:
    """The settings of one ``instrument`` call, shared by every call it records."""

    def __init__(
        self,
        *,
        sink: EventSink,
        model_version: str | None,
        deployment: str,
        app: str,
        route: str,
        attributes: dict[str, str],
        capture_text: bool,
        clock: Callable[[], float],
        wall_clock_ms: Callable[[], int],
        request_ids: Callable[[], str],
    ) -> None:
        self.sink = sink
        self.model_version = model_version
        self.deployment = deployment
        self.app = app
        self.route = route
        self.attributes = attributes
        self.capture_text = capture_text
        self.clock = clock
        self.wall_clock_ms = wall_clock_ms
        self.request_ids = request_ids

    def publish(self, event: Event) -> None:
        try:
            self.sink.publish_nowait(event)
        except Exception as exc:  # recording never fails the call
            log.warning("llm-monitor could not publish an event: %r", exc)


class _Call:
    """One call in flight: what was asked, when, and (when streaming) what came back so far."""

    def __init__(self, recorder: _Recorder, kwargs: Mapping[str, Any]) -> None:
        self.recorder = recorder
        self.started = recorder.clock()
        self.kwargs = kwargs
        self.done = False
        self.timestamp_ms = 0
        self.request_id = ""
        self.prompt: str | None = None
        self.first_token: float | None = None
        self.parts: dict[int, list[str]] = {}
        self.usage: Any = None
        self.served_model: Any = None
        self.refused = False
        try:
            self.timestamp_ms = recorder.wall_clock_ms()
            self.request_id = recorder.request_ids()
            if recorder.capture_text:
                self.prompt = _prompt(kwargs.get("messages"))
        except Exception as exc:
            log.warning("llm-monitor could not read a call's request: %r", exc)

    def completed(self, response: Any) -> None:
        """A non-streaming call returned ``response``."""
        if self.done:
            return
        self.done = True
        try:
            choices = _field(response, "choices") or []
            texts: dict[int, list[str]] = {}
            refused = False
            for position, choice in enumerate(choices):
                message = _field(choice, "message")
                content = _text(_field(message, "content"))
                refusal = _field(message, "refusal")
                if (isinstance(refusal, str) and refusal) or _field(
                    choice, "finish_reason"
                ) == "content_filter":
                    refused = True
                    content = content or (refusal if isinstance(refusal, str) else "")
                index = _field(choice, "index")
                texts[index if isinstance(index, int) else position] = [content]
            self._publish(
                "refused" if refused else "ok",
                texts=texts,
                usage=_field(response, "usage"),
                served_model=_field(response, "model"),
            )
        except Exception as exc:
            log.warning("llm-monitor could not record a call: %r", exc)

    def failed(self, exc: BaseException) -> None:
        """The call (or its stream) raised ``exc``; the caller re-raises it unchanged."""
        if self.done:
            return
        self.done = True
        try:
            timeout = isinstance(exc, TimeoutError) or "Timeout" in type(exc).__name__
            extra = {}
            status_code = getattr(exc, "status_code", None)
            if isinstance(status_code, int):
                extra["http_status"] = str(status_code)
            self._publish(
                "timeout" if timeout else "error",
                error_type=type(exc).__name__[:MAX_LABEL_CHARS],
                texts=self.parts,
                usage=self.usage,
                served_model=self.served_model,
                extra_attributes=extra,
            )
        except Exception as error:
            log.warning("llm-monitor could not record a failed call: %r", error)

    def chunk(self, chunk: Any) -> None:
        """One streamed chunk, on its way to the caller unchanged."""
        try:
            usage = _field(chunk, "usage")
            if usage is not None:
                self.usage = usage
            model = _field(chunk, "model")
            if model:
                self.served_model = model
            for position, choice in enumerate(_field(chunk, "choices") or []):
                delta = _field(choice, "delta")
                content = _field(delta, "content")
                refusal = _field(delta, "refusal")
                if (isinstance(refusal, str) and refusal) or _field(
                    choice, "finish_reason"
                ) == "content_filter":
                    self.refused = True
                text = content if isinstance(content, str) and content else refusal
                if not isinstance(text, str) or not text:
                    continue
                if self.first_token is None:
                    self.first_token = self.recorder.clock()
                index = _field(choice, "index")
                self.parts.setdefault(index if isinstance(index, int) else position, []).append(
                    text
                )
        except Exception as exc:
            log.warning("llm-monitor could not read a streamed chunk: %r", exc)

    def ended(self) -> None:
        """The stream ended, or was closed or abandoned by the caller."""
        if self.done:
            return
        self.done = True
        try:
            self._publish(
                "refused" if self.refused else "ok",
                texts=self.parts,
                usage=self.usage,
                served_model=self.served_model,
            )
        except Exception as exc:
            log.warning("llm-monitor could not record a streamed call: %r", exc)

    def _publish(
        self,
        status: Status,
        *,
        texts: Mapping[int, list[str]],
        usage: Any,
        served_model: Any,
        error_type: str | None = None,
        extra_attributes: Mapping[str, str] | None = None,
    ) -> None:
        recorder = self.recorder
        ended = recorder.clock()
        requested = self.kwargs.get("model")
        served = served_model if isinstance(served_model, str) and served_model else None
        model = _label(requested if isinstance(requested, str) and requested else served)
        ttft_ms = None
        if self.first_token is not None:
            ttft_ms = _duration_ms(self.first_token - self.started)
        response = None
        samples: list[str] = []
        if recorder.capture_text and texts:
            ordered = ["".join(texts[i]) for i in sorted(texts)]
            response, samples = ordered[0], [t for t in ordered[1:] if t][:MAX_SAMPLES]
        event = Event(
            request_id=self.request_id or new_request_id(),
            timestamp=self.timestamp_ms or now_ms(),
            model=model,
            model_version=recorder.model_version or _label(served or model),
            deployment=recorder.deployment,
            route=recorder.route,
            app=recorder.app,
            prompt=self.prompt,
            response=response,
            samples=samples,
            latency_ms=_duration_ms(ended - self.started),
            ttft_ms=ttft_ms,
            input_tokens=_tokens(usage, "prompt_tokens", "input_tokens"),
            output_tokens=_tokens(usage, "completion_tokens", "output_tokens"),
            status=status,
            error_type=error_type,
            attributes=recorder.attributes | dict(extra_attributes or {}),
        )
        recorder.publish(event)


def _field(obj: Any, name: str) -> Any:
    """``obj.name`` or ``obj[name]``: responses are objects (openai) or mappings (raw JSON)."""
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _text(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence) and not isinstance(content, bytes):
        texts = (_field(part, "text") for part in content)
        return "\n".join(t for t in texts if isinstance(t, str))
    return ""


def _prompt(messages: Any) -> str | None:
    """The messages' text, one message per line, as ``Event.prompt_text`` joins them."""
    if not isinstance(messages, Sequence) or isinstance(messages, str | bytes):
        return None
    return "\n".join(_text(_field(m, "content")) for m in messages)


def _label(value: Any) -> str:
    text = value if isinstance(value, str) and value else "unknown"
    return text[:MAX_LABEL_CHARS]


def _duration_ms(seconds: float) -> float:
    return min(max(seconds * 1000.0, 0.0), MAX_DURATION_MS)


def _tokens(usage: Any, *names: str) -> int | None:
    for name in names:
        value = _field(usage, name)
        if isinstance(value, int) and not isinstance(value, bool):
            return min(max(value, 0), MAX_TOKENS)
    return None
