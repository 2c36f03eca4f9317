"""The proxy's HTTP server: an OpenAI-compatible front that forwards to an upstream.

Every request other than the proxy's own pages (``/healthz``, ``/readyz``, ``/metrics``) is
forwarded with its method, path, query, headers and body: ``/v1/...`` to the upstream's base
(``config.target_url``), anything else to its origin. The upstream's status, headers and body
come back unchanged; a stream (``text/event-stream``) is passed on chunk by chunk as it arrives.
Calls to ``chat/completions`` and ``completions`` also become one event each (``record.py``),
handed to a non-blocking publisher.

Routing, per request, by a dict look-up of the kill switch for (model, deployment): engaged →
the fallback upstream (the request's ``model`` rewritten when ``fallback_model`` is set), or a
503 with a JSON error body when no fallback is configured (or the fallback is killed too).

What the proxy answers itself: 502 (upstream unreachable) and 504 (upstream timed out) with a
JSON error body, 503 (killed), 400 (blocked by the guard), 413 (body over the limit). It never
fails a call for Kafka's sake: publishing only queues the event, and kill-switch state is read
in the background (unknown state: calls pass through).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from monitor.client.events import Status, new_request_id, now_ms
from monitor.client.openai import EventSink
from monitor.policy.records import KillSwitchState
from monitor.proxy.config import ProxyConfig, target_url
from monitor.proxy.guard import Guard, Verdict
from monitor.proxy.killswitch import KillSwitchView
from monitor.proxy.metrics import ProxyMetrics, proxy_metrics
from monitor.proxy.record import Exchange, SseParser, error_type, label, prompt_text

log = logging.getLogger(__name__)

HOP_BY_HOP: Final = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade",
})  # fmt: skip
# aiohttp sets these itself: the length of what it sends, the encoding it can decode.
REQUEST_DROPPED: Final = HOP_BY_HOP | {"host", "content-length", "accept-encoding"}
# The body is handed on decoded, so its encoding and length are aiohttp's to set.
RESPONSE_DROPPED: Final = HOP_BY_HOP | {"content-length", "content-encoding"}
REQUEST_ID_HEADER: Final = "x-llm-monitor-request-id"
UPSTREAM_HEADER: Final = "x-llm-monitor-upstream"
OWN_PATHS: Final = ("/healthz", "/readyz", "/metrics")
RECORDED: Final = ("/chat/completions", "/completions")  # path endings that become events
SHUTDOWN_GRACE_S: Final = 10.0

Upstream = Literal["primary", "fallback", "none"]


@dataclass(frozen=True)
class Route:
    """Where one call goes: an upstream base, or nowhere (``killed``: the switch that stops it)."""

    upstream: Upstream
    base: str | None
    deployment: str
    model: str | None = None  # the model the upstream is asked for, when rewritten
    killed: KillSwitchState | None = None
    fallback_killed: KillSwitchState | None = None  # the fallback's own switch, when engaged


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def error_body(message: str, kind: str, code: str, **extra: Any) -> dict[str, Any]:
    """An OpenAI-style error body, so clients raise their usual exception with our message."""
    return {"error": {"message": message, "type": kind, "code": code, "param": None, **extra}}


def _recorded(path: str) -> bool:
    return any(path.endswith(end) for end in RECORDED)


class ProxyServer:
    """The proxy: routes, forwards, records. ``publisher`` gets one event per recorded call;
    ``switches`` answers kill-switch look-ups; ``guard`` (optional) blocks or redacts.

    ``start`` starts the switches, the publisher's sender and the HTTP server; ``stop`` drains
    in-flight calls, flushes the publisher (at most ``close_timeout_s``) and stops the rest."""

    def __init__(
        self,
        config: ProxyConfig,
        *,
        publisher: EventSink,
        switches: KillSwitchView,
        guard: Guard | None = None,
        registry: CollectorRegistry | None = None,
        metrics: ProxyMetrics | None = None,
        clock: Callable[[], float] = time.perf_counter,
        wall_clock_ms: Callable[[], int] = now_ms,
        request_ids: Callable[[], str] = new_request_id,
        ready_clock: Callable[[], float] = time.monotonic,
        close_timeout_s: float = 5.0,
    ) -> None:
        self.config = config
        self.publisher = publisher
        self.switches = switches
        self.guard = guard
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = metrics if metrics is not None else proxy_metrics(self.registry)
        self.close_timeout_s = close_timeout_s
        self._clock = clock
        self._wall_clock_ms = wall_clock_ms
        self._request_ids = request_ids
        self._ready_clock = ready_clock
        self._primary = config.upstream_base
        self._fallback = config.fallback_base
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._started_at: float | None = None
        self.url = ""

    # -- lifecycle -------------------------------------------------------------------------

    def application(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        app.on_startup.append(self._on_startup)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 8080) -> str:
        """Serve on ``host:port`` (0: a free port); returns the base URL, e.g.
        ``http://127.0.0.1:8080``. Clients use ``<url>/v1`` as their base_url."""
        runner = web.AppRunner(
            self.application(), access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S
        )
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        bound = runner.addresses[0]
        self.url = f"http://{host}:{bound[1]}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _on_startup(self, app: web.Application) -> None:
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self.config.connect_timeout_s,
            sock_read=self.config.read_timeout_s,
        )
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(
            timeout=timeout, connector=connector, auto_decompress=True, trust_env=False
        )
        await self.switches.start()
        start = getattr(self.publisher, "start", None)
        if start is not None:
            await start()
        self._started_at = self._ready_clock()

    async def _on_cleanup(self, app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()
        await self.switches.stop()
        close = getattr(self.publisher, "close", None)
        if close is not None:
            try:
                await close(self.close_timeout_s)
            except Exception as exc:  # shutting down: say so, never raise
                log.warning("proxy: publisher did not close cleanly: %r", exc)

    # -- own pages -------------------------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.Response:
        """Liveness: the event loop answers."""
        return web.json_response({"status": "ok"})

    @property
    def ready(self) -> bool:
        """Serving, and the kill-switch state is known or the start-up grace is over (Kafka
        down never keeps the proxy out of service)."""
        if self._started_at is None:
            return False
        grace_over = self._ready_clock() - self._started_at >= self.config.ready_grace_s
        return self.switches.synced or grace_over

    async def _readyz(self, request: web.Request) -> web.Response:
        stats = getattr(self.publisher, "stats", None)
        body = {
            "ready": self.ready,
            "upstream": self._primary,
            "fallback_upstream": self._fallback,
            "deployment": self.config.deployment,
            "killswitch": self.switches.health(),
            "guard": self.guard.describe() if self.guard else None,
            "publisher": (
                {"accepted": stats.accepted, "delivered": stats.delivered,
                 "dropped": stats.dropped, "failed": stats.failed, "pending": stats.pending}
                if stats is not None else None
            ),
        }  # fmt: skip
        return web.json_response(body, status=200 if self.ready else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(self.registry))
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response

    # -- routing ---------------------------------------------------------------------------

    def route(self, model: str | None) -> Route:
        """The upstream for a call to ``model`` under this proxy's deployment, right now."""
        config = self.config
        primary = Route("primary", self._primary, config.deployment)
        if model is None:
            return primary
        state = self.switches.engaged(model, config.deployment)
        if state is None:
            return primary
        if self._fallback is None:
            return Route("none", None, config.deployment, killed=state)
        target = config.fallback_model or model
        fallback_state = self.switches.engaged(target, config.fallback_deployment)
        if fallback_state is not None:
            return Route(
                "none", None, config.deployment, killed=state, fallback_killed=fallback_state
            )
        rewritten = config.fallback_model
        return Route("fallback", self._fallback, config.fallback_deployment, model=rewritten)

    # -- forwarding ------------------------------------------------------------------------

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        started = self._clock()
        body = await request.read()
        payload = _json_object(body) if body and request.method == "POST" else None
        requested = payload.get("model") if payload is not None else None
        if not isinstance(requested, str) or not requested:
            requested = None
        model = self.config.model or requested
        route = self.route(model)
        exchange = None
        if payload is not None and _recorded(request.path):
            exchange = Exchange(
                request_id=self._request_ids(), timestamp_ms=self._wall_clock_ms(),
                started=started, model=label(route.model or model), deployment=route.deployment,
                upstream=route.upstream,
                prompt=prompt_text(payload) if self.config.capture_text else None,
            )  # fmt: skip
        own: dict[str, str] = {UPSTREAM_HEADER: route.upstream}
        if exchange is not None:
            own[REQUEST_ID_HEADER] = exchange.request_id
        if route.killed is not None:
            return self._killed(route, model or "", exchange, own)
        rewritten: dict[str, Any] | None = None
        if self.guard is not None and exchange is not None and payload is not None:
            checked = self.guard.check_request(payload)
            self._count_guard(checked.verdicts, exchange)
            if checked.blocked is not None:
                return self._blocked(checked.blocked, route, exchange, own)
            rewritten = checked.body
        if route.upstream == "fallback":
            self.metrics.fallback_routes.inc()
        if route.model is not None and payload is not None:
            rewritten = dict(rewritten if rewritten is not None else payload, model=route.model)
        if rewritten is not None:
            body = _encode(rewritten)
        assert route.base is not None  # noqa: S101 - only a killed route has none
        url = target_url(route.base, request.path, request.query_string)
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in REQUEST_DROPPED
        )
        assert self._session is not None  # noqa: S101 - created on startup
        sent = self._clock()
        try:
            upstream = await self._session.request(
                request.method, url, data=body or None, headers=headers, allow_redirects=False
            )
        except TimeoutError:
            return self._failed(route, exchange, own, sent, 504, "timeout", "APITimeoutError")
        except (aiohttp.ClientError, OSError) as exc:
            log.warning("proxy: %s upstream %s unreachable: %s", route.upstream, url, exc)
            return self._failed(
                route, exchange, own, sent, 502, "unreachable", "APIConnectionError"
            )
        async with upstream:
            if upstream.content_type == "text/event-stream":
                return await self._stream(request, upstream, route, exchange, own, sent)
            try:
                data = await upstream.read()
            except TimeoutError:
                return self._failed(route, exchange, own, sent, 504, "timeout", "APITimeoutError")
            except (aiohttp.ClientError, OSError):
                return self._failed(
                    route, exchange, own, sent, 502, "unreachable", "APIConnectionError"
                )
        received = self._clock()
        status = upstream.status
        ok = 200 <= status < 300
        if exchange is not None and ok and upstream.content_type == "application/json":
            answer = _json_object(data)
            exchange.completed(answer)
            if self.guard is not None and answer is not None:
                checked = self.guard.check_response(answer)
                self._count_guard(checked.verdicts, exchange)
                if checked.blocked is not None:
                    return self._blocked(checked.blocked, route, exchange, own, received)
                if checked.body is not None:
                    data = _encode(checked.body)
        headers = _response_headers(upstream, own)
        response = web.Response(status=status, reason=upstream.reason, body=data, headers=headers)
        self._observe(route, "ok" if ok else "upstream_error", sent, received)
        self._publish(exchange, received, status)
        self.metrics.overhead_seconds.observe((sent - started) + (self._clock() - received))
        return response

    async def _stream(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        route: Route,
        exchange: Exchange | None,
        own: dict[str, str],
        sent: float,
    ) -> web.StreamResponse:
        """Pass a stream on chunk by chunk; parse its events on the side for the record."""
        out = web.StreamResponse(
            status=upstream.status, reason=upstream.reason, headers=_response_headers(upstream, own)
        )
        ok = 200 <= upstream.status < 300
        outcome = "ok" if ok else "upstream_error"
        failure: tuple[Status, str] | None = None
        parser = SseParser() if exchange is not None else None
        try:
            await out.prepare(request)
        except (ConnectionError, aiohttp.ClientConnectionError):
            outcome, failure = "client_closed", ("error", "ClientDisconnected")
            parser = None
        while failure is None:
            try:
                chunk = await upstream.content.readany()
            except TimeoutError:
                outcome, failure = "timeout", ("timeout", "APITimeoutError")
                break
            except (aiohttp.ClientError, OSError):
                outcome, failure = "unreachable", ("error", "APIConnectionError")
                break
            if not chunk:
                break
            if parser is not None and exchange is not None:
                now = self._clock()
                for data in parser.feed(chunk):
                    exchange.chunk(data, now)
            try:
                await out.write(chunk)
            except (ConnectionError, aiohttp.ClientConnectionError):
                outcome, failure = "client_closed", ("error", "ClientDisconnected")
        ended = self._clock()
        if parser is not None and exchange is not None and failure is None:
            for data in parser.close():
                exchange.chunk(data, ended)
        if failure is None:
            try:
                await out.write_eof()
            except (ConnectionError, aiohttp.ClientConnectionError):
                outcome, failure = "client_closed", ("error", "ClientDisconnected")
        elif outcome != "client_closed" and request.transport is not None:
            # The upstream broke off: end the connection without the last chunk, so the client
            # sees a cut stream rather than a complete answer.
            request.transport.close()
        if self.guard is not None and exchange is not None and ok:
            self._count_guard(self.guard.check_streamed(exchange.response_text), exchange)
        self._observe(route, outcome, sent, ended)
        if failure is not None:
            status, kind = failure
            self._publish(exchange, ended, upstream.status, event_status=status, kind=kind)
        else:
            self._publish(exchange, ended, upstream.status)
        return out

    # -- answers of the proxy's own ----------------------------------------------------------

    def _killed(
        self, route: Route, model: str, exchange: Exchange | None, own: dict[str, str]
    ) -> web.Response:
        state = route.killed
        assert state is not None  # noqa: S101 - a killed route carries its switch
        detail = "no fallback upstream is configured"
        if route.fallback_killed is not None:
            stopped = route.fallback_killed
            detail = f"the fallback {stopped.model}/{stopped.deployment} is stopped too"
        message = (
            f"model {model!r} (deployment {self.config.deployment!r}) is stopped by the "
            f"llm-monitor kill switch: {state.reason or 'no reason given'}; {detail}"
        )
        body = error_body(
            message, "kill_switch_engaged", "kill_switch_engaged", model=state.model,
            deployment=state.deployment, reason=state.reason, engaged_at_ms=state.changed_at_ms,
            incident_id=state.incident_id,
        )  # fmt: skip
        now = self._clock()
        self.metrics.requests.labels("none", "killed").inc()
        if exchange is not None:
            exchange.attributes["kill_switch"] = "engaged"
        self._publish(exchange, now, 503, event_status="refused", kind="KillSwitchEngaged")
        return web.json_response(body, status=503, headers=own)

    def _blocked(
        self,
        verdict: Verdict,
        route: Route,
        exchange: Exchange,
        own: dict[str, str],
        received: float | None = None,
    ) -> web.Response:
        where = "request" if verdict.stage == "request" else "answer"
        message = f"the {where} was blocked by the llm-monitor guard ({verdict.detector})"
        body = error_body(
            message, "guard_blocked", "guard_blocked", detector=verdict.detector,
            stage=verdict.stage,
        )  # fmt: skip
        now = self._clock()
        upstream = route.upstream if received is not None else "none"
        self.metrics.requests.labels(upstream, "blocked").inc()
        exchange.upstream = upstream
        self._publish(exchange, now, 400, event_status="refused", kind="GuardBlocked")
        return web.json_response(body, status=400, headers=own)

    def _failed(
        self,
        route: Route,
        exchange: Exchange | None,
        own: dict[str, str],
        sent: float,
        status: int,
        outcome: str,
        kind: str,
    ) -> web.Response:
        now = self._clock()
        self._observe(route, outcome, sent, now)
        what = "did not answer in time" if status == 504 else "cannot be reached"
        message = f"the {route.upstream} upstream {what} (llm-monitor proxy)"
        body = error_body(message, "upstream_error", outcome, upstream=route.upstream)
        event_status: Status = "timeout" if status == 504 else "error"
        self._publish(exchange, now, status, event_status=event_status, kind=kind)
        return web.json_response(body, status=status, headers=own)

    # -- records -----------------------------------------------------------------------------

    def _observe(self, route: Route, outcome: str, sent: float, ended: float) -> None:
        self.metrics.requests.labels(route.upstream, outcome).inc()
        self.metrics.upstream_seconds.labels(route.upstream).observe(max(ended - sent, 0.0))

    def _count_guard(self, verdicts: tuple[Verdict, ...], exchange: Exchange) -> None:
        for v in verdicts:
            self.metrics.guard_actions.labels(v.detector, v.action, v.stage).inc()
            exchange.attributes[f"guard_{v.action}"] = _joined(
                exchange.attributes.get(f"guard_{v.action}"), v.detector
            )
            exchange.attributes[f"guard_{v.detector}_{v.stage}"] = v.detail[:256]

    def _publish(
        self,
        exchange: Exchange | None,
        ended: float,
        http_status: int,
        *,
        event_status: Status | None = None,
        kind: str | None = None,
    ) -> None:
        """Hand the call's event to the publisher; nothing here may fail the call."""
        if exchange is None:
            return
        try:
            ok = 200 <= http_status < 300
            status: Status = event_status or ("ok" if ok else "error")
            if kind is None and not ok:
                kind = error_type(http_status)
            exchange.attributes["http_status"] = str(http_status)
            event = exchange.event(
                ended=ended, status=status, model_version=self.config.model_version,
                app=self.config.app, route=self.config.route,
                capture_text=self.config.capture_text, error_type=kind,
            )  # fmt: skip
            self.publisher.publish_nowait(event)
        except Exception as exc:
            self.metrics.event_errors.inc()
            log.warning("proxy: could not publish a call's event: %r", exc)


