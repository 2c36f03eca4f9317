"""The ``policy`` role: decisions from window snapshots, actions to webhooks, the kill switch.

One agent reads ``llm.windows``, ``llm.control`` and ``llm.judge`` (all keyed by model, so one
worker owns every series and the kill switches of a model) and runs ``PolicyEngine``; the
judge topic carries the LLM judge's closed pairwise windows, which set each canary version's
promotion gate and feed ``rollback.judge_win_rate``. The kill-switch states, the incidents
(one per model/deployment episode, with their rules' firing state), the budgets' periods and
the promotion gates live in a changelog-backed table and survive restarts. With
``policy.alertmanager.urls`` set, each incident is pushed to Alertmanager as it changes
(monitor/policy/alertmanager.py) and re-sent while it fires. Decisions, kill-switch changes,
incidents and API audit entries go to ``llm.policy`` for the sink; acting decisions go to
``llm.actions``, where the dispatch agent delivers them (offsets commit after delivery or
the deadline). The HTTP surfaces (kill-switch API, Flagger gate, status) are in
streams/policy_api.py.

A record either agent cannot decode (or the engine cannot process) is dead-lettered with its
topic/partition/offset and the reason, and the agent goes on with the next: one bad record
never stops the policy.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final

import faust
import msgspec
from pydantic import SecretStr

from monitor.config import Settings
from monitor.errors import ConfigError
from monitor.judge.evaluator import pairwise_window_of
from monitor.judge.pairwise import PairwiseWindow
from monitor.metrics import REASON_UNDECODABLE, REASON_UNPROCESSABLE, Metrics
from monitor.policy.alertmanager import AlertmanagerPusher
from monitor.policy.checks import policy_warnings
from monitor.policy.config import Policy, load_policy
from monitor.policy.dispatch import Dispatcher
from monitor.policy.engine import EngineOutput, PolicyEngine
from monitor.policy.gates import GATE_VALUES
from monitor.policy.grouping import latest_revisions
from monitor.policy.records import ActionAttempt, ActionRequest, AuditEntry, PolicyRecords
from monitor.scoring.rows import ScoredBatch
from monitor.windows.stats import WindowStats
from streams.codecs import with_table_codec
from streams.kafka import deliver, raw_message, send_internal_dead_letter

log = logging.getLogger(__name__)

GAUGE_INTERVAL_S = 1.0
# The kill switches and the incidents share one table (and its changelog topic): kill switches
# under "<model>/<deployment>", incidents under this prefix and the same.
INCIDENT_PREFIX = "incident|"
BUDGET_PREFIX = "budget|"  # the budgets' periods (monitor/policy/budgets.py)
GATE_PREFIX = "gate|"  # the promotion gates (monitor/policy/gates.py)
STATE_PREFIXES: Final = (INCIDENT_PREFIX, BUDGET_PREFIX, GATE_PREFIX)
# Rules the engine judges in milliseconds; their gauges are exported in base units.
MILLISECOND_RULES = frozenset({"rollback.p99_latency"})
MS_TO_SECONDS = 0.001

_window = msgspec.msgpack.Decoder(WindowStats)
_action = msgspec.json.Decoder(ActionRequest)
_scored = msgspec.msgpack.Decoder(ScoredBatch)
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


@dataclass(frozen=True)
class JudgeWindows:
    """A judge topic record: closed pairwise windows, each with its canary's deployment."""

    windows: list[tuple[PairwiseWindow, str]]


def judge_windows(value: bytes) -> JudgeWindows:
    """The windows a judge topic record carries. Raises ``msgspec.DecodeError`` when it does
    not decode, ``ValueError`` when one of its findings is not a pairwise window result."""
    batch = _scored.decode(value)
    windows = []
    for row in batch.findings:
        window = pairwise_window_of(row)
        if window is None:
            f = row.finding
            raise ValueError(
                f"finding {f.request_id!r} ({f.detector}, {f.category}) is not a judge "
                "pairwise window result"
            )
        windows.append((window, row.deployment))
    return JudgeWindows(windows)


def _secret(value: SecretStr | None) -> bytes:
    return value.get_secret_value().encode() if value is not None else b""


def api_token(settings: Settings) -> bytes:
    """The kill-switch API's bearer token; empty bytes disable the API."""
    return _secret(settings.policy.api_token)


def check_policy(settings: Settings) -> Policy:
    """Load the policy and refuse webhooks without a signing secret."""
    policy = load_policy(settings.policy.file)
    hooks = policy.webhooks
    named = hooks.rollback or hooks.kill or hooks.resume or hooks.promote or hooks.budget
    if named and settings.policy.webhook_secret is None:
        raise ConfigError(
            "policy.webhook_secret is not set but the policy names webhooks: they must be "
            "signed. Fix: set LLM_MONITOR_POLICY__WEBHOOK_SECRET (e.g. `openssl rand -hex 32`) "
            "and give receivers the same secret."
        )
    for warning in policy_warnings(policy, settings):
        log.warning("policy: %s", warning)
    return policy


