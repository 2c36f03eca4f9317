"""Cheap path end to end: events/s from the broker into ClickHouse, and produce→stored latency.

Run: ``make bench`` or ``.venv/bin/python -m bench.pipeline [--events N]``.

One bundled tansu broker serves both sides. The baseline is a bare aiokafka consume loop run in
this process over the very same records (fetch, no processing). The pipeline is a real
``llm-monitor worker`` (all roles: validate, detect, redact, window, insert into chdb); its
throughput is timed from the first produced record until the sink has inserted every event.
Latency is exact, per event: ``stored_at - produced_at`` read back from ClickHouse, under a
paced load the worker sustains, so it measures the pipeline rather than a queue.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from monitor.client import produce
from monitor.config import KafkaSettings
from monitor.devtools.broker import free_port, start_broker
from monitor.devtools.generate import generate_events
from monitor.devtools.worker import metric_sum, scrape, start_worker, stop_worker
from streams.topics import ensure_topics, pipeline_topics

TOPIC = "llm.events"


async def bare_consume(bootstrap: str, expected: int, partitions: int) -> float:
    """Seconds for a bare aiokafka loop to fetch ``expected`` records from the events topic."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, max_poll_records=5000
    )
    await consumer.start()
    try:
        tps = [TopicPartition(TOPIC, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        started, seen = time.perf_counter(), 0
        while seen < expected:
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            seen += sum(len(records) for records in batches.values())
        return time.perf_counter() - started
    finally:
        await consumer.stop()


def wait_stored(url: str, target: float, timeout_s: float = 300.0) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            done = metric_sum(scrape(url), "llm_monitor_sink_rows_total", table="events")
        except OSError:
            done = -1
        if done >= target:
            return time.perf_counter()
        time.sleep(0.02)
    raise TimeoutError(f"only {done:.0f}/{target:.0f} events stored after {timeout_s}s")


def wait_ready(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
                if json.loads(response.read())["assigned_partitions"] > 0:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError("worker did not become ready")


def records(n: int, seed: int) -> list[tuple[bytes, bytes]]:
    return list(generate_events(n, seed=seed, bad_fraction=0.0, duration_s=600))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--paced-rate", type=int, default=2_000, help="events/s for latency")
    parser.add_argument("--paced-seconds", type=int, default=10)
    args = parser.parse_args()
    partitions = KafkaSettings().partitions
    data_dir = Path(tempfile.mkdtemp(prefix="llm-monitor-bench-"))
    broker = start_broker(log_path=data_dir / "broker.log")
    port = free_port()
    env = dict(os.environ)
    env.update({
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "LLM_MONITOR_DATA_DIR": str(data_dir),
        "LLM_MONITOR_METRICS__PORT": str(port),
        "LLM_MONITOR_LOG_LEVEL": "warning",
    })  # fmt: skip
    worker = None
    try:
        asyncio.run(
            ensure_topics(broker.bootstrap, pipeline_topics(KafkaSettings(), ["llm-monitor"]))
        )
        worker = start_worker(env, data_dir / "worker.log")
        wait_ready(f"http://127.0.0.1:{port}/health")
        metrics_url = f"http://127.0.0.1:{port}/metrics"

        warm = records(2000, seed=1)
        asyncio.run(produce(broker.bootstrap, TOPIC, warm))
        wait_stored(metrics_url, len(warm))

        burst = records(args.events, seed=2)
        started = time.perf_counter()
        asyncio.run(produce(broker.bootstrap, TOPIC, burst))
        produced = time.perf_counter()
        finished = wait_stored(metrics_url, len(warm) + len(burst))
        pipeline_rate = len(burst) / (finished - started)

        paced = records(args.paced_rate * args.paced_seconds, seed=3)

        async def paced_produce() -> None:
            step = max(1, args.paced_rate // 20)
            t0 = time.perf_counter()
            for i in range(0, len(paced), step):
                await produce(broker.bootstrap, TOPIC, paced[i : i + step])
                delay = t0 + (i + step) / args.paced_rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)

        asyncio.run(paced_produce())
        wait_stored(metrics_url, len(warm) + len(burst) + len(paced))

        total = len(warm) + len(burst) + len(paced)
        baseline_seconds = asyncio.run(bare_consume(broker.bootstrap, total, partitions))
        baseline_rate = total / baseline_seconds
    finally:
        if worker is not None:
            stop_worker(worker)
        broker.stop()

    sql = (
        "SELECT quantileExact(0.5)(d), quantileExact(0.99)(d), count() FROM ("
        "SELECT dateDiff('millisecond', produced_at, stored_at) AS d, produced_at "
        "FROM llm_monitor.events ORDER BY produced_at DESC LIMIT {n:UInt32})"
    )
    out = subprocess.run(
        [sys.executable, "-m", "monitor.cli", "query", sql.replace("{n:UInt32}", str(len(paced))),
         "--format", "json", "--data-dir", str(data_dir)],  # fmt: skip
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    row = list(json.loads(out.stdout.strip().splitlines()[-1])[0].values())
    p50_ms, p99_ms, n = float(row[0]), float(row[1]), int(row[2])

    print(f"burst: {len(burst)} events produced in {produced - started:.2f}s")
    print(f"pipeline (broker -> detectors -> windows -> ClickHouse): {pipeline_rate:,.0f} events/s")
    print(f"baseline (bare aiokafka consume loop, same broker): {baseline_rate:,.0f} events/s")
    print(f"ratio pipeline/baseline: {pipeline_rate / baseline_rate:.3f}")
    print(
        f"latency produce->stored at {args.paced_rate} events/s over {n} events: "
        f"p50 {p50_ms:.0f} ms, p99 {p99_ms:.0f} ms"
    )
    summary = {
        "events": len(burst),
        "pipeline_events_per_s": round(pipeline_rate),
        "baseline_events_per_s": round(baseline_rate),
        "ratio": round(pipeline_rate / baseline_rate, 3),
        "paced_rate": args.paced_rate,
        "p50_ms": p50_ms,
        "p99_ms": p99_ms,
    }
    sys.stdout.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    main()
