"""The policy role's HTTP surfaces, served on the worker's metrics port.

Every call to any of them, allowed or not, is audited (``audit_log``, never a token) and
counted (``llm_monitor_killswitch_api_calls_total{outcome}``); tokens are compared in constant
time; no API token configured → each answers 503. A header or body no client of ours would
send is refused like any other bad call (401 or 400), never a 500.

- ``/killswitch`` (GET state, POST ``/engage`` or ``/release``): bearer API token. A change is
  sent to the control topic, keyed by model, so the worker owning the model applies it; the
  call waits for that (202 when another worker owns it).
- ``/policy/status``: dry-run flag, active rollbacks, kill switches, open incidents; bearer
  API token.
- ``/flagger/gate``: Flagger's webhook contract, non-2xx while a rollback rule fires or the
  kill switch is engaged. Flagger cannot send headers, so besides the bearer API token it
  takes the gate token (``llm-monitor policy gate-token``, derived from the API token and good
  for nothing else) as a bearer token or as ``metadata.token`` in the webhook body.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import faust
import msgspec
from aiohttp.web_exceptions import HTTPRequestEntityTooLarge
from faust.web import Request, Response, View

from monitor.policy.records import AuditEntry, PolicyRecords
from monitor.policy.signing import gate_token
from streams.policy import ControlCommand, PolicyRole

log = logging.getLogger(__name__)

APPLY_WAIT_S = 5.0
_msgpack = msgspec.msgpack.Encoder()


def _authorization(request: Request) -> bytes | None:
    """The Authorization header as the bytes that were sent (aiohttp decodes header bytes as
    UTF-8 with surrogateescape), or None when there is none."""
    value = request.headers.get("Authorization")
    if value is None:
        return None
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeError:  # not from a byte string: it cannot be a token we issued
        return b""


def _ascii(value: object) -> bytes | None:
    """A token sent in a JSON body, as bytes; None unless it is an ASCII string."""
    return value.encode() if isinstance(value, str) and value.isascii() else None


def _same(given: bytes | None, expected: bytes) -> bool:
    return given is not None and hmac.compare_digest(given, expected)


async def read_json(request: Request) -> tuple[Any, str]:
    """The JSON body (``{}`` when empty) and "", or None and why it could not be read."""
    try:
        raw = await request.read()
    except HTTPRequestEntityTooLarge:
        return None, "body too large"
    try:
        return json.loads(raw or b"{}"), ""
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested too deep
        return None, "body is not JSON"


@dataclass(frozen=True)
class PolicyApi:
    """Authorisation and auditing of the policy role's HTTP surfaces."""

    role: PolicyRole
    token: bytes
    gate: bytes = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "gate", gate_token(self.token) if self.token else b"")

    def refusal(self, request: Request) -> str | None:
        """None when the call carries the API token, else its outcome: disabled or unauthorized."""
        if not self.token:
            return "disabled"
        ok = _same(_authorization(request), b"Bearer " + self.token)
        return None if ok else "unauthorized"

    def gate_refusal(self, request: Request, metadata_token: object) -> str | None:
        """Like ``refusal``, but the gate token is good too, as bearer or in the metadata."""
        if not self.token:
            return "disabled"
        header = _authorization(request)
        in_body = _ascii(metadata_token)
        ok = (
            _same(header, b"Bearer " + self.token)
            or _same(header, b"Bearer " + self.gate)
            or _same(in_body, self.gate)
        )
        return None if ok else "unauthorized"

    async def audit(self, request: Request, target: str, outcome: str, detail: str = "") -> None:
        """Count the call and record it (never a token) for the audit_log table."""
        self.role.metrics.killswitch_api_calls.labels(outcome).inc()
        entry = AuditEntry(
            at_ms=time.time_ns() // 1_000_000, remote=str(getattr(request, "remote", "") or ""),
            method=request.method, path=str(getattr(request, "path", "")), target=target[:200],
            outcome=outcome, detail=detail[:500],
        )  # fmt: skip
        log.info("policy API %s %s %s: %s", entry.method, entry.path, entry.target, outcome)
        records = PolicyRecords(audit=[entry])
        await self.role.records_out.send(value=_msgpack.encode(records))

    async def change(
        self, verb: str, body: dict[str, Any], reason: str
    ) -> tuple[dict[str, Any], int]:
        """Send the command to its owner and wait for it to be applied: (answer, status)."""
        model, deployment = str(body["model"]), str(body["deployment"])
        command = ControlCommand(
            command_id=uuid.uuid4().hex, engage=verb == "engage", model=model,
            deployment=deployment, reason=reason, actor=str(body.get("actor") or "api"),
        )  # fmt: skip
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.role.applied[command.command_id] = waiter
        value = msgspec.json.encode(command)
        await self.role.control_out.send(key=model.encode(), value=value)
        try:
            state = await asyncio.wait_for(waiter, APPLY_WAIT_S)
        except TimeoutError:  # owned by another worker: it applies the command there
            self.role.applied.pop(command.command_id, None)
            return {"status": "accepted", "command_id": command.command_id}, 202
        return {"status": "applied", "state": state}, 200