@dataclass
class PolicyRole:
    """What the policy agents and the HTTP API share: the engine and the topics it feeds."""

    policy: Policy
    engine: PolicyEngine
    metrics: Metrics
    records_out: Any
    actions_out: Any
    control_out: Any
    # API calls waiting for the agent to apply their command, by command id.
    applied: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    alerts: AlertmanagerPusher | None = None

    async def publish(self, out: EngineOutput, audit: list[AuditEntry] | None = None) -> None:
        """Incidents to Alertmanager (queued at once, never waited for), records to the policy
        topic, actions to the actions topic; waits for the acks."""
        if self.alerts is not None and out.incidents:
            self.alerts.update(out.incidents)
        sends = []
        records = PolicyRecords(
            decisions=out.decisions, killswitch=out.killswitch, incidents=out.incidents,
            audit=audit or [],
        )  # fmt: skip
        if records:
            sends.append(await self.records_out.send(value=_msgpack.encode(records)))
        for action in out.actions:
            self.metrics.actions.labels(action.action).inc()
            sends.append(await self.actions_out.send(
                key=action.model.encode(), value=msgspec.json.encode(action)
            ))  # fmt: skip
        for d in out.decisions:
            series = self.metrics.series(d.model, d.model_version, d.deployment)
            self.metrics.policy_decisions.labels(*series, d.rule, d.outcome).inc()
        if sends:
            await asyncio.gather(*sends)

    def decide_judge(self, item: JudgeWindows) -> EngineOutput:
        """The engine's gates and ``rollback.judge_win_rate`` verdicts on ``item``'s windows."""
        out = EngineOutput()
        for window, deployment in item.windows:
            out.extend(self.engine.observe_judge(window, deployment))
        out.incidents = latest_revisions(out.incidents)
        return out

    def decide_kill(self, command: ControlCommand) -> EngineOutput:
        """The engine's engage or release for ``command`` (state changed, nothing published)."""
        return self.engine.set_kill(
            command.model, command.deployment, engage=command.engage,
            reason=command.reason, actor=command.actor,
        )  # fmt: skip

    def answer(self, command: ControlCommand) -> None:
        """Answer the API call waiting for ``command``, if any, with the switch's state."""
        waiter = self.applied.pop(command.command_id, None)
        if waiter is not None and not waiter.done():
            state = self.engine.kill_state(command.model, command.deployment)
            waiter.set_result(msgspec.to_builtins(state) if state else {})


def add_policy_role(
    app: faust.App, settings: Settings, metrics: Metrics, topics: dict[str, Any]
) -> PolicyRole:
    """The decide and dispatch agents and the state gauges; returns the role for its API."""
    k = settings.kafka
    policy = check_policy(settings)
    table = app.Table(
        "killswitch", default=None, key_type=str, value_type=str, partitions=k.partitions
    )
    with_table_codec(table, metrics.changelog_skipped.labels("killswitch").inc)
    engine = PolicyEngine(
        policy, _Table(table), incidents=_Table(table, INCIDENT_PREFIX),
        budgets=_Table(table, BUDGET_PREFIX), gates=_Table(table, GATE_PREFIX),
    )  # fmt: skip
    role = PolicyRole(
        policy, engine, metrics,
        records_out=topics[k.policy_topic], actions_out=topics[k.actions_topic],
        control_out=topics[k.control_topic],
    )  # fmt: skip
    am = settings.policy.alertmanager
    if am.urls:
        role.alerts = AlertmanagerPusher(
            am, on_outcome=lambda outcome: metrics.alertmanager_pushes.labels(outcome).inc()
        )
    secret = _secret(settings.policy.webhook_secret)
    dispatcher = Dispatcher(policy.webhooks, secret) if secret else None
    inbound = app.topic(
        k.windows_topic, k.control_topic, k.judge_topic, key_type=bytes, value_type=bytes,
        key_serializer="raw", value_serializer="raw",
    )  # fmt: skip
    refuse = partial(_refuse, topics[k.dlq_topic], metrics)

    def decode(topic: str, value: bytes) -> WindowStats | ControlCommand | JudgeWindows:
        if topic == k.windows_topic:
            return _window.decode(value)
        if topic == k.judge_topic:
            return judge_windows(value)
        return _command.decode(value)

    @app.agent(inbound, name="policy")
    async def decide(stream: Any) -> None:
        async for event in stream.events():
            try:
                item = decode(event.message.topic, event.value)
            except msgspec.DecodeError as exc:
                await refuse(event, REASON_UNDECODABLE, exc)
                continue
            except ValueError as exc:  # decodes, but holds something other than windows
                await refuse(event, REASON_UNPROCESSABLE, exc)
                continue
            try:  # the engine is pure: a failure here is this record's, not the cluster's
                if isinstance(item, WindowStats):
                    out = role.engine.observe(item)
                elif isinstance(item, JudgeWindows):
                    out = role.decide_judge(item)
                else:
                    out = role.decide_kill(item)
            except Exception as exc:
                log.exception("policy: the engine cannot process a %s record", event.message.topic)
                await refuse(event, REASON_UNPROCESSABLE, exc)
                continue
            await role.publish(out)
            if isinstance(item, ControlCommand):
                role.answer(item)

    @app.agent(role.actions_out, name="dispatch")
    async def dispatch(stream: Any) -> None:
        async for event in stream.events():
            try:
                request = _action.decode(event.value)
            except msgspec.DecodeError as exc:
                await refuse(event, REASON_UNDECODABLE, exc)
                continue
            if dispatcher is None or not dispatcher.urls(request.action):
                log.warning("no webhook configured for %s %s", request.action, request.model)
                continue

            async def record(attempt: ActionAttempt) -> None:
                metrics.webhook_attempts.labels(attempt.action, attempt.outcome).inc()
                records = PolicyRecords(attempts=[attempt])
                await role.records_out.send(value=_msgpack.encode(records))

            await dispatcher.deliver(request, record)

    for topic in (k.windows_topic, k.control_topic, k.judge_topic, k.actions_topic):
        for reason in (REASON_UNDECODABLE, REASON_UNPROCESSABLE):
            metrics.internal_dead_letters.labels(topic, reason)  # zeros the alert sees

    @app.timer(interval=GAUGE_INTERVAL_S)  # type: ignore[untyped-decorator]
    async def export_state() -> None:
        export_policy_state(role.engine, policy, metrics)

    if role.alerts is not None:
        pusher = role.alerts

        @app.timer(interval=am.resend_interval_s)  # type: ignore[untyped-decorator]
        async def resend_alerts() -> None:  # firing alerts must not reach their endsAt
            pusher.update(role.engine.open_incidents())

    return role