def _joined(current: str | None, name: str) -> str:
    if not current:
        return name
    names = set(current.split(","))
    names.add(name)
    return ",".join(sorted(names))


def _response_headers(upstream: aiohttp.ClientResponse, own: dict[str, str]) -> CIMultiDict[str]:
    headers = CIMultiDict(
        (k, v) for k, v in upstream.headers.items() if k.lower() not in RESPONSE_DROPPED
    )
    headers.update(own)
    return headers


def kafka_proxy(
    config: ProxyConfig,
    bootstrap_servers: str,
    *,
    events_topic: str = "llm.events",
    policy_topic: str = "llm.policy",
    guard: Guard | None = None,
    follow_kill_switch: bool = True,
    max_buffer: int = 10_000,
    kafka_options: dict[str, Any] | None = None,
    registry: CollectorRegistry | None = None,
    close_timeout_s: float = 5.0,
) -> ProxyServer:
    """A proxy that publishes to ``events_topic`` through an ``AsyncPublisher`` and follows the
    kill switch on ``policy_topic`` (or, with ``follow_kill_switch=False``, knows none)."""
    from monitor.client import AsyncPublisher
    from monitor.proxy.killswitch import KillSwitchFollower, StaticKillSwitches

    registry = registry if registry is not None else CollectorRegistry()
    metrics = proxy_metrics(registry)
    publisher = AsyncPublisher(
        bootstrap_servers, topic=events_topic, max_buffer=max_buffer, registry=registry,
        options=kafka_options,
    )  # fmt: skip
    switches: KillSwitchView
    if follow_kill_switch:
        switches = KillSwitchFollower(
            bootstrap_servers, topic=policy_topic, options=kafka_options, metrics=metrics
        )
    else:
        switches = StaticKillSwitches()
    return ProxyServer(
        config, publisher=publisher, switches=switches, guard=guard, registry=registry,
        metrics=metrics, close_timeout_s=close_timeout_s,
    )  # fmt: skip
