"""The reference receiver and its verifier: whatever arrives is accepted or refused cleanly
(4xx, counted in ``refused``), and replay protection survives a restart with a store file."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from monitor.policy.receiver import KEY_RETENTION_S, Receiver
from monitor.policy.signing import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    MemorySeenStore,
    SignatureError,
    SqliteSeenStore,
    Verifier,
    gate_token,
    signed_headers,
)

SECRET = b"unit-secret-0123456789"
BODY = json.dumps({"action": "kill", "idempotency_key": "kill:m:v:canary:r:1"}).encode()


def signed(body: bytes = BODY, overrides: dict[str, str] | None = None) -> dict[str, str]:
    headers = signed_headers(SECRET, body, event="kill", idempotency_key="kill:m:v:canary:r:1")
    headers.update(overrides or {})
    return headers


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({SIGNATURE_HEADER: "sha256=\u00e9\u00e9"}, "malformed"),  # non-ASCII: was a TypeError
        ({SIGNATURE_HEADER: "sha256=\udcff"}, "malformed"),  # an undecodable byte, escaped
        ({TIMESTAMP_HEADER: "\u00b2\u00b3"}, "malformed"),  # isdigit() but not int(): ValueError
        ({TIMESTAMP_HEADER: "\uff11\uff12"}, "malformed"),  # full-width digits
        ({TIMESTAMP_HEADER: "12ab"}, "malformed"),
        ({TIMESTAMP_HEADER: "-5"}, "malformed"),
        ({TIMESTAMP_HEADER: "9" * 5000}, "malformed"),  # int() refuses over 4300 digits
        ({TIMESTAMP_HEADER: ""}, "missing"),
        ({SIGNATURE_HEADER: "sha256=" + "0" * 64}, "mismatch"),
    ],
)
def test_bad_headers_are_refused_cleanly(overrides: dict[str, str], reason: str) -> None:
    receiver = Receiver(Verifier(SECRET))
    status, message = receiver.handle("/kill", signed(overrides=overrides), BODY)
    assert (status, message) == ({"malformed": 400}.get(reason, 401), reason)
    assert receiver.refused == [(reason, "/kill")] and receiver.deliveries == []


def test_verifier_raises_only_signature_errors() -> None:
    with pytest.raises(SignatureError) as info:
        Verifier(SECRET).verify(signed(overrides={SIGNATURE_HEADER: "\u2603"}), BODY)
    assert info.value.reason == "malformed"


def test_a_signed_body_that_is_not_a_json_object_is_refused() -> None:
    receiver = Receiver(Verifier(SECRET))
    for body in (b"[1, 2]", b"\xff\xfe", b"[" * 100_000):
        assert receiver.handle("/kill", signed(body), body) == (400, "malformed")
    assert [reason for reason, _ in receiver.refused] == ["malformed"] * 3


def test_an_unreadable_alertmanager_body_is_refused() -> None:
    receiver = Receiver(Verifier(SECRET))
    assert receiver.handle("/alertmanager", {}, b"{not json") == (400, "malformed")
    assert receiver.handle("/alertmanager", {}, b'{"alerts": []}') == (200, "ok")
    assert receiver.refused == [("malformed", "/alertmanager")] and len(receiver.alerts) == 1


def test_replay_is_refused_after_a_restart_with_a_store_file(tmp_path: Path) -> None:
    store = tmp_path / "seen.sqlite3"
    headers = signed()
    first = Receiver.persistent(SECRET, store)
    assert first.handle("/kill", headers, BODY) == (200, "accepted")
    restarted = Receiver.persistent(SECRET, store)
    assert restarted.handle("/kill", headers, BODY) == (409, "replay")
    assert restarted.refused == [("replay", "/kill")] and restarted.deliveries == []


def test_without_a_store_file_a_restart_forgets() -> None:
    headers = signed()
    assert Receiver(Verifier(SECRET)).handle("/kill", headers, BODY) == (200, "accepted")
    assert Receiver(Verifier(SECRET)).handle("/kill", headers, BODY) == (200, "accepted")


def test_a_retry_after_a_restart_is_a_duplicate_not_a_second_action(tmp_path: Path) -> None:
    store = tmp_path / "seen.sqlite3"
    assert Receiver.persistent(SECRET, store).handle("/kill", signed(), BODY)[1] == "accepted"
    later = int(time.time()) + 1  # a new attempt: new timestamp, new signature, same key
    retry = signed_headers(SECRET, BODY, event="kill", idempotency_key="k", timestamp=later)
    restarted = Receiver.persistent(SECRET, store)
    assert restarted.handle("/kill", retry, BODY) == (200, "duplicate")
    assert restarted.deliveries == []


def test_the_body_idempotency_key_wins_over_the_unsigned_header() -> None:
    receiver = Receiver(Verifier(SECRET))
    assert (
        receiver.handle("/kill", signed(overrides={IDEMPOTENCY_HEADER: "forged"}), BODY)[0] == 200
    )
    assert receiver.deliveries[0].idempotency_key == "kill:m:v:canary:r:1"


def test_the_store_forgets_what_expired(tmp_path: Path) -> None:
    path = tmp_path / "seen.sqlite3"
    store = SqliteSeenStore(path)
    assert store.add("signature", "a", expires_at=100.0, now=0.0)
    assert not store.add("signature", "a", expires_at=100.0, now=50.0)
    assert store.add("signature", "b", expires_at=400.0, now=200.0)  # prunes "a"
    assert store.add("signature", "a", expires_at=500.0, now=200.0)
    store.close()
    with sqlite3.connect(path) as db:
        assert sorted(v for (v,) in db.execute("SELECT value FROM seen")) == ["a", "b"]
    assert path.stat().st_mode & 0o077 == 0  # readable by its owner only


def test_the_memory_store_forgets_what_expired() -> None:
    store = MemorySeenStore()
    assert store.add("k", "a", expires_at=10.0, now=0.0)
    assert not store.add("k", "a", expires_at=10.0, now=5.0)
    assert store.add("k", "a", expires_at=30.0, now=20.0)
    assert KEY_RETENTION_S > 3600  # longer than the dispatcher's default retry deadline


def test_a_signature_is_remembered_for_the_window_only() -> None:
    verifier = Verifier(SECRET, tolerance_s=300)
    stamp = 1_000_000
    headers = signed_headers(SECRET, BODY, event="kill", idempotency_key="k", timestamp=stamp)
    verifier.verify(headers, BODY, now=stamp)
    with pytest.raises(SignatureError, match="already accepted"):
        verifier.verify(headers, BODY, now=stamp + 299)
    with pytest.raises(SignatureError) as stale:
        verifier.verify(headers, BODY, now=stamp + 301)
    assert stale.value.reason == "stale"


def test_gate_token_is_derived_one_way_and_stable() -> None:
    token = b"api-token-0123456789abcdef"
    derived = gate_token(token)
    assert derived == gate_token(token) and len(derived) == 64 and token not in derived
    assert derived != gate_token(b"another-token-0123456789")
