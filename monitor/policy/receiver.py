"""A reference webhook receiver: verifies signatures, refuses replays, records deliveries.

``llm-monitor receiver`` runs it for the demo and for operators wiring their automation; the
tests and the reaction benchmark run it in-process. ``fail_first`` makes it answer 503 to the
first N requests, to show retries working.

Every refused request (bad or missing signature, replay, malformed headers or body, too large)
is answered 4xx and listed in ``refused``; nothing a client sends makes it raise. Replays and
duplicates are told apart with ``SeenStore``s: give the verifier and ``keys`` a
``SqliteSeenStore`` and a delivery captured before a restart is still refused after it.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from monitor.policy.signing import (
    IDEMPOTENCY_HEADER,
    MemorySeenStore,
    SeenStore,
    SignatureError,
    SqliteSeenStore,
    Verifier,
)

MAX_BODY_BYTES = 1 << 20  # an action is ~1 kB; Alertmanager batches stay far below this
# How long a delivered idempotency key is remembered: well past the dispatcher's retry
# deadline (policy webhooks.deadline_s, one hour by default), so a late retry is a duplicate.
KEY_RETENTION_S = 7 * 86_400
STATUS = {"replay": 409, "malformed": 400, "too_large": 413}  # any other refusal: 401


@dataclass
class Delivery:
    path: str
    received_at: float
    event: str
    idempotency_key: str
    body: dict[str, Any]


@dataclass
class Receiver:
    """Holds what arrived; ``serve`` binds it to 127.0.0.1 in a background thread."""

    verifier: Verifier
    fail_first: int = 0
    keys: SeenStore = field(default_factory=MemorySeenStore)
    deliveries: list[Delivery] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    alerts: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @classmethod
    def persistent(cls, secret: bytes, store_path: Path | str) -> Receiver:
        """A receiver whose replay and duplicate memory is the sqlite file ``store_path``."""
        store = SqliteSeenStore(store_path)
        return cls(Verifier(secret, store=store), keys=store)

    def serve(self, port: int = 0) -> str:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = _content_length(self.headers.get("Content-Length"))
                if length is None:
                    status, message = receiver.refuse("malformed", self.path)
                elif length > MAX_BODY_BYTES:
                    status, message = receiver.refuse("too_large", self.path)
                    self.close_connection = True  # the body is left unread
                else:
                    body = self.rfile.read(length)
                    headers = dict(self.headers.items())
                    status, message = receiver.handle(self.path, headers, body)
                data = json.dumps({"status": message}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def refuse(self, reason: str, path: str) -> tuple[int, str]:
        """Record a refusal and answer it: 409 replay, 400 malformed, 413 too large, else 401."""
        with self._lock:
            self.refused.append((reason, path))
        return STATUS.get(reason, 401), reason

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        now = time.time()
        if path.startswith("/alertmanager"):  # Alertmanager's own (unsigned) webhook
            alert = _json_object(body or b"{}")
            if alert is None:
                return self.refuse("malformed", path)
            with self._lock:
                self.alerts.append((now, path, alert))
            return 200, "ok"
        with self._lock:
            if self.fail_first > 0:
                self.fail_first -= 1
                return 503, "failing on purpose"
        try:
            self.verifier.verify(headers, body, now)
        except SignatureError as exc:
            return self.refuse(exc.reason, path)
        payload = _json_object(body)
        if payload is None:  # signed, yet not what the dispatcher sends
            return self.refuse("malformed", path)
        header_key = next(
            (v for k, v in headers.items() if k.lower() == IDEMPOTENCY_HEADER.lower()), ""
        )
        key = str(payload.get("idempotency_key") or header_key)  # the body's key is signed
        with self._lock:
            # a retry of a delivered action: acknowledge, do not act twice
            if not self.keys.add("idempotency_key", key, now + KEY_RETENTION_S, now):
                return 200, "duplicate"
            self.deliveries.append(
                Delivery(path, now, str(payload.get("action", "")), key, payload)
            )
        return 200, "accepted"


def _content_length(value: str | None) -> int | None:
    """The body length a request declares (0 when absent), or None when it is not a count."""
    if value is None:
        return 0
    value = value.strip()
    if not (value.isascii() and value.isdigit() and len(value) <= 12):
        return None
    return int(value)


def _json_object(body: bytes) -> dict[str, Any] | None:
    """``body`` as a JSON object, or None when it is not one."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested too deep
        return None
    return value if isinstance(value, dict) else None