async def _refuse(dlq: Any, metrics: Metrics, event: Any, reason: str, exc: Exception) -> None:
    """Dead-letter a record the role cannot use, so its agent goes on with the next."""
    message = raw_message(event)
    log.warning(
        "policy: dead-lettering %s[%d]@%d (%s): %s",
        message.topic, message.partition, message.offset, reason, exc,
    )  # fmt: skip
    error = f"{type(exc).__name__}: {exc}"
    await deliver([await send_internal_dead_letter(dlq, message, reason, error, metrics)])


def export_policy_state(engine: PolicyEngine, policy: Policy, metrics: Metrics) -> None:
    """Kill switches, active rollbacks, rollout stages, each rule's bounds, budgets and the
    promotion gates as gauges."""
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
        scale = MS_TO_SECONDS if e.rule in MILLISECOND_RULES else 1.0
        for bound, value in (("value", e.bound.value), ("low", e.bound.low),
                             ("high", e.bound.high), ("threshold", e.threshold)):  # fmt: skip
            metrics.policy_rule.labels(*series, rule, bound).set(value * scale)
        metrics.policy_rule.labels(*series, rule, "n").set(e.n)
    for spend in engine.budget_spend():
        metrics.budget_spent_ratio.labels(
            metrics.guard("budget", spend.budget), metrics.guard("model", spend.model)
        ).set(spend.ratio)
    for gate in engine.promotion_gates():
        series = metrics.series(gate.model, gate.model_version, gate.deployment)
        metrics.promotion_gate.labels(*series).set(GATE_VALUES[gate.verdict])


class _Table(MutableMapping[str, str]):
    """A faust table as a mapping of JSON text, the shape the engine keeps its switches and
    incidents in. ``prefix`` picks a key space: "" the kill switches (every key without one of
    ``STATE_PREFIXES``), ``INCIDENT_PREFIX`` the incidents, ``BUDGET_PREFIX`` the budgets'
    periods, ``GATE_PREFIX`` the promotion gates."""

    def __init__(self, table: Any, prefix: str = "") -> None:
        self._table = table
        self._prefix = prefix

    def _mine(self, key: str) -> bool:
        if self._prefix:
            return key.startswith(self._prefix)
        return not key.startswith(STATE_PREFIXES)

    def __getitem__(self, key: str) -> str:
        value = self._table[self._prefix + key]
        if value is None:
            raise KeyError(key)
        return str(value)

    def __setitem__(self, key: str, value: str) -> None:
        self._table[self._prefix + key] = value

    def __delitem__(self, key: str) -> None:
        del self._table[self._prefix + key]

    def __iter__(self) -> Iterator[str]:
        keys = [k for k, v in list(self._table.items()) if k is not None and v is not None]
        return iter([k[len(self._prefix) :] for k in keys if self._mine(str(k))])

    def __len__(self) -> int:
        return sum(1 for _ in self)
