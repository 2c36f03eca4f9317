"""A reference webhook receiver: verifies signatures, refuses replays, records deliveries.

``llm-monitor receiver`` runs it for the demo and for operators wiring their automation; the
tests and the reaction benchmark run it in-process. ``fail_first`` makes it answer 503 to the
first N requests, to show retries working.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from monitor.policy.signing import IDEMPOTENCY_HEADER, SignatureError, Verifier


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
    deliveries: list[Delivery] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    alerts: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _keys: set[str] = field(default_factory=set)

    def serve(self, port: int = 0) -> str:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, message = receiver.handle(self.path, dict(self.headers.items()), body)
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

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        now = time.time()
        with self._lock:
            if path.startswith("/alertmanager"):  # Alertmanager's own (unsigned) webhook
                self.alerts.append((now, path, json.loads(body or b"{}")))
                return 200, "ok"
            if self.fail_first > 0:
                self.fail_first -= 1
                return 503, "failing on purpose"
            try:
                self.verifier.verify(headers, body, now)
            except SignatureError as exc:
                self.refused.append((exc.reason, path))
                return (409 if exc.reason == "replay" else 401), exc.reason
            key = next(
                (v for k, v in headers.items() if k.lower() == IDEMPOTENCY_HEADER.lower()), ""
            )
            if key in self._keys:  # a retry of a delivered action: acknowledge, do not act twice
                return 200, "duplicate"
            self._keys.add(key)
            payload = json.loads(body)
            self.deliveries.append(Delivery(path, now, payload.get("action", ""), key, payload))
            return 200, "accepted"
