"""``llm-monitor proxy``: the OpenAI-compatible sidecar (monitor/proxy/, docs/proxy.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Annotated

import typer

from monitor.cli.common import err, fail, settings_for
from monitor.errors import ConfigError, MonitorError


def proxy(
    upstream: Annotated[
        str, typer.Option(help="the model's OpenAI-compatible base URL, e.g. http://vllm:8000/v1")
    ],
    fallback_upstream: Annotated[
        str | None,
        typer.Option(help="where calls go while the kill switch is engaged (default: answer 503)"),
    ] = None,
    fallback_model: Annotated[
        str | None, typer.Option(help="the model asked of the fallback (default: the same)")
    ] = None,
    fallback_deployment: Annotated[
        str, typer.Option(help="the deployment that names fallback calls in events")
    ] = "fallback",
    host: Annotated[str, typer.Option(help="address to listen on (0.0.0.0 in a pod)")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="port to listen on")] = 8080,
    model: Annotated[
        str | None,
        typer.Option(help="model name for events and the kill switch (default: the request's)"),
    ] = None,
    model_version: Annotated[
        str | None,
        typer.Option(help="model version for events (default: the model the response names)"),
    ] = None,
    deployment: Annotated[
        str, typer.Option(help="deployment for events and the kill switch, e.g. canary")
    ] = "stable",
    app: Annotated[str, typer.Option(help="the app's name, in events")] = "",
    route: Annotated[str, typer.Option(help="the route, in events")] = "",
    block: Annotated[
        str, typer.Option(help="guard: refuse calls these detectors flag: pii,injection")
    ] = "",
    redact: Annotated[str, typer.Option(help="guard: redact what these detect: pii")] = "",
    guard_on: Annotated[
        str, typer.Option(help="guard stages: request,response")
    ] = "request,response",
    pii_types: Annotated[
        str, typer.Option(help="guard: PII types to act on (default all), e.g. EMAIL,SECRET")
    ] = "",
    kill_switch: Annotated[
        bool,
        typer.Option(
            "--kill-switch/--no-kill-switch", help="follow the kill switch on the policy topic"
        ),
    ] = True,
    capture_text: Annotated[
        bool,
        typer.Option("--text/--no-text", help="put prompts and responses in the events"),
    ] = True,
    bootstrap: Annotated[
        str | None, typer.Option(help="Kafka brokers (default: KAFKA_BOOTSTRAP_SERVERS)")
    ] = None,
    max_buffer: Annotated[
        int, typer.Option(help="events held while Kafka is away; more are dropped and counted")
    ] = 10_000,
    connect_timeout_s: Annotated[float, typer.Option(help="upstream connect timeout")] = 5.0,
    read_timeout_s: Annotated[
        float, typer.Option(help="longest wait for the upstream's next bytes")
    ] = 600.0,
    ready_grace_s: Annotated[
        float,
        typer.Option(help="/readyz waits this long for the kill-switch state, then serves anyway"),
    ] = 5.0,
) -> None:
    """Serve the OpenAI-compatible API in front of UPSTREAM: forward, record, follow the kill
    switch. Clients use http://HOST:PORT/v1 as their base URL."""
    from monitor.proxy import Guard, ProxyConfig, kafka_proxy

    try:
        settings = settings_for()
        servers = bootstrap or settings.kafka.bootstrap_servers
        if not servers:
            raise ConfigError(
                "no Kafka brokers: set KAFKA_BOOTSTRAP_SERVERS or pass --bootstrap "
                "(the proxy serves while they are down, but it needs to know where they are)"
            )
        try:
            config = ProxyConfig(
                upstream=upstream, fallback_upstream=fallback_upstream,
                fallback_model=fallback_model, fallback_deployment=fallback_deployment,
                model=model, model_version=model_version, deployment=deployment, app=app,
                route=route, capture_text=capture_text, connect_timeout_s=connect_timeout_s,
                read_timeout_s=read_timeout_s, ready_grace_s=ready_grace_s,
            )  # fmt: skip
            guard = None
            if block or redact:
                guard = Guard(
                    block=block.split(","), redact=redact.split(","), stages=guard_on.split(","),
                    pii_types=[t for t in pii_types.split(",") if t] or None,
                )  # fmt: skip
            if max_buffer < 1:
                raise ValueError(f"--max-buffer must be >= 1, got {max_buffer}")
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        server = kafka_proxy(
            config, servers, events_topic=settings.kafka.events_topic,
            policy_topic=settings.kafka.policy_topic, guard=guard,
            follow_kill_switch=kill_switch, max_buffer=max_buffer,
        )  # fmt: skip
    except MonitorError as exc:
        fail(exc)
        return

    # aiokafka logs every failed connection attempt (dozens a second while the broker is
    # away); the publisher and the kill-switch follower each log one warning per outage.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        url = await server.start(host, port)
        target = config.upstream_base
        extra = f", fallback {config.fallback_base}" if config.fallback_base else ""
        err.print(f"llm-monitor proxy on {url}/v1 → {target}{extra}")
        try:
            await stop.wait()
        finally:
            await server.stop()

    try:
        asyncio.run(serve())
    except OSError as exc:  # the port is taken, the address is not ours
        fail(MonitorError(f"cannot listen on {host}:{port}: {exc.strerror or exc}"))
