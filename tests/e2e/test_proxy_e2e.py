"""The proxy end to end: `llm-monitor proxy` (a process, as in a pod) in front of a loopback
model, a real worker running the policy role, the real broker. The kill switch engaged through
the policy API moves the next call to the fallback within a second, and its release moves it
back; every call through the proxy is an event the worker's decoder accepts."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from monitor.devtools.broker import free_port
from monitor.ingest.decode import decode_batch
from monitor.proxy.loopback import LoopbackModel
from monitor.proxy.server import UPSTREAM_HEADER
from tests.conftest import WorkerHarness, wait_until
from tests.integration.test_proxy import read_events

pytestmark = pytest.mark.e2e
TOKEN = "e2e-proxy-token-0123456789abcdef"  # noqa: S105 - test fixture
REACTION_S = 1.0
MESSAGES = [{"role": "user", "content": "hello"}]
TARGET = {"model": "support-bot", "deployment": "canary", "reason": "e2e: bad answers"}


@pytest.fixture
def models() -> Iterator[tuple[LoopbackModel, LoopbackModel]]:
    primary, fallback = LoopbackModel("primary"), LoopbackModel("fallback")
    primary.start_in_thread()
    fallback.start_in_thread()
    try:
        yield primary, fallback
    finally:
        primary.stop_thread()
        fallback.stop_thread()


def start_proxy(
    bootstrap: str, primary: LoopbackModel, fallback: LoopbackModel, log: Path
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap}
    out = log.open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "monitor.cli", "proxy", "--upstream", primary.base_url,
         "--fallback-upstream", fallback.base_url, "--deployment", "canary", "--app", "e2e",
         "--port", str(port)],
        env=env, stdout=out, stderr=out,
    )  # fmt: skip
    out.close()
    return process, f"http://127.0.0.1:{port}"


def upstream_of(client: httpx.Client, url: str) -> str:
    body = {"model": "support-bot", "messages": MESSAGES}
    response = client.post(f"{url}/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.headers[UPSTREAM_HEADER]


def seconds_until(check: Callable[[], bool], timeout_s: float) -> float:
    """Calls ``check`` back to back until it holds; the seconds that took (fails past the
    timeout). Each check is one call through the proxy: this is the "next call" the issue
    speaks of, made as often as a busy app would."""
    started = time.perf_counter()
    while not check():
        assert time.perf_counter() - started < timeout_s, f"not within {timeout_s}s"
    return time.perf_counter() - started


def test_kill_switch_moves_calls_to_the_fallback_within_a_second_and_back(
    workers: WorkerHarness, models: tuple[LoopbackModel, LoopbackModel], tmp_path: Path
) -> None:
    primary, fallback = models
    workers.env_overrides.update(
        {"LLM_MONITOR_ROLES": '["policy"]', "LLM_MONITOR_POLICY__API_TOKEN": TOKEN}
    )
    workers.start()
    proxy, url = start_proxy(workers.bootstrap, primary, fallback, tmp_path / "proxy.log")
    api = f"http://127.0.0.1:{workers.port}"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    timings: dict[str, float] = {}
    try:
        workers.wait_for(workers.ready, what="the policy worker ready")

        def proxy_synced() -> bool:
            assert proxy.poll() is None, (tmp_path / "proxy.log").read_text()
            try:
                body = httpx.get(f"{url}/readyz", timeout=2).json()
            except httpx.HTTPError:
                return False
            return bool(body["killswitch"]["synced"])

        wait_until(proxy_synced, "the proxy's kill-switch state synced", timeout_s=60)
        with httpx.Client(timeout=10) as client:
            assert upstream_of(client, url) == "primary"
            asked = time.perf_counter()
            engaged = client.post(f"{api}/killswitch/engage", json=TARGET, headers=auth)
            assert engaged.status_code == 200 and engaged.json()["state"]["engaged"] is True
            timings["engage"] = seconds_until(
                lambda: upstream_of(client, url) == "fallback", REACTION_S
            )
            # From the API call's start: the policy worker applying it is included.
            timings["engage_from_request"] = time.perf_counter() - asked
            assert [upstream_of(client, url) for _ in range(5)] == ["fallback"] * 5
            asked = time.perf_counter()
            released = client.post(f"{api}/killswitch/release", json=TARGET, headers=auth)
            assert released.status_code == 200 and released.json()["state"]["engaged"] is False
            timings["release"] = seconds_until(
                lambda: upstream_of(client, url) == "primary", REACTION_S
            )
            timings["release_from_request"] = time.perf_counter() - asked
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)
    print(f"kill switch through the API, seconds to the next call rerouted: {timings}")
    assert proxy.returncode == 0, (tmp_path / "proxy.log").read_text()
    assert max(timings.values()) < REACTION_S, timings
    assert len(fallback.received) >= 6

    calls = len(primary.received) + len(fallback.received)
    records = asyncio.run(read_events(workers.bootstrap, calls))
    batch = decode_batch(records, max_bytes=1_000_000, now_ms=lambda: time.time_ns() // 1_000_000)
    assert batch.dead_letters == [] and len(batch.events) == calls
    routed = {(e.deployment, e.attributes["proxy_upstream"]) for e in batch.events}
    assert routed == {("canary", "primary"), ("fallback", "fallback")}
    assert {e.app for e in batch.events} == {"e2e"}
    assert all(e.response == f"answer from {e.attributes['proxy_upstream']}" for e in batch.events)
    assert json.loads(records[0].value)["model"] == "support-bot"
