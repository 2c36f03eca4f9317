"""Signed webhooks against a real HTTP receiver on loopback: verified, replay refused (after a
restart too, with a store file), malformed requests refused cleanly, retried."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import pytest

from monitor.policy.config import Webhooks
from monitor.policy.dispatch import Dispatcher
from monitor.policy.receiver import Receiver
from monitor.policy.records import ActionAttempt, ActionRequest
from monitor.policy.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, signed_headers
from tests.conftest import serving_receiver

pytestmark = pytest.mark.integration
SECRET = b"test-secret-0123456789"


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    with serving_receiver(SECRET) as served:
        yield served


def request(action: str = "rollback", key: str = "rollback:m:v:canary:rule:1") -> ActionRequest:
    return ActionRequest(
        action=action, idempotency_key=key, created_at_ms=time.time_ns() // 1_000_000,
        model="m", model_version="v", deployment="canary", rule="rollback.error_rate",
        reason="test", incident_id="inc-1",
    )  # fmt: skip


def deliver(dispatcher: Dispatcher, req: ActionRequest) -> list[ActionAttempt]:
    attempts: list[ActionAttempt] = []

    async def record(a: ActionAttempt) -> None:
        attempts.append(a)

    async def run() -> None:
        await dispatcher.deliver(req, record)
        await dispatcher.close()

    asyncio.run(run())
    return attempts


def test_signed_delivery_is_verified(receiver: tuple[Receiver, str]) -> None:
    r, url = receiver
    attempts = deliver(Dispatcher(Webhooks(rollback=[url + "/rollback"]), SECRET), request())
    assert [a.outcome for a in attempts] == ["delivered"]
    (delivery,) = r.deliveries
    assert delivery.event == "rollback" and delivery.body["model"] == "m"
    assert delivery.idempotency_key == "rollback:m:v:canary:rule:1"


def test_replayed_and_forged_requests_are_refused(receiver: tuple[Receiver, str]) -> None:
    r, url = receiver
    body = msgspec.json.encode(request())
    headers = signed_headers(SECRET, body, event="rollback", idempotency_key="k")
    assert httpx.post(url, content=body, headers=headers).status_code == 200
    assert httpx.post(url, content=body, headers=headers).status_code == 409  # replay
    forged = dict(headers, **{SIGNATURE_HEADER: "sha256=" + "0" * 64})
    assert httpx.post(url, content=body, headers=forged).status_code == 401
    stale = signed_headers(SECRET, body, event="rollback", idempotency_key="k",
                           timestamp=int(time.time()) - 3600)  # fmt: skip
    assert httpx.post(url, content=body, headers=stale).status_code == 401
    wrong_key = signed_headers(b"another-secret", body, event="rollback", idempotency_key="k")
    assert httpx.post(url, content=body, headers=wrong_key).status_code == 401
    assert [reason for reason, _ in r.refused] == ["replay", "mismatch", "stale", "mismatch"]
    assert len(r.deliveries) == 1


def test_retries_succeed_through_a_receiver_that_fails_first(
    receiver: tuple[Receiver, str],
) -> None:
    r, url = receiver
    r.fail_first = 3
    attempts = deliver(Dispatcher(Webhooks(kill=[url]), SECRET, max_backoff_s=0.2), request("kill"))
    assert [a.outcome for a in attempts] == ["retrying"] * 3 + ["delivered"]
    assert [a.status_code for a in attempts] == [503, 503, 503, 200]
    assert [a.attempt for a in attempts] == [1, 2, 3, 4]
    assert len(r.deliveries) == 1


def test_gives_up_at_the_deadline_and_on_refusal(receiver: tuple[Receiver, str]) -> None:
    r, url = receiver
    r.fail_first = 10**6
    hooks = Webhooks(rollback=[url], deadline_s=1.0)
    attempts = deliver(Dispatcher(hooks, SECRET, max_backoff_s=0.2), request())
    assert attempts[-1].outcome == "gave_up" and len(attempts) >= 2
    # Given up after its last try: the same attempt, strictly later, so `actions FINAL`
    # (latest `at` per key, url, attempt) keeps the given-up row.
    if attempts[-1].attempt == attempts[-2].attempt:
        assert attempts[-1].at_ms > attempts[-2].at_ms
    r.fail_first = 0
    refused = deliver(Dispatcher(Webhooks(rollback=[url]), b"wrong-secret"), request())
    assert [a.outcome for a in refused] == ["gave_up"] and refused[0].status_code == 401


def test_unsigned_dispatch_is_refused() -> None:
    with pytest.raises(ValueError, match="signed"):
        Dispatcher(Webhooks(), b"")


def test_malformed_requests_are_refused_cleanly_over_http(receiver: tuple[Receiver, str]) -> None:
    r, url = receiver
    body = msgspec.json.encode(request())
    headers = signed_headers(SECRET, body, event="rollback", idempotency_key="k")
    raw = {k.encode(): v.encode() for k, v in headers.items()}  # to send bytes as they are
    non_ascii = raw | {SIGNATURE_HEADER.encode(): b"sha256=\xff\xfe"}
    assert httpx.post(url, content=body, headers=non_ascii).status_code == 400
    superscript = raw | {TIMESTAMP_HEADER.encode(): "\u00b2".encode()}
    assert httpx.post(url, content=body, headers=superscript).status_code == 400
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=5) as s:
        s.sendall(b"POST /rollback HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n")
        assert s.recv(64).startswith(b"HTTP/1.0 400")
    assert httpx.post(url + "/alertmanager", content=b"{oops").status_code == 400
    assert [reason for reason, _ in r.refused] == ["malformed"] * 4
    assert httpx.post(url, content=body, headers=headers).status_code == 200  # still serving


def test_a_delivery_replayed_after_a_restart_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "receiver-seen.sqlite3"
    body = msgspec.json.encode(request())
    headers = signed_headers(SECRET, body, event="rollback", idempotency_key="k")
    first = Receiver.persistent(SECRET, store)
    url = first.serve()
    try:
        assert httpx.post(url, content=body, headers=headers).status_code == 200
    finally:
        first.stop()
    restarted = Receiver.persistent(SECRET, store)
    url = restarted.serve()
    try:
        assert httpx.post(url, content=body, headers=headers).status_code == 409
    finally:
        restarted.stop()
    assert restarted.refused == [("replay", "/")] and restarted.deliveries == []
