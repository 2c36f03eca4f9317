"""Counterfactual bias probes against a live model: send, time, publish as tagged events.

``llm-monitor probe --endpoint URL`` sends every prompt of the probe pack (detectors/bias.py)
to an OpenAI-compatible ``/chat/completions`` endpoint and turns each answer into an ordinary
event whose ``attributes`` carry ``group``, ``probe_id`` and ``axis``. The pipeline then treats
them like any traffic: the bias statistics per window compare the groups, with intervals.
The API key is sent as a bearer token and never printed or stored.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from detectors.bias import probe_prompts


@dataclass(frozen=True)
class ProbeTarget:
    endpoint: str
    model: str
    model_version: str
    deployment: str
    api_key: str | None = None
    temperature: float = 0.0
    max_tokens: int = 256
    timeout_s: float = 60.0


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code == 429 or exc.response.status_code >= 500
    return isinstance(exc, httpx.TransportError)


def chat_url(endpoint: str) -> str:
    """Accept a base (``http://host/v1``) or the full ``.../chat/completions`` URL."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/chat/completions") else f"{endpoint}/chat/completions"


async def _ask(client: httpx.AsyncClient, target: ProbeTarget, prompt: str) -> dict[str, Any]:
    """One chat completion, retried on 429/5xx/transport errors; timing and usage kept."""
    body = {
        "model": target.model,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": target.temperature,
        "max_tokens": target.max_tokens,
    }
    started = time.perf_counter()
    status, error_type, text = "ok", None, ""
    usage: dict[str, Any] = {}
    try:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(_retryable),
            stop=stop_after_attempt(4),
            wait=wait_exponential_jitter(initial=0.5, max=8.0),
            reraise=True,
        ):
            with attempt:
                response = await client.post(chat_url(target.endpoint), json=body)
                response.raise_for_status()
        payload = response.json()
        text = str(payload["choices"][0]["message"]["content"] or "")
        usage = payload.get("usage") or {}
    except httpx.TimeoutException:
        status, error_type = "timeout", "probe_timeout"
    except (httpx.HTTPError, KeyError, IndexError, ValueError, TypeError) as exc:
        status, error_type = "error", f"probe_{type(exc).__name__}"
    return {
        "response": text,
        "latency_ms": round((time.perf_counter() - started) * 1000, 1),
        "status": status,
        "error_type": error_type,
        "usage": usage,
    }


async def run_probes(
    target: ProbeTarget,
    *,
    repeats: int = 1,
    concurrency: int = 4,
    probes: Sequence[dict[str, str]] | None = None,
) -> list[bytes]:
    """Send every probe ``repeats`` times; returns the events as JSON bytes, ready to publish."""
    pack = list(probes if probes is not None else probe_prompts())
    headers = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(headers=headers, timeout=target.timeout_s) as client:

        async def one(probe: dict[str, str]) -> bytes:
            async with limit:
                answer = await _ask(client, target, probe["prompt"])
            return _event(target, probe, answer)

        return list(await asyncio.gather(*(one(p) for _ in range(repeats) for p in pack)))


def _event(target: ProbeTarget, probe: dict[str, str], answer: dict[str, Any]) -> bytes:
    usage = answer["usage"]
    event: dict[str, Any] = {
        "request_id": str(uuid.uuid4()),
        "timestamp": int(time.time() * 1000),
        "model": target.model,
        "model_version": target.model_version,
        "deployment": target.deployment,
        "route": "bias-probe",
        "app": "llm-monitor-probe",
        "prompt": probe["prompt"],
        "response": answer["response"],
        "latency_ms": answer["latency_ms"],
        "status": answer["status"],
        "attributes": {
            "group": probe["group"],
            "probe_id": probe["probe_id"],
            "axis": probe.get("axis", ""),
            "source": "probe",
        },
    }
    if answer["error_type"]:
        event["error_type"] = answer["error_type"]
    if isinstance(usage.get("prompt_tokens"), int):
        event["input_tokens"] = usage["prompt_tokens"]
    if isinstance(usage.get("completion_tokens"), int):
        event["output_tokens"] = usage["completion_tokens"]
    return msgspec.json.encode(event)
