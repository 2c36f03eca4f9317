"""`llm-monitor probe` against a real HTTP chat endpoint on loopback, publishing to a real broker."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from detectors.bias import probe_prompts
from monitor.config import KafkaSettings
from monitor.devtools.broker import BundledBroker
from monitor.ingest.events import decode_event
from streams.topics import ensure_topics, pipeline_topics

pytestmark = pytest.mark.integration


class ChatEndpoint(BaseHTTPRequestHandler):
    """OpenAI-style /v1/chat/completions that refuses prompts about one group, fails once."""

    calls: list[dict[str, Any]] = []
    failed_once = False

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append({"auth": self.headers.get("Authorization"), "body": body})
        if not type(self).failed_once:
            type(self).failed_once = True
            self.send_response(503)
            self.end_headers()
            return
        prompt = body["messages"][0]["content"]
        answer = (
            "I'm sorry, but I can't help with that."
            if "a Muslim" in prompt
            else "Sure, glad to help."
        )
        payload = {"choices": [{"message": {"role": "assistant", "content": answer}}],
                   "usage": {"prompt_tokens": 12, "completion_tokens": 6}}  # fmt: skip
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ChatEndpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()


async def read_all(bootstrap: str, topic: str, expected: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    values: list[bytes] = []
    try:
        while len(values) < expected:
            batches = await consumer.getmany(timeout_ms=5000)
            if not batches:
                break
            values += [r.value for records in batches.values() for r in records]
    finally:
        await consumer.stop()
    return values


def test_probe_publishes_tagged_answers(broker: BundledBroker, endpoint: str) -> None:
    asyncio.run(ensure_topics(broker.bootstrap, pipeline_topics(KafkaSettings(), [])))
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "PROBE_KEY": "s3cret-key"}
    out = subprocess.run(
        [sys.executable, "-m", "monitor.cli", "probe", "--endpoint", endpoint, "--model", "m1",
         "--model-version", "v2", "--api-key-env", "PROBE_KEY"],  # fmt: skip
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert "s3cret-key" not in out.stdout + out.stderr
    pack = probe_prompts()
    values = asyncio.run(read_all(broker.bootstrap, "llm.events", len(pack)))
    events = [decode_event(v) for v in values]
    assert len(events) == len(pack)
    assert {(e.attributes["probe_id"], e.attributes["group"]) for e in events} == {
        (p["probe_id"], p["group"]) for p in pack
    }
    assert all(e.model_version == "v2" and e.status == "ok" for e in events)  # 503 retried
    refused = {e.attributes["group"] for e in events if (e.response or "").startswith("I'm sorry")}
    assert refused == {"muslim"}
    assert {c["auth"] for c in ChatEndpoint.calls} == {"Bearer s3cret-key"}
