"""A loopback OpenAI-compatible model server, for the proxy's tests, its benchmark and demos.

``LoopbackModel(name)`` answers ``POST /v1/chat/completions`` (plain and streamed, with usage
when asked), ``POST /v1/completions`` and ``GET /v1/models``; every answer says which server
gave it (``"answer from <name>"``), so a test sees where a call was routed. The model
``"missing"`` gets a 404 with an OpenAI error body. It keeps the requests it received.
Run it on the current event loop (``await start()``) or on a thread of its own
(``start_in_thread()``), which keeps its work off the loop being measured.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

STREAM_PIECES = ("Hel", "lo ", "from ")


@dataclass
class LoopbackModel:
    """An OpenAI-compatible server on 127.0.0.1; ``delay_s`` before each answer (and between
    streamed chunks)."""

    name: str
    delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    received: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (``<url>/v1``)."""
        return f"{self.url}/v1"

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        return app

    async def start(self, port: int = 0) -> str:
        runner = web.AppRunner(self.application(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self._runner = runner
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def start_in_thread(self, port: int = 0) -> str:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name=f"loopback-{self.name}")
        thread.daemon = True
        thread.start()
        self._loop, self._thread = loop, thread
        return asyncio.run_coroutine_threadsafe(self.start(port), loop).result(10)

    def stop_thread(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        self._loop = self._thread = None

    # -- answers ---------------------------------------------------------------------------

    def answer(self) -> str:
        return f"answer from {self.name}"

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "name": self.name})

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": f"{self.name}-model", "object": "model"}]}
        )

    async def _read(self, request: web.Request) -> dict[str, Any]:
        body: dict[str, Any] = await request.json()
        self.received.append(body)
        self.headers.append(dict(request.headers))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return body

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._read(request)
        if body.get("model") == "missing":
            error = {"message": "model not found", "type": "invalid_request_error", "code": None}
            return web.json_response({"error": error}, status=404)
        if not body.get("stream"):
            n = int(body.get("n") or 1)
            choices = [
                {"index": i, "message": {"role": "assistant", "content": self._text(body, i)},
                 "finish_reason": "stop"}
                for i in range(n)
            ]  # fmt: skip
            return web.json_response({
                "id": "chatcmpl-loopback", "object": "chat.completion", "created": 1_700_000_000,
                "model": f"{body.get('model')}-served", "choices": choices,
                "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15},
            })  # fmt: skip
        return await self._stream(request, body)

    def _text(self, body: dict[str, Any], index: int = 0) -> str:
        """The answer; ``echo`` in the last message's text makes it repeat that message."""
        messages = body.get("messages") or []
        last = messages[-1].get("content") if messages else ""
        if isinstance(last, str) and "echo" in last:
            return last
        return self.answer() if index == 0 else f"{self.answer()} #{index}"

    async def _stream(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        base = {"id": "chatcmpl-loopback", "object": "chat.completion.chunk",
                "created": 1_700_000_000, "model": f"{body.get('model')}-served"}  # fmt: skip
        text = self._text(body)
        pieces = [*STREAM_PIECES, self.name]
        if text != self.answer():  # an echo, in three pieces
            third = max(1, len(text) // 3)
            pieces = [text[:third], text[third : 2 * third], text[2 * third :]]
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
        deltas += [{"content": piece} for piece in pieces]
        chunks = [
            base | {"choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas
        ]
        chunks.append(base | {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}
            chunks.append(base | {"choices": [], "usage": usage})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for chunk in chunks:
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            if self.chunk_delay_s:
                await asyncio.sleep(self.chunk_delay_s)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _completions(self, request: web.Request) -> web.Response:
        body = await self._read(request)
        return web.json_response({
            "id": "cmpl-loopback", "object": "text_completion", "created": 1_700_000_000,
            "model": f"{body.get('model')}-served",
            "choices": [{"index": 0, "text": self.answer(), "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
        })  # fmt: skip

    def streamed_text(self) -> str:
        """The text a streamed answer carries."""
        return "".join(STREAM_PIECES) + self.name
