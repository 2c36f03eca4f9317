"""One proxied call as an event: what was asked, what came back, how long it took.

Pure: the server feeds an ``Exchange`` the request's JSON, then either the answer's JSON or
each streamed chunk's JSON (parsed from the SSE stream by ``SseParser``), and asks for the
``Event`` once the call ended. The fields are those ``monitor.client.instrument`` records for
an OpenAI client (docs/publisher.md), so a call looks the same whether an app instruments its
client or goes through the proxy; the proxy adds ``attributes``: ``proxy_upstream`` (primary,
fallback, none), ``http_status``, and the guard's ``guard_*`` entries.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from monitor.client.events import Event, Status
from monitor.ingest.events import MAX_DURATION_MS, MAX_SAMPLES, MAX_TOKENS

MAX_LABEL_CHARS: Final = 256
MAX_SSE_LINE_BYTES: Final = 4 * 1024 * 1024  # a longer line is not parsed (still passed on)
# Upstream HTTP statuses → the error type an OpenAI client would raise for them, so events
# from the proxy and from instrumented clients group together.
ERROR_TYPES: Final = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    409: "ConflictError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
}


def error_type(status: int) -> str:
    if status in ERROR_TYPES:
        return ERROR_TYPES[status]
    return "InternalServerError" if status >= 500 else "APIStatusError"


def label(value: Any) -> str:
    text = value if isinstance(value, str) and value else "unknown"
    return text[:MAX_LABEL_CHARS]


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = (p.get("text") for p in content if isinstance(p, dict))
        return "\n".join(t for t in parts if isinstance(t, str))
    return ""


def prompt_text(body: Mapping[str, Any]) -> str | None:
    """The messages' text, one message per line (as ``instrument`` records it), or the legacy
    ``prompt``."""
    messages = body.get("messages")
    if isinstance(messages, list):
        return "\n".join(_text(m.get("content")) if isinstance(m, dict) else "" for m in messages)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        return "\n".join(prompt)
    return None


def _tokens(usage: Any, *names: str) -> int | None:
    if not isinstance(usage, dict):
        return None
    for name in names:
        value = usage.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return min(max(value, 0), MAX_TOKENS)
    return None


def _duration_ms(seconds: float) -> float:
    return min(max(seconds * 1000.0, 0.0), MAX_DURATION_MS)


class SseParser:
    """Server-sent events from a byte stream cut anywhere: ``feed`` returns the ``data`` of
    every event completed so far. A line beyond ``MAX_SSE_LINE_BYTES`` stops the parsing (the
    stream itself is passed on untouched by the caller)."""

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []
        self.broken = False

    def feed(self, chunk: bytes) -> list[bytes]:
        if self.broken:
            return []
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > MAX_SSE_LINE_BYTES:
            self.broken = True
            self._buffer = b""
            return []
        out: list[bytes] = []
        for raw in lines:
            line = raw.rstrip(b"\r")
            if not line:
                if self._data:
                    out.append(b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
        return out

    def close(self) -> list[bytes]:
        """The last event, when the stream ended without its blank line."""
        out = self.feed(b"\n\n") if self._buffer or self._data else []
        return out


@dataclass
class Exchange:
    """One call: the request's fields, and what came back so far."""

    request_id: str
    timestamp_ms: int
    started: float
    model: str
    deployment: str
    upstream: str  # primary | fallback | none
    prompt: str | None = None
    first_token: float | None = None
    parts: dict[int, list[str]] = field(default_factory=dict)
    usage: Any = None
    served_model: str | None = None
    refused: bool = False
    attributes: dict[str, str] = field(default_factory=dict)

    def completed(self, body: Any) -> None:
        """A non-streamed answer's JSON."""
        if not isinstance(body, dict):
            return
        self.usage = body.get("usage")
        self._served(body.get("model"))
        for position, choice in _indexed_choices(body):
            message = choice.get("message")
            content = ""
            if isinstance(message, dict):
                content = _text(message.get("content"))
                refusal = message.get("refusal")
                if isinstance(refusal, str) and refusal:
                    self.refused = True
                    content = content or refusal
            else:
                content = _text(choice.get("text"))
            if choice.get("finish_reason") == "content_filter":
                self.refused = True
            self.parts[position] = [content]

    def chunk(self, data: bytes, now: float) -> None:
        """One streamed event's data (``[DONE]`` and non-JSON data are ignored)."""
        if data == b"[DONE]":
            return
        try:
            body = json.loads(data)
        except (ValueError, RecursionError):
            return
        if not isinstance(body, dict):
            return
        if body.get("usage") is not None:
            self.usage = body["usage"]
        self._served(body.get("model"))
        for position, choice in _indexed_choices(body):
            delta = choice.get("delta")
            if isinstance(delta, dict):
                text, refusal = delta.get("content"), delta.get("refusal")
            else:
                text, refusal = choice.get("text"), None
            if (isinstance(refusal, str) and refusal) or choice.get(
                "finish_reason"
            ) == "content_filter":
                self.refused = True
            if not isinstance(text, str) or not text:
                text = refusal if isinstance(refusal, str) else ""
            if not text:
                continue
            if self.first_token is None:
                self.first_token = now
            self.parts.setdefault(position, []).append(text)

    @property
    def response_text(self) -> str:
        """Every choice's text so far (what the guard scans in a streamed answer)."""
        return "\n".join("".join(self.parts[i]) for i in sorted(self.parts))

    def event(
        self,
        *,
        ended: float,
        status: Status,
        model_version: str | None,
        app: str,
        route: str,
        capture_text: bool,
        error_type: str | None = None,
    ) -> Event:
        ttft_ms = None
        if self.first_token is not None:
            ttft_ms = _duration_ms(self.first_token - self.started)
        response, samples = None, []
        if capture_text and self.parts:
            ordered = ["".join(self.parts[i]) for i in sorted(self.parts)]
            response, samples = ordered[0], [t for t in ordered[1:] if t][:MAX_SAMPLES]
        if status == "ok" and self.refused:
            status = "refused"
        return Event(
            request_id=self.request_id,
            timestamp=self.timestamp_ms,
            model=self.model,
            model_version=model_version or label(self.served_model or self.model),
            deployment=self.deployment,
            route=route,
            app=app,
            prompt=self.prompt if capture_text else None,
            response=response,
            samples=samples,
            latency_ms=_duration_ms(ended - self.started),
            ttft_ms=ttft_ms,
            input_tokens=_tokens(self.usage, "prompt_tokens", "input_tokens"),
            output_tokens=_tokens(self.usage, "completion_tokens", "output_tokens"),
            status=status,
            error_type=error_type[:MAX_LABEL_CHARS] if error_type else None,
            attributes={"proxy_upstream": self.upstream, **self.attributes},
        )

    def _served(self, model: Any) -> None:
        if isinstance(model, str) and model:
            self.served_model = model


def _indexed_choices(body: dict[str, Any]) -> Iterator[tuple[int, dict[str, Any]]]:
    choices = body.get("choices")
    if not isinstance(choices, list):
        return
    for position, choice in enumerate(choices):
        if isinstance(choice, dict):
            index = choice.get("index")
            yield (index if isinstance(index, int) else position), choice
