"""The policy role's HTTP surfaces, served on the worker's metrics port.

- ``/killswitch`` (GET state, POST ``/engage`` or ``/release``): bearer token, compared in
  constant time; every call, allowed or not, is audited and counted. A change is sent to the
  control topic, keyed by model, so the worker owning the model applies it; the call waits
  for that (202 when another worker owns it).
- ``/flagger/gate``: Flagger's webhook contract, non-2xx while a rollback rule fires or the
  kill switch is engaged.
- ``/policy/status``: dry-run flag, active rollbacks, kill switches.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import faust
import msgspec
from faust.web import Request, Response, View

from monitor.policy.records import AuditEntry, PolicyRecords
from streams.policy import ControlCommand, PolicyRole

log = logging.getLogger(__name__)

APPLY_WAIT_S = 5.0
_msgpack = msgspec.msgpack.Encoder()


@dataclass(frozen=True)
class KillSwitchApi:
    """Authorisation and auditing of the kill-switch API, over the policy role it drives."""

    role: PolicyRole
    token: bytes

    def refusal(self, request: Request) -> str | None:
        """None when the call may proceed, else its outcome: disabled or unauthorized."""
        if not self.token:
            return "disabled"
        given = request.headers.get("Authorization", "")
        expected = b"Bearer " + self.token
        return None if hmac.compare_digest(given.encode(), expected) else "unauthorized"

    async def audit(self, request: Request, target: str, outcome: str, detail: str = "") -> None:
        """Count the call and record it (never the token) for the audit_log table."""
        self.role.metrics.killswitch_api_calls.labels(outcome).inc()
        entry = AuditEntry(
            at_ms=time.time_ns() // 1_000_000, remote=str(getattr(request, "remote", "") or ""),
            method=request.method, path=str(getattr(request, "path", "")), target=target,
            outcome=outcome, detail=detail[:500],
        )  # fmt: skip
        log.info("kill-switch API %s %s %s: %s", entry.method, entry.path, target, outcome)
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
            {"error": "kill-switch API disabled: set LLM_MONITOR_POLICY__API_TOKEN"}, status=503
        )
    return view.json({"error": "missing or wrong bearer token"}, status=401)


def add_policy_api(app: faust.App, role: PolicyRole, token: bytes) -> None:
    """Register the kill-switch API, the Flagger gate and the status page on ``app``."""
    add_killswitch_views(app, KillSwitchApi(role, token))
    add_flagger_gate(app, role)
    add_status_view(app, role)


def add_killswitch_views(app: faust.App, api: KillSwitchApi) -> None:
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
            try:
                body = json.loads(await request.read() or b"{}")
                target = f"{body['model']}/{body['deployment']}"
                reason = str(body.get("reason") or f"{verb} via API")
            except (ValueError, KeyError, TypeError):
                await api.audit(request, "?", refusal or "invalid", "body needs model, deployment")
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


def add_flagger_gate(app: faust.App, role: PolicyRole) -> None:
    engine = role.engine

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


def add_status_view(app: faust.App, role: PolicyRole) -> None:
    engine = role.engine

    @app.page("/policy/status")
    class PolicyStatus(View):
        async def get(self, request: Request) -> Response:
            return self.json({
                "dry_run": role.policy.dry_run,
                "rollback_active": [
                    {"model": m, "model_version": v, "deployment": d, "active": a}
                    for (m, v, d), a in engine.rollback_active().items()
                ],
                "killswitch": [
                    {"model": s.model, "deployment": s.deployment, "engaged": s.engaged}
                    for s in engine.states()
                ],
            })  # fmt: skip
