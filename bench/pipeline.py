"""Cheap path end to end: events/s from the broker into ClickHouse, and produce→stored latency.

Run: ``make bench`` or ``.venv/bin/python -m bench.pipeline [--events N] [--one-process]``.

One bundled tansu broker serves both sides. The baseline is a bare aiokafka consume loop run in
this process over the very same records (fetch, no processing). The pipeline is real
``llm-monitor worker`` processes running every cheap role (validate, detect, redact, window,
policy, insert into chdb): by default two, as a deployment on two cores runs them (the
stateless score role in one, aggregate+policy+sink in the one that owns chdb), or one with
``--one-process``; throughput is timed from the first produced record until the sink has
inserted every event.
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
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition

from monitor.client import produce
from monitor.config import KafkaSettings, Role, Settings
from monitor.devtools.broker import free_port, start_broker
from monitor.devtools.generate import generate_events
from monitor.devtools.worker import metric_sum, scrape, start_worker, stop_worker
from streams.app import app_id_for
from streams.topics import ensure_topics, pipeline_topics

TOPIC = "llm.events"
STORED = "llm_monitor_sink_rows_total"  # the counter the benchmark polls


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
            done = metric_sum(scrape(f"{url}?name[]={STORED}"), STORED, table="events")
        except OSError:
            done = -1
        if done >= target:
            return time.perf_counter()
        time.sleep(0.1)  # one counter's samples, not every series: a full scrape costs ~2 ms
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


@dataclass(frozen=True)
class Throughput:
    """What the measured runs saw, before the worker stops."""

    burst: int
    burst_produce_s: float
    pipeline_rate: float
    baseline_rate: float
    paced: int
    worker_cpu_us_per_event: float
    broker_cpu_us_per_event: float
    # Per worker process (its roles joined by "+"): the share of one core it used over the
    # burst; the process near 1.0 is the one that limits throughput (one core of GIL time).
    core_share: dict[str, float]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--paced-rate", type=int, default=5_000, help="events/s for latency")
    parser.add_argument("--paced-seconds", type=int, default=10)
    roles = parser.add_mutually_exclusive_group()
    roles.add_argument(
        "--split-roles", action="store_true", default=True,
        help="the default: two worker processes, score | aggregate+policy+sink",
    )  # fmt: skip
    roles.add_argument(
        "--one-process", dest="split_roles", action="store_false",
        help="one worker process with every role (one core of GIL time at most)",
    )  # fmt: skip
    return parser.parse_args()


def worker_env(bootstrap: str, data_dir: Path, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "LLM_MONITOR_DATA_DIR": str(data_dir),
        "LLM_MONITOR_METRICS__PORT": str(port),
        "LLM_MONITOR_LOG_LEVEL": "warning",
    })  # fmt: skip
    return env


# One process with every role, or the score role in a process of its own (it holds no state
# and needs no chdb, so it scales out; the other roles stay in the one process that owns chdb).
SPLIT_ROLES: tuple[tuple[Role, ...], ...] = (("score",), ("aggregate", "policy", "sink"))


def run_bench(args: argparse.Namespace, data_dir: Path) -> Throughput:
    """Start the broker and the worker(s), run the measured loads, stop them all."""
    partitions = KafkaSettings().partitions
    broker = start_broker(log_path=data_dir / "broker.log")
    role_sets: tuple[tuple[Role, ...], ...] = SPLIT_ROLES if args.split_roles else (("all",),)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        app_ids = [app_id_for(Settings(roles=list(roles))) for roles in role_sets]
        asyncio.run(ensure_topics(broker.bootstrap, pipeline_topics(KafkaSettings(), app_ids)))
        ports = []
        for roles in role_sets:
            ports.append(free_port())
            env = worker_env(broker.bootstrap, data_dir, ports[-1])
            env["LLM_MONITOR_ROLES"] = json.dumps(list(roles))
            workers.append(start_worker(env, data_dir / f"worker-{'-'.join(roles)}.log"))
        for port in ports:
            wait_ready(f"http://127.0.0.1:{port}/health")
        sink_metrics = f"http://127.0.0.1:{ports[-1]}/metrics"
        pids = {"+".join(roles): w.pid for roles, w in zip(role_sets, workers, strict=True)}
        return measure(args, broker.bootstrap, sink_metrics, partitions, pids, broker.process.pid)
    finally:
        for worker in workers:
            stop_worker(worker)
        broker.stop()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes ``pids`` so far (Linux /proc)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def measure(
    args: argparse.Namespace,
    bootstrap: str,
    metrics_url: str,
    partitions: int,
    pids: dict[str, int],
    broker_pid: int,
) -> Throughput:
    """A warm-up, the timed burst, the paced load for latency, then the bare-consume baseline
    over everything produced. The worker's CPU time per burst event is the figure that other
    load on the machine moves least."""
    warm = records(2000, seed=1)
    asyncio.run(produce(bootstrap, TOPIC, warm))
    wait_stored(metrics_url, len(warm))

    burst = records(args.events, seed=2)
    before = {name: cpu_seconds([pid]) for name, pid in pids.items()}
    broker_before = cpu_seconds([broker_pid])
    started = time.perf_counter()
    asyncio.run(produce(bootstrap, TOPIC, burst))
    produced = time.perf_counter()
    finished = wait_stored(metrics_url, len(warm) + len(burst))
    pipeline_rate = len(burst) / (finished - started)
    used = {name: cpu_seconds([pid]) - before[name] for name, pid in pids.items()}
    cpu_us = sum(used.values()) / len(burst) * 1e6
    broker_us = (cpu_seconds([broker_pid]) - broker_before) / len(burst) * 1e6
    core_share = {name: round(seconds / (finished - started), 2) for name, seconds in used.items()}

    paced = records(args.paced_rate * args.paced_seconds, seed=3)
    asyncio.run(paced_produce(bootstrap, paced, args.paced_rate))
    wait_stored(metrics_url, len(warm) + len(burst) + len(paced))

    total = len(warm) + len(burst) + len(paced)
    baseline_seconds = asyncio.run(bare_consume(bootstrap, total, partitions))
    return Throughput(
        burst=len(burst),
        burst_produce_s=produced - started,
        pipeline_rate=pipeline_rate,
        baseline_rate=total / baseline_seconds,
        paced=len(paced),
        worker_cpu_us_per_event=cpu_us,
        broker_cpu_us_per_event=broker_us,
        core_share=core_share,
    )


async def paced_produce(bootstrap: str, paced: list[tuple[bytes, bytes]], rate: int) -> None:
    """Produce ``paced`` at ``rate`` events/s, in 20 batches a second."""
    step = max(1, rate // 20)
    t0 = time.perf_counter()
    for i in range(0, len(paced), step):
        await produce(bootstrap, TOPIC, paced[i : i + step])
        delay = t0 + (i + step) / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)


def stored_latency(data_dir: Path, n: int) -> tuple[float, float, int]:
    """p50 and p99 of produce->stored over the newest ``n`` events, and how many were read;
    read with ``llm-monitor query`` once the worker has let go of the chdb directory."""
    sql = (
        "SELECT quantileExact(0.5)(d), quantileExact(0.99)(d), count() FROM ("
        "SELECT dateDiff('millisecond', produced_at, stored_at) AS d, produced_at "
        "FROM llm_monitor.events ORDER BY produced_at DESC LIMIT {n:UInt32})"
    )
    out = subprocess.run(
        [sys.executable, "-m", "monitor.cli", "query", sql.replace("{n:UInt32}", str(n)),
         "--format", "json", "--data-dir", str(data_dir)],  # fmt: skip
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    row = list(json.loads(out.stdout.strip().splitlines()[-1])[0].values())
    return float(row[0]), float(row[1]), int(row[2])


def print_results(
    paced_rate: int, split_roles: bool, t: Throughput, latency: tuple[float, float, int]
) -> None:
    """The human-readable lines, then one JSON line for scripts."""
    p50_ms, p99_ms, n = latency
    print(f"burst: {t.burst} events produced in {t.burst_produce_s:.2f}s")
    print(
        f"pipeline (broker -> detectors -> windows -> ClickHouse): {t.pipeline_rate:,.0f} events/s"
    )
    print(f"baseline (bare aiokafka consume loop, same broker): {t.baseline_rate:,.0f} events/s")
    print(f"ratio pipeline/baseline: {t.pipeline_rate / t.baseline_rate:.3f}")
    print(
        f"CPU per burst event: worker {t.worker_cpu_us_per_event:.0f} µs (every thread), "
        f"broker {t.broker_cpu_us_per_event:.0f} µs"
    )
    shares = ", ".join(f"{name} {share:.2f}" for name, share in t.core_share.items())
    print(f"cores used over the burst, per worker process: {shares}")
    print(
        f"latency produce->stored at {paced_rate} events/s over {n} events: "
        f"p50 {p50_ms:.0f} ms, p99 {p99_ms:.0f} ms"
    )
    summary = {
        "events": t.burst,
        "pipeline_events_per_s": round(t.pipeline_rate),
        "baseline_events_per_s": round(t.baseline_rate),
        "ratio": round(t.pipeline_rate / t.baseline_rate, 3),
        "worker_cpu_us_per_event": round(t.worker_cpu_us_per_event, 1),
        "broker_cpu_us_per_event": round(t.broker_cpu_us_per_event, 1),
        "core_share": t.core_share,
        "split_roles": split_roles,
        "paced_rate": paced_rate,
        "p50_ms": p50_ms,
        "p99_ms": p99_ms,
    }
    sys.stdout.write(json.dumps(summary) + "\n")


def main() -> None:
    args = parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="llm-monitor-bench-"))
    throughput = run_bench(args, data_dir)
    latency = stored_latency(data_dir, throughput.paced)
    print_results(args.paced_rate, args.split_roles, throughput, latency)


if __name__ == "__main__":
    main()
