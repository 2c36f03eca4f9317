"""Webhook signatures: HMAC-SHA256 over ``timestamp + "." + body``, with a replay window.

Headers: ``X-LLM-Monitor-Signature: sha256=<hex>``, ``X-LLM-Monitor-Timestamp: <unix s>``,
``X-LLM-Monitor-Idempotency-Key`` and ``X-LLM-Monitor-Event`` (rollback, kill, resume). A
receiver recomputes the signature with the shared secret, compares in constant time, refuses
timestamps outside ``tolerance_s`` and refuses a signature it has already accepted (a replay
inside the window). Same scheme as Stripe's and Slack's, so receivers know it.

What a receiver has accepted lives in a ``SeenStore``: in memory by default, or in a sqlite file
(``SqliteSeenStore``) so that a delivery captured before a restart is still refused after it.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

SIGNATURE_HEADER = "X-LLM-Monitor-Signature"
TIMESTAMP_HEADER = "X-LLM-Monitor-Timestamp"
IDEMPOTENCY_HEADER = "X-LLM-Monitor-Idempotency-Key"
EVENT_HEADER = "X-LLM-Monitor-Event"
DEFAULT_TOLERANCE_S = 300
_MAX_STAMP_DIGITS = 12  # unix seconds have 10 digits until the year 2286


class SignatureError(Exception):
    """Why a request was refused: ``reason`` is one of missing, malformed, stale, mismatch,
    replay."""

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


class SeenStore(Protocol):
    """Values remembered until they expire: accepted signatures, delivered idempotency keys."""

    def add(self, kind: str, value: str, expires_at: float, now: float) -> bool:
        """Remember ``value`` until ``expires_at``; False when it is already remembered."""
        ...


class MemorySeenStore:
    """A ``SeenStore`` in this process: forgotten on restart."""

    def __init__(self) -> None:
        self._expiry: dict[tuple[str, str], float] = {}
        self._heap: list[tuple[float, str, str]] = []
        self._lock = threading.Lock()

    def add(self, kind: str, value: str, expires_at: float, now: float) -> bool:
        with self._lock:
            while self._heap and self._heap[0][0] < now:
                _, old_kind, old_value = heapq.heappop(self._heap)
                self._expiry.pop((old_kind, old_value), None)
            if (kind, value) in self._expiry:
                return False
            self._expiry[(kind, value)] = expires_at
            heapq.heappush(self._heap, (expires_at, kind, value))
            return True


class SqliteSeenStore:
    """A ``SeenStore`` in a sqlite file: survives restarts, and receivers on one host may share
    it. Rows expire with the replay window; each ``add`` deletes the expired ones first, in the
    same transaction, so the file stays as small as the window."""

    def __init__(self, path: Path | str) -> None:
        file = Path(path)
        file.parent.mkdir(parents=True, exist_ok=True)
        file.touch(mode=0o600, exist_ok=True)
        self.path = file
        self._db = sqlite3.connect(file, timeout=10, isolation_level=None, check_same_thread=False)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS seen (kind TEXT NOT NULL, value TEXT NOT NULL, "
            "expires_at REAL NOT NULL, PRIMARY KEY (kind, value))"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS seen_expiry ON seen (expires_at)")
        self._lock = threading.Lock()

    def add(self, kind: str, value: str, expires_at: float, now: float) -> bool:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM seen WHERE expires_at < ?", (now,))
                added = self._db.execute(
                    "INSERT OR IGNORE INTO seen (kind, value, expires_at) VALUES (?, ?, ?)",
                    (kind, value, expires_at),
                ).rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return added == 1

    def close(self) -> None:
        with self._lock:
            self._db.close()


class Verifier:
    """Checks signed requests; remembers accepted signatures for the replay window in
    ``store`` (in memory unless one is given)."""

    def __init__(
        self,
        secret: bytes,
        tolerance_s: int = DEFAULT_TOLERANCE_S,
        store: SeenStore | None = None,
    ) -> None:
        if not secret:
            raise ValueError("an empty webhook secret cannot authenticate anything")
        self.secret = secret
        self.tolerance_s = tolerance_s
        self.store: SeenStore = store if store is not None else MemorySeenStore()

    def verify(self, headers: Mapping[str, str], body: bytes, now: float | None = None) -> None:
        """Return when the request is authentic and new, else raise ``SignatureError``."""
        now = time.time() if now is None else now
        signature, stamp = _signature_and_stamp(headers)
        if abs(now - stamp) > self.tolerance_s:
            raise SignatureError("stale", f"timestamp outside the {self.tolerance_s}s window")
        expected = sign(self.secret, stamp, body).encode()
        if not hmac.compare_digest(expected, signature.encode()):
            raise SignatureError("mismatch", "signature does not match the body")
        # Past stamp + tolerance the request is stale anyway: the signature can be forgotten.
        if not self.store.add("signature", signature, stamp + self.tolerance_s, now):
            raise SignatureError("replay", "this exact request was already accepted")


def _signature_and_stamp(headers: Mapping[str, str]) -> tuple[str, int]:
    """The signature (ASCII) and the timestamp (ASCII digits, parsed), or ``SignatureError``:
    missing when either header is absent, malformed when it cannot be what we send."""
    lower = {k.lower(): v for k, v in headers.items()}
    signature = lower.get(SIGNATURE_HEADER.lower())
    stamp = lower.get(TIMESTAMP_HEADER.lower())
    if not signature or not stamp:
        raise SignatureError("missing", "signature or timestamp header missing")
    if not signature.isascii():
        raise SignatureError("malformed", "signature header is not ASCII")
    if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= _MAX_STAMP_DIGITS):
        raise SignatureError("malformed", "timestamp header is not unix seconds")
    return signature, int(stamp)


GATE_TOKEN_CONTEXT = b"llm-monitor flagger gate v1"


def gate_token(api_token: bytes) -> bytes:
    """The Flagger gate's own token, derived from the kill-switch API token (HMAC-SHA256, hex).

    Flagger cannot send headers, so its webhook carries this token in its metadata, in the
    Canary object. Being derived one-way, it opens only the read-only gate: whoever reads the
    Canary cannot engage or release a kill switch with it.
    """
    return hmac.new(api_token, GATE_TOKEN_CONTEXT, hashlib.sha256).hexdigest().encode()
