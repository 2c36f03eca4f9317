"""The latency the proxy adds: calls through it vs direct calls to the same upstream.

One process, three event loops on three threads: a loopback OpenAI-compatible model
(``monitor.proxy.loopback``), the proxy (publishing every event to the bundled tansu broker, and
following the kill switch on its policy topic, as in production), and the client. The client
makes the same call directly and through the proxy, interleaved (direct, proxy, proxy with the
guard on), one at a time, ``--calls`` of each after a warm-up: plain chat completions and
streamed ones (time to first byte and to the end). The overhead is the difference of the
quantiles (proxy p50 minus direct p50, likewise p99). ``--kafka down`` points the proxy at a
closed port instead: the buffer fills, then events are dropped and counted.

``python -m bench.proxy`` prints a table, then one JSON object last.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import numpy as np
from prometheus_client import CollectorRegistry

from monitor.devtools.broker import BundledBroker, free_port, start_broker
from monitor.proxy import Guard, ProxyConfig, ProxyServer, kafka_proxy
from monitor.proxy.loopback import LoopbackModel
from streams.topics import ensure_topics

PROMPT = (
    "You are a support assistant for an online shop. Answer briefly and politely. "
    "Customer history: three orders in the last year, one return. " * 12
)
MESSAGES = [
    {"role": "system", "content": PROMPT},
    {"role": "user", "content": "Where is my order 1234? It was due on Monday."},
]


class ThreadedProxy:
    """A proxy on an event loop of its own, so the client's loop does not share its time."""

    def __init__(self, make: Callable[[], ProxyServer]) -> None:
        self._make = make
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.proxy: ProxyServer | None = None

    def start(self) -> str:
        self.thread.start()

        async def start() -> str:
            self.proxy = self._make()
            return await self.proxy.start(port=0)

        return asyncio.run_coroutine_threadsafe(start(), self.loop).result(30)

    def run(self, coroutine: Awaitable[Any]) -> Any:
        async def wrapped() -> Any:
            return await coroutine

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(60)

    def stop(self) -> None:
        if self.proxy is not None:
            self.run(self.proxy.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


async def plain(client: aiohttp.ClientSession, base: str) -> tuple[float, float]:
    started = time.perf_counter()
    body = {"model": "bench", "messages": MESSAGES}
    async with client.post(f"{base}/chat/completions", json=body) as response:
        await response.read()
        assert response.status == 200, response.status  # noqa: S101 - a bench precondition
    elapsed = time.perf_counter() - started
    return elapsed, elapsed


async def streamed(client: aiohttp.ClientSession, base: str) -> tuple[float, float]:
    """(time to the first byte of the stream, time to its end)."""
    started = time.perf_counter()
    body = {"model": "bench", "messages": MESSAGES, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    async with client.post(f"{base}/chat/completions", json=body) as response:
        await response.content.readany()
        first = time.perf_counter() - started
        await response.read()
    return first, time.perf_counter() - started


def quantiles_ms(values: list[float]) -> dict[str, float]:
    array = np.asarray(values) * 1000.0
    return {"p50_ms": round(float(np.percentile(array, 50)), 3),
            "p99_ms": round(float(np.percentile(array, 99)), 3)}  # fmt: skip


async def measure(bases: dict[str, str], calls: int, warmup: int) -> dict[str, Any]:
    kinds = {"plain": plain, "stream": streamed}
    timings: dict[str, dict[str, list[tuple[float, float]]]] = {
        kind: {name: [] for name in bases} for kind in kinds
    }
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as client:
        for kind, call in kinds.items():
            for i in range(warmup + calls):
                for name, base in bases.items():
                    result = await call(client, base)
                    if i >= warmup:
                        timings[kind][name].append(result)
    out: dict[str, Any] = {}
    for kind in kinds:
        figures: dict[str, Any] = {}
        for name in bases:
            first = quantiles_ms([t[0] for t in timings[kind][name]])
            total = quantiles_ms([t[1] for t in timings[kind][name]])
            figures[name] = {"total": total} if kind == "plain" else {"ttfb": first, "total": total}
        for name in bases:
            if name == "direct":
                continue
            for part in figures[name]:
                for q in ("p50_ms", "p99_ms"):
                    overhead = figures[name][part][q] - figures["direct"][part][q]
                    figures[name][part][f"overhead_{q}"] = round(overhead, 3)
        out[kind] = figures
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="measured calls per mode")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--kafka", choices=("bundled", "down"), default="bundled")
    args = parser.parse_args(argv)

    broker: BundledBroker | None = None
    if args.kafka == "bundled":
        broker = start_broker()
        bootstrap = broker.bootstrap
        asyncio.run(ensure_topics(bootstrap, {"llm.events": 4, "llm.policy": 4}))
    else:
        bootstrap = f"127.0.0.1:{free_port()}"
    model = LoopbackModel("bench")
    model.start_in_thread()
    registries = {"proxy": CollectorRegistry(), "proxy_guard": CollectorRegistry()}
    guard = Guard(block=["injection"], redact=["pii"])
    proxies = {
        name: ThreadedProxy(
            lambda name=name: kafka_proxy(  # type: ignore[misc]
                ProxyConfig(upstream=model.base_url),
                bootstrap,
                registry=registries[name],
                guard=guard if name == "proxy_guard" else None,
                close_timeout_s=10.0,
            )  # fmt: skip
        )
        for name in registries
    }
    try:
        bases = {"direct": model.base_url}
        bases |= {name: f"{p.start()}/v1" for name, p in proxies.items()}
        results = asyncio.run(measure(bases, args.calls, args.warmup))
        delivery: dict[str, Any] = {}
        for name, p in proxies.items():
            assert p.proxy is not None  # noqa: S101 - started above
            publisher: Any = p.proxy.publisher
            p.stop()
            stats = publisher.stats
            delivery[name] = {"accepted": stats.accepted, "delivered": stats.delivered,
                              "dropped": stats.dropped, "failed": stats.failed}  # fmt: skip
    finally:
        model.stop_thread()
        if broker is not None:
            broker.stop()

    print(f"{'':12} {'direct p50/p99 ms':>20} {'proxy':>16} {'proxy+guard':>16}")
    for kind, figures in results.items():
        for part in figures["direct"]:
            cells = [f"{figures[n][part]['p50_ms']:.2f}/{figures[n][part]['p99_ms']:.2f}"
                     for n in ("direct", "proxy", "proxy_guard")]  # fmt: skip
            print(f"{kind + ' ' + part:12} {cells[0]:>20} {cells[1]:>16} {cells[2]:>16}")
    summary = {
        "calls": args.calls,
        "kafka": args.kafka,
        "overhead_p50_ms": results["plain"]["proxy"]["total"]["overhead_p50_ms"],
        "overhead_p99_ms": results["plain"]["proxy"]["total"]["overhead_p99_ms"],
        "stream_ttfb_overhead_p50_ms": results["stream"]["proxy"]["ttfb"]["overhead_p50_ms"],
        "stream_ttfb_overhead_p99_ms": results["stream"]["proxy"]["ttfb"]["overhead_p99_ms"],
        "guard_overhead_p50_ms": results["plain"]["proxy_guard"]["total"]["overhead_p50_ms"],
        "guard_overhead_p99_ms": results["plain"]["proxy_guard"]["total"]["overhead_p99_ms"],
        **results,
        "events": delivery,
    }
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