def refuse(view: View, outcome: str) -> Response:
    """503 while no token is configured, else 401."""
    if outcome == "disabled":
        return view.json(
            {"error": "policy API disabled: set LLM_MONITOR_POLICY__API_TOKEN"}, status=503
        )
    return view.json({"error": "missing or wrong bearer token"}, status=401)


def add_policy_api(app: faust.App, role: PolicyRole, token: bytes) -> None:
    """Register the kill-switch API, the Flagger gate and the status page on ``app``."""
    api = PolicyApi(role, token)
    add_killswitch_views(app, api)
    add_flagger_gate(app, api)
    add_status_view(app, api)


def add_killswitch_views(app: faust.App, api: PolicyApi) -> None:
    engine = api.role.engine

    @app.page("/killswitch")
    class KillSwitchStatus(View):
        async def get(self, request: Request) -> Response:
            refusal = api.refusal(request)
            await api.audit(request, "*", refusal or "ok")
            if refusal:
                return refuse(self, refusal)
            return self.json({"states": [msgspec.to_builtins(s) for s in engine.states()]})

    @app.page("/killswitch/{verb}")
    class KillSwitchChange(View):
        async def post(self, request: Request, verb: str) -> Response:
            refusal = api.refusal(request)
            body, problem = await read_json(request)
            try:
                target = f"{body['model']}/{body['deployment']}"
                reason = str(body.get("reason") or f"{verb} via API")
            except (KeyError, TypeError):
                detail = problem or "body needs model, deployment"
                await api.audit(request, "?", refusal or "invalid", detail)
                if refusal:
                    return refuse(self, refusal)
                return self.json({"error": 'body: {"model", "deployment", "reason"}'}, status=400)
            if refusal or verb not in ("engage", "release"):
                await api.audit(request, target, refusal or "invalid", f"verb {verb!r}")
                if refusal:
                    return refuse(self, refusal)
                return self.json({"error": "use /killswitch/engage or /release"}, status=404)
            await api.audit(request, target, "ok", reason)
            answer, status = await api.change(verb, body, reason)
            return self.json(answer, status=status)


def gate_answer(api: PolicyApi, model: str, deployment: str) -> tuple[dict[str, Any], int]:
    """200 while the deployment is healthy; 503 with the reasons while a rollback rule fires
    for it or its kill switch is engaged."""
    engine = api.role.engine
    reasons = [
        f"rollback rule firing for {m}/{v}/{d}"
        for (m, v, d), active in engine.rollback_active().items()
        if active and m == model and d == deployment
    ]
    if engine.engaged(model, deployment):
        reasons.append(f"kill switch engaged for {model}/{deployment}")
    if reasons:
        return {"healthy": False, "reasons": reasons}, 503
    return {"healthy": True, "model": model, "deployment": deployment}, 200


def add_flagger_gate(app: faust.App, api: PolicyApi) -> None:
    @app.page("/flagger/gate")
    class FlaggerGate(View):
        """Flagger webhook: 200 lets the canary proceed; non-2xx halts and rolls it back."""

        async def post(self, request: Request) -> Response:
            body, problem = await read_json(request)
            if not isinstance(body, dict):
                body, problem = {}, problem or "body must be a JSON object"
            meta = body.get("metadata")
            if not isinstance(meta, dict):
                meta = {}
            refusal = api.gate_refusal(request, meta.get("token"))
            model = str(meta.get("model") or body.get("name") or "")
            deployment = str(meta.get("deployment") or "canary")
            target = f"{model}/{deployment}"
            await api.audit(request, target, refusal or ("invalid" if problem else "ok"), problem)
            if refusal:
                return refuse(self, refusal)
            if problem:
                return self.json({"error": problem}, status=400)
            answer, status = gate_answer(api, model, deployment)
            return self.json(answer, status=status)


def add_status_view(app: faust.App, api: PolicyApi) -> None:
    role = api.role

    @app.page("/policy/status")
    class PolicyStatus(View):
        async def get(self, request: Request) -> Response:
            refusal = api.refusal(request)
            await api.audit(request, "*", refusal or "ok")
            if refusal:
                return refuse(self, refusal)
            return self.json({
                "dry_run": role.policy.dry_run,
                "rollback_active": [
                    {"model": m, "model_version": v, "deployment": d, "active": a}
                    for (m, v, d), a in role.engine.rollback_active().items()
                ],
                "killswitch": [
                    {"model": s.model, "deployment": s.deployment, "engaged": s.engaged}
                    for s in role.engine.states()
                ],
                "incidents": [
                    {"incident_id": i.incident_id, "model": i.model, "deployment": i.deployment,
                     "action": i.action, "rules": i.rules, "opened_at_ms": i.opened_at_ms}
                    for i in role.engine.open_incidents()
                ],
                "promotion_gates": [
                    msgspec.to_builtins(g) for g in role.engine.promotion_gates()
                ],
            })  # fmt: skip
