"""The ``policy`` role: decisions from window snapshots, actions to webhooks, the kill switch.

One agent reads ``llm.windows`` and ``llm.control`` (both keyed by model, so one worker owns
every series and the kill switches of a model) and runs ``PolicyEngine``; the kill-switch
states live in a changelog-backed table and survive restarts. Decisions, kill-switch changes,
incidents and API audit entries go to ``llm.policy`` for the sink; acting decisions go to
``llm.actions``, where the dispatch agent delivers them (offsets commit after delivery or
the deadline). HTTP: ``/killswitch`` (bearer token, constant-time compare, every call
audited), ``/flagger/gate`` (Flagger's webhook contract) and ``/policy/status``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import Iterator, MutableMapping
from typing import Any

import faust
import msgspec
from faust.web import Request, Response, View

from monitor.config import Settings
from monitor.errors import ConfigError
from monitor.metrics import Metrics
from monitor.policy.config import Policy, load_policy
from monitor.policy.dispatch import Dispatcher
from monitor.policy.engine import EngineOutput, PolicyEngine
from monitor.policy.records import ActionAttempt, ActionRequest, AuditEntry, PolicyRecords
from monitor.windows.stats import WindowStats

log = logging.getLogger(__name__)

GAUGE_INTERVAL_S = 1.0
APPLY_WAIT_S = 5.0

_window = msgspec.msgpack.Decoder(WindowStats)
_action = msgspec.json.Decoder(ActionRequest)
_msgpack = msgspec.msgpack.Encoder()


class ControlCommand(msgspec.Struct, kw_only=True):
    """An engage or release request, routed by model to the worker that owns its switches."""

    command_id: str
    engage: bool
    model: str
    deployment: str
    reason: str
    actor: str


_command = msgspec.json.Decoder(ControlCommand)


def _secret(value: Any) -> bytes:
    return value.get_secret_value().encode() if value is not None else b""


def check_policy(settings: Settings) -> Policy:
    """Load the policy and refuse webhooks without a signing secret."""
    policy = load_policy(settings.policy.file)
    hooks = policy.webhooks
    named = hooks.rollback or hooks.kill or hooks.resume or hooks.promote
    if named and settings.policy.webhook_secret is None:
        raise ConfigError(
            "policy.webhook_secret is not set but the policy names webhooks: they must be "
            "signed. Fix: set LLM_MONITOR_POLICY__WEBHOOK_SECRET (e.g. `openssl rand -hex 32`) "
            "and give receivers the same secret."
        )
    return policy


def add_policy_role(
    app: faust.App, settings: Settings, metrics: Metrics, topics: dict[str, Any]
) -> None:
    k = settings.kafka
    policy = check_policy(settings)
    table = app.Table(
        "killswitch", default=None, key_type=str, value_type=str, partitions=k.partitions
    )
    engine = PolicyEngine(policy, _Table(table))
    secret = _secret(settings.policy.webhook_secret)
    dispatcher = Dispatcher(policy.webhooks, secret) if secret else None
    records_out, actions_out, control_out = (
        topics[k.policy_topic], topics[k.actions_topic], topics[k.control_topic]
    )  # fmt: skip
    applied: dict[str, asyncio.Future[dict[str, Any]]] = {}
    inbound = app.topic(
        k.windows_topic, k.control_topic, key_type=bytes, value_type=bytes,
        key_serializer="raw", value_serializer="raw",
    )  # fmt: skip

    async def publish(out: EngineOutput, audit: list[AuditEntry] | None = None) -> None:
        sends = []
        records = PolicyRecords(
            decisions=out.decisions, killswitch=out.killswitch, incidents=out.incidents,
            audit=audit or [],
        )  # fmt: skip
        if records:
            sends.append(await records_out.send(value=_msgpack.encode(records)))
        for action in out.actions:
            metrics.actions.labels(action.action).inc()
            sends.append(
                await actions_out.send(key=action.model.encode(), value=msgspec.json.encode(action))
            )
        for d in out.decisions:
            series = metrics.series(d.model, d.model_version, d.deployment)
            metrics.policy_decisions.labels(*series, d.rule, d.outcome).inc()
        if sends:
            await asyncio.gather(*sends)

    @app.agent(inbound, name="policy")
    async def decide(stream: Any) -> None:
        async for event in stream.events():
            if event.message.topic == k.windows_topic:
                await publish(engine.observe(_window.decode(event.value)))
                continue
            command = _command.decode(event.value)
            out = engine.set_kill(
                command.model, command.deployment, engage=command.engage,
                reason=command.reason, actor=command.actor,
            )  # fmt: skip
            await publish(out)
            waiter = applied.pop(command.command_id, None)
            if waiter is not None and not waiter.done():
                state = engine.kill_state(command.model, command.deployment)
                waiter.set_result(msgspec.to_builtins(state) if state else {})

    @app.agent(actions_out, name="dispatch")
    async def dispatch(stream: Any) -> None:
        async for event in stream.events():
            request = _action.decode(event.value)
            if dispatcher is None or not dispatcher.urls(request.action):
                log.warning("no webhook configured for %s %s", request.action, request.model)
                continue

            async def record(attempt: ActionAttempt) -> None:
                metrics.webhook_attempts.labels(attempt.action, attempt.outcome).inc()
                await records_out.send(value=_msgpack.encode(PolicyRecords(attempts=[attempt])))

            await dispatcher.deliver(request, record)

    @app.timer(interval=GAUGE_INTERVAL_S)  # type: ignore[untyped-decorator]
    async def export_policy_state() -> None:
        for state in engine.states():
            metrics.killswitch_engaged.labels(
                metrics.guard("model", state.model), metrics.guard("deployment", state.deployment)
            ).set(1 if state.engaged else 0)
        for (model, version, deployment), active in engine.rollback_active().items():
            series = metrics.series(model, version, deployment)
            metrics.policy_rollback_active.labels(*series).set(1 if active else 0)
            if deployment in policy.canary_deployments:
                stage = engine.stage((model, version, deployment))
                metrics.rollout_stage.labels(*series).set(stage)
        for (model, version, deployment), e in engine.latest():
            series = metrics.series(model, version, deployment)
            rule = metrics.guard("rule", e.rule)
            for bound, value in (("value", e.bound.value), ("low", e.bound.low),
                                 ("high", e.bound.high), ("threshold", e.threshold),
                                 ("n", e.n)):  # fmt: skip
                metrics.policy_rule.labels(*series, rule, bound).set(value)

    token = _secret(settings.policy.api_token)

    async def audited(request: Request, target: str, outcome: str, detail: str = "") -> None:
        metrics.killswitch_api_calls.labels(outcome).inc()
        entry = AuditEntry(
            at_ms=time.time_ns() // 1_000_000, remote=str(getattr(request, "remote", "") or ""),
            method=request.method, path=str(getattr(request, "path", "")), target=target,
            outcome=outcome,
            detail=detail[:500],
        )  # fmt: skip
        log.info("kill-switch API %s %s %s: %s", entry.method, entry.path, target, outcome)
        await records_out.send(value=_msgpack.encode(PolicyRecords(audit=[entry])))

    def authorised(request: Request) -> str | None:
        """None when allowed, else the refusal outcome."""
        if not token:
            return "disabled"
        given = request.headers.get("Authorization", "")
        expected = b"Bearer " + token
        return None if hmac.compare_digest(given.encode(), expected) else "unauthorized"

    def refuse(view: View, outcome: str) -> Response:
        if outcome == "disabled":
            return view.json(
                {"error": "kill-switch API disabled: set LLM_MONITOR_POLICY__API_TOKEN"},
                status=503,
            )
        return view.json({"error": "missing or wrong bearer token"}, status=401)

    @app.page("/killswitch")
    class KillSwitchStatus(View):
        async def get(self, request: Request) -> Response:
            refusal = authorised(request)
            await audited(request, "*", refusal or "ok")
            if refusal:
                return refuse(self, refusal)
            return self.json({"states": [msgspec.to_builtins(s) for s in engine.states()]})

    @app.page("/killswitch/{verb}")
    class KillSwitchChange(View):
        async def post(self, request: Request, verb: str) -> Response:
            refusal = authorised(request)
            try:
                body = json.loads(await request.read() or b"{}")
                model, deployment = str(body["model"]), str(body["deployment"])
                reason = str(body.get("reason") or f"{verb} via API")
            except (ValueError, KeyError, TypeError):
                await audited(request, "?", refusal or "invalid", "body needs model, deployment")
                if refusal:
                    return refuse(self, refusal)
                return self.json({"error": 'body: {"model", "deployment", "reason"}'}, status=400)
            target = f"{model}/{deployment}"
            if refusal or verb not in ("engage", "release"):
                await audited(request, target, refusal or "invalid", f"verb {verb!r}")
                if refusal:
                    return refuse(self, refusal)
                return self.json({"error": "use /killswitch/engage or /release"}, status=404)
            command = ControlCommand(
                command_id=uuid.uuid4().hex, engage=verb == "engage", model=model,
                deployment=deployment, reason=reason, actor=str(body.get("actor") or "api"),
            )  # fmt: skip
            waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            applied[command.command_id] = waiter
            await audited(request, target, "ok", reason)
            await control_out.send(key=model.encode(), value=msgspec.json.encode(command))
            try:
                state = await asyncio.wait_for(waiter, APPLY_WAIT_S)
            except TimeoutError:  # owned by another worker: it applies the command there
                applied.pop(command.command_id, None)
                return self.json({"status": "accepted", "command_id": command.command_id},
                                 status=202)  # fmt: skip
            return self.json({"status": "applied", "state": state})

    @app.page("/flagger/gate")
    class FlaggerGate(View):
        """Flagger webhook: 200 lets the canary proceed; non-2xx halts and rolls it back."""

        async def post(self, request: Request) -> Response:
            try:
                body = json.loads(await request.read() or b"{}")
            except ValueError:
                return self.json({"error": "body must be JSON"}, status=400)
            meta = body.get("metadata") or {}
            model = str(meta.get("model") or body.get("name") or "")
            deployment = str(meta.get("deployment") or "canary")
            reasons = [
                f"rollback rule firing for {m}/{v}/{d}"
                for (m, v, d), active in engine.rollback_active().items()
                if active and m == model and d == deployment
            ]
            if engine.engaged(model, deployment):
                reasons.append(f"kill switch engaged for {model}/{deployment}")
            if reasons:
                return self.json({"healthy": False, "reasons": reasons}, status=503)
            return self.json({"healthy": True, "model": model, "deployment": deployment})

    @app.page("/policy/status")
    class PolicyStatus(View):
        async def get(self, request: Request) -> Response:
            return self.json({
                "dry_run": policy.dry_run,
                "rollback_active": [
                    {"model": m, "model_version": v, "deployment": d, "active": a}
                    for (m, v, d), a in engine.rollback_active().items()
                ],
                "killswitch": [
                    {"model": s.model, "deployment": s.deployment, "engaged": s.engaged}
                    for s in engine.states()
                ],
            })  # fmt: skip


class _Table(MutableMapping[str, str]):
    """A faust table as a mapping of JSON text, the shape the engine keeps its switches in."""

    def __init__(self, table: Any) -> None:
        self._table = table

    def __getitem__(self, key: str) -> str:
        value = self._table[key]
        if value is None:
            raise KeyError(key)
        return str(value)

    def __setitem__(self, key: str, value: str) -> None:
        self._table[key] = value

    def __delitem__(self, key: str) -> None:
        del self._table[key]

    def __iter__(self) -> Iterator[str]:
        return iter([key for key, value in list(self._table.items()) if value is not None])

    def __len__(self) -> int:
        return sum(1 for _ in self)
