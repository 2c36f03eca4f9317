"""Calling the judge: an OpenAI-compatible chat endpoint, which events to sample, the budget.

``JudgeClient.complete`` returns a ``JudgeReply`` or raises ``JudgeUnavailable`` (timeout,
connection, HTTP error, a body without a message): the caller counts it and moves on; nothing
here retries, since a judged sample is worth less than the stream's pace.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from monitor.errors import MonitorError


class JudgeUnavailable(MonitorError):
    """The judge did not answer usably; ``reason`` is ``timeout`` or ``error``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def sampled(key: str, rate: float, salt: str = "judge") -> bool:
    """Whether ``key`` (a request id, a prompt hash) is in the sample at ``rate``: a hash, not
    a random draw, so a replay of the same events samples the same ones."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    digest = hashlib.blake2b(f"{salt}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < rate


@dataclass
class Budget:
    """Token buckets per hour: judge calls and US dollars. A call needs a whole call token and
    a non-negative dollar balance; its cost, known only afterwards, is charged then (so the
    balance can dip below zero once, and then waits for the refill). 0 means unlimited."""

    calls_per_hour: float
    usd_per_hour: float = 0.0
    clock: Callable[[], float] = time.monotonic
    _calls: float = field(init=False)
    _usd: float = field(init=False)
    _at: float = field(init=False)

    def __post_init__(self) -> None:
        if self.calls_per_hour < 0 or self.usd_per_hour < 0:
            raise ValueError("calls_per_hour and usd_per_hour must be >= 0 (0: unlimited)")
        self._calls, self._usd, self._at = self.calls_per_hour, self.usd_per_hour, self.clock()

    def _refill(self) -> None:
        now = self.clock()
        hours = max(0.0, now - self._at) / 3600
        self._at = now
        self._calls = min(self.calls_per_hour, self._calls + hours * self.calls_per_hour)
        self._usd = min(self.usd_per_hour, self._usd + hours * self.usd_per_hour)

    def try_acquire(self, calls: int = 1) -> bool:
        """Take ``calls`` call tokens if both buckets allow; False (nothing taken) if not."""
        self._refill()
        if self.usd_per_hour and self._usd < 0:
            return False
        if self.calls_per_hour:
            if self._calls < calls:
                return False
            self._calls -= calls
        return True

    def charge(self, usd: float) -> None:
        """Charge a finished call's cost to the dollar bucket."""
        self._refill()
        if self.usd_per_hour:
            self._usd -= usd


@dataclass(frozen=True)
class JudgeReply:
    """The judge's answer text, the model that served it, its token usage and cost."""

    text: str
    model: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    seconds: float


@dataclass
class JudgeClient:
    """POSTs ``/chat/completions`` to ``base_url`` (``http://host/v1``) with temperature 0.
    Prices are per 1000 tokens. The session is made on first use and closed by ``close``."""

    base_url: str
    model: str
    api_key: str | None = None
    timeout_s: float = 10.0
    max_tokens: int = 256
    usd_per_1k_input: float = 0.0
    usd_per_1k_output: float = 0.0
    _session: aiohttp.ClientSession | None = None

    async def complete(self, prompt: str) -> JudgeReply:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        body = {
            "model": self.model, "temperature": 0, "max_tokens": self.max_tokens,
            "messages": [{"role": "user", "content": prompt}],
        }  # fmt: skip
        started = time.perf_counter()
        try:
            async with self._session.post(
                f"{self.base_url.rstrip('/')}/chat/completions", json=body, headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            ) as response:  # fmt: skip
                if response.status != 200:
                    raise JudgeUnavailable("error", f"judge answered HTTP {response.status}")
                payload: Any = await response.json(content_type=None)
        except TimeoutError as exc:
            raise JudgeUnavailable("timeout", f"judge timed out after {self.timeout_s}s") from exc
        except (aiohttp.ClientError, ValueError) as exc:
            raise JudgeUnavailable("error", f"judge call failed: {exc}") from exc
        return self._reply(payload, time.perf_counter() - started)

    def _reply(self, payload: Any, seconds: float) -> JudgeReply:
        try:
            text = payload["choices"][0]["message"]["content"]
            if not isinstance(text, str):
                raise TypeError("content is not a string")
        except (KeyError, IndexError, TypeError) as exc:
            raise JudgeUnavailable("error", f"judge reply has no message: {exc}") from exc
        usage = payload.get("usage") if isinstance(payload, dict) else None
        usage = usage if isinstance(usage, dict) else {}
        tokens_in = _int(usage.get("prompt_tokens"))
        tokens_out = _int(usage.get("completion_tokens"))
        cost = (tokens_in * self.usd_per_1k_input + tokens_out * self.usd_per_1k_output) / 1000
        served = payload.get("model")
        return JudgeReply(
            text, served if isinstance(served, str) else self.model, tokens_in, tokens_out,
            cost, seconds,
        )  # fmt: skip

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
