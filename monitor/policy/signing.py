"""Webhook signatures: HMAC-SHA256 over ``timestamp + "." + body``, with a replay window.

Headers: ``X-LLM-Monitor-Signature: sha256=<hex>``, ``X-LLM-Monitor-Timestamp: <unix s>``,
``X-LLM-Monitor-Idempotency-Key`` and ``X-LLM-Monitor-Event`` (rollback, kill, resume). A
receiver recomputes the signature with the shared secret, compares in constant time, refuses
timestamps outside ``tolerance_s`` and refuses a signature it has already accepted (a replay
inside the window). Same scheme as Stripe's and Slack's, so receivers know it.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Mapping

SIGNATURE_HEADER = "X-LLM-Monitor-Signature"
TIMESTAMP_HEADER = "X-LLM-Monitor-Timestamp"
IDEMPOTENCY_HEADER = "X-LLM-Monitor-Idempotency-Key"
EVENT_HEADER = "X-LLM-Monitor-Event"
DEFAULT_TOLERANCE_S = 300


class SignatureError(Exception):
    """Why a request was refused: ``reason`` is one of missing, stale, mismatch, replay."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def signed_headers(
    secret: bytes, body: bytes, *, event: str, idempotency_key: str, timestamp: int | None = None
) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(secret, ts, body),
        TIMESTAMP_HEADER: str(ts),
        IDEMPOTENCY_HEADER: idempotency_key,
        EVENT_HEADER: event,
    }


class Verifier:
    """Checks signed requests; remembers accepted signatures for the replay window."""

    def __init__(self, secret: bytes, tolerance_s: int = DEFAULT_TOLERANCE_S) -> None:
        if not secret:
            raise ValueError("an empty webhook secret cannot authenticate anything")
        self.secret = secret
        self.tolerance_s = tolerance_s
        self._seen: OrderedDict[str, float] = OrderedDict()

    def verify(self, headers: Mapping[str, str], body: bytes, now: float | None = None) -> None:
        now = time.time() if now is None else now
        lower = {k.lower(): v for k, v in headers.items()}
        signature = lower.get(SIGNATURE_HEADER.lower())
        stamp = lower.get(TIMESTAMP_HEADER.lower())
        if not signature or not stamp or not stamp.isdigit():
            raise SignatureError("missing", "signature or timestamp header missing")
        if abs(now - int(stamp)) > self.tolerance_s:
            raise SignatureError("stale", f"timestamp outside the {self.tolerance_s}s window")
        if not hmac.compare_digest(sign(self.secret, int(stamp), body), signature):
            raise SignatureError("mismatch", "signature does not match the body")
        while self._seen and next(iter(self._seen.values())) < now - self.tolerance_s:
            self._seen.popitem(last=False)
        if signature in self._seen:
            raise SignatureError("replay", "this exact request was already accepted")
        self._seen[signature] = float(stamp)
