"""The policy role's HTTP surfaces in a real worker: every surface needs a token, refusals
(a non-UTF-8 header included) are 401, every call is audited and counted, and bodies no client
of ours sends are 400, never 500."""

from __future__ import annotations

import socket

import httpx
import pytest

from monitor.devtools.worker import metric_sum, scrape
from monitor.policy.signing import gate_token
from tests.conftest import WorkerHarness
from tests.e2e.test_pipeline_e2e import query

pytestmark = pytest.mark.integration
TOKEN = "it-api-token-0123456789abcdef"  # noqa: S105 - test fixture
GATE = gate_token(TOKEN.encode()).decode()
GATE_BODY = {"name": "support-bot", "metadata": {"deployment": "canary"}}


def call(
    port: int, method: str, path: str, bearer: str | None = None,
    json: object = None, content: bytes | None = None,
) -> int:  # fmt: skip
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    url = f"http://127.0.0.1:{port}{path}"
    response = httpx.request(method, url, headers=headers, json=json, content=content, timeout=15)
    return response.status_code


def raw_status(port: int, request: bytes) -> bytes:
    """The status line of a request sent byte for byte (httpx would refuse the header)."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(request)
        return s.recv(4096).split(b"\r\n", 1)[0]


def calls(workers: WorkerHarness) -> dict[str, float]:
    name = "llm_monitor_killswitch_api_calls_total"
    samples = scrape(f"{workers.metrics_url}?name[]={name}")  # that counter's samples alone
    assert all(key.startswith(name + "{") for key in samples), sorted(samples)[:5]
    return {o: metric_sum(samples, name, outcome=o) for o in ("ok", "unauthorized", "invalid")}


def test_every_surface_needs_a_token_and_every_call_is_audited(workers: WorkerHarness) -> None:
    workers.env_overrides["LLM_MONITOR_POLICY__API_TOKEN"] = TOKEN
    workers.start()
    workers.wait_for(workers.ready, what="the worker ready")
    port = workers.port
    non_utf8 = b"Authorization: Bearer \xff\xfe\r\n"
    for path in (b"/killswitch", b"/policy/status"):  # was a 500, neither audited nor counted
        head = b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + non_utf8 + b"Connection: close\r\n"
        assert raw_status(port, head + b"\r\n") == b"HTTP/1.1 401 Unauthorized"
    refused = [
        call(port, "GET", "/policy/status"),
        call(port, "GET", "/policy/status", GATE),  # the gate token opens the gate only
        call(port, "POST", "/flagger/gate", json=GATE_BODY),
        call(port, "POST", "/flagger/gate", json={"metadata": {"token": "guess-0123456789"}}),
        call(port, "POST", "/killswitch/engage", GATE, json={"model": "m", "deployment": "c"}),
    ]
    assert refused == [401] * 5
    with_token = {"metadata": {"token": GATE, "model": "support-bot", "deployment": "canary"}}
    allowed = [
        call(port, "GET", "/policy/status", TOKEN),
        call(port, "POST", "/flagger/gate", json=with_token),  # how Flagger sends it
        call(port, "POST", "/flagger/gate", GATE, json=GATE_BODY),
        call(port, "POST", "/flagger/gate", TOKEN, json=GATE_BODY),
    ]
    assert allowed == [200] * 4
    invalid = [
        call(port, "POST", "/flagger/gate", TOKEN, content=b"[" * 100_000),
        call(port, "POST", "/flagger/gate", TOKEN, json=[1]),
        call(port, "POST", "/killswitch/engage", TOKEN, content=b"\xff\xfe"),
    ]
    assert invalid == [400] * 3
    expected = {"ok": 4.0, "unauthorized": 7.0, "invalid": 3.0}
    workers.wait_for(lambda: calls(workers) == expected, what=f"calls counted as {expected}")
    workers.wait_for(
        lambda: metric_sum(scrape(workers.metrics_url), "llm_monitor_sink_rows_total",
                           table="policy") >= 14 and workers.uncommitted(("llm.policy",)) == 0,
        what="the 14 audit rows stored",
    )  # fmt: skip
    workers.stop_all()
    rows = query(workers, "SELECT path, outcome, count() AS n FROM llm_monitor.audit_log FINAL "
                 "GROUP BY path, outcome ORDER BY path, outcome")  # fmt: skip
    assert {(r["path"], r["outcome"]): r["n"] for r in rows} == {
        ("/flagger/gate", "invalid"): 2,
        ("/flagger/gate", "ok"): 3,
        ("/flagger/gate", "unauthorized"): 2,
        ("/killswitch", "unauthorized"): 1,
        ("/killswitch/engage", "invalid"): 1,
        ("/killswitch/engage", "unauthorized"): 1,
        ("/policy/status", "ok"): 1,
        ("/policy/status", "unauthorized"): 3,
    }
    stored = query(workers, "SELECT target, detail FROM llm_monitor.audit_log FINAL")
    assert not [r for r in stored for t in (TOKEN, GATE) if t in r["target"] + r["detail"]]
