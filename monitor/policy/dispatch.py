"""Deliver actions to webhooks: signed, retried with backoff and jitter until a deadline.

Each URL configured for the action (``webhooks.rollback|kill|resume``) gets the same signed
JSON body; 2xx is delivered, 5xx/408/429/transport errors are retried (exponential backoff,
full jitter, at most ``deadline_s`` after the action was created), any other 4xx is a refusal
that retrying cannot fix and is recorded as ``gave_up`` at once. Every attempt is reported to
``on_attempt`` so it lands in the ``actions`` table. The streams layer commits the action's
offset only after ``deliver`` returns, so an action is never dropped by a worker crash.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import httpx
import msgspec
from tenacity import AsyncRetrying, retry_if_result, stop_before_delay, wait_random_exponential

from monitor.policy.config import Webhooks
from monitor.policy.records import ActionAttempt, ActionRequest
from monitor.policy.signing import signed_headers

RETRYABLE = frozenset({408, 429})
OnAttempt = Callable[[ActionAttempt], Awaitable[None]]


def retryable(attempt: ActionAttempt) -> bool:
    return attempt.outcome == "retrying"


class Dispatcher:
    def __init__(
        self,
        webhooks: Webhooks,
        secret: bytes,
        *,
        client: httpx.AsyncClient | None = None,
        max_backoff_s: float = 30.0,
    ) -> None:
        if not secret:
            raise ValueError("webhooks must be signed: a webhook secret is required")
        self.webhooks = webhooks
        self.secret = secret
        self.client = client or httpx.AsyncClient(timeout=webhooks.timeout_s)
        self.max_backoff_s = max_backoff_s

    def urls(self, action: str) -> list[str]:
        return list(getattr(self.webhooks, action, []) or [])

    async def deliver(self, request: ActionRequest, on_attempt: OnAttempt) -> list[ActionAttempt]:
        """Send ``request`` to every URL for its action; returns each URL's last attempt."""
        body = msgspec.json.encode(request)
        last = []
        for url in self.urls(request.action):
            last.append(await self._deliver_one(url, request, body, on_attempt))
        return last

    async def _deliver_one(
        self, url: str, request: ActionRequest, body: bytes, on_attempt: OnAttempt
    ) -> ActionAttempt:
        deadline_s = request.created_at_ms / 1000 + self.webhooks.deadline_s
        number = 0

        async def attempt() -> ActionAttempt:
            nonlocal number
            number += 1
            started = time.perf_counter()
            status, error = 0, ""
            headers = signed_headers(
                self.secret, body, event=request.action, idempotency_key=request.idempotency_key
            )
            try:
                response = await self.client.post(url, content=body, headers=headers)
                status = response.status_code
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"[:500]
            if 200 <= status < 300:
                outcome = "delivered"
            elif status == 0 or status >= 500 or status in RETRYABLE:
                outcome = "gave_up" if time.time() >= deadline_s else "retrying"
            else:
                outcome = "gave_up"
                error = error or f"refused with HTTP {status}"
            result = ActionAttempt(
                idempotency_key=request.idempotency_key, action=request.action, url=url,
                attempt=number, at_ms=time.time_ns() // 1_000_000, status_code=status,
                error=error, latency_ms=round((time.perf_counter() - started) * 1000, 2),
                outcome=outcome,
            )  # fmt: skip
            await on_attempt(result)
            return result

        remaining = max(0.0, deadline_s - time.time())
        retrying = AsyncRetrying(
            retry=retry_if_result(retryable),
            wait=wait_random_exponential(multiplier=0.25, max=self.max_backoff_s),
            stop=stop_before_delay(remaining),
            retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
        )
        result: ActionAttempt = await retrying(attempt)
        if result.outcome == "retrying":  # stopped by the deadline before another try
            # The same attempt, recorded again as given up. ``actions`` keeps the row with the
            # latest ``at`` per (key, url, attempt), so this one must be strictly later.
            at_ms = max(time.time_ns() // 1_000_000, result.at_ms + 1)
            result = msgspec.structs.replace(
                result, outcome="gave_up", error=result.error or "deadline passed", at_ms=at_ms
            )
            await on_attempt(result)
        return result

    async def close(self) -> None:
        await self.client.aclose()
