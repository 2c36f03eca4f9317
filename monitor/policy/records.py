"""What the policy role publishes: decisions, actions, webhook attempts, kill-switch states,
audit entries and incidents. All msgspec structs, sent as one ``PolicyRecords`` envelope on
the policy topic and written by the sink to tables of the same names."""

from __future__ import annotations

import msgspec

from monitor.storage.columns import EpochMs


class Decision(msgspec.Struct, kw_only=True):
    """One rule's verdict on one series, recorded when the verdict changes."""

    idempotency_key: str
    decided_at_ms: EpochMs
    rule: str
    action: str  # rollback | kill | none
    # fire | attached | resolved | inconclusive | healthy | cooldown | suppressed | dry_run
    outcome: str
    model: str
    model_version: str
    deployment: str
    observed: float
    bound_low: float
    bound_high: float
    threshold: float
    n: int
    window_start_ms: EpochMs
    window_end_ms: EpochMs
    windows: int
    confidence: float
    dry_run: bool
    detail: str = ""
    incident_id: str = ""  # the incident it opened, escalated, attached to or resolved in

    @property
    def acts(self) -> bool:
        return self.outcome == "fire" and self.action != "none"


class ActionRequest(msgspec.Struct, kw_only=True):
    """A decision that acts, as sent to the webhooks: rollback, kill, resume or promote."""

    action: str
    idempotency_key: str
    created_at_ms: int
    model: str
    model_version: str
    deployment: str
    rule: str
    reason: str
    incident_id: str
    decision: Decision | None = None
    stage: str = ""
    traffic_percent: float | None = None


class ActionAttempt(msgspec.Struct, kw_only=True):
    """One POST of an action to one webhook URL, and how it went."""

    idempotency_key: str
    action: str
    url: str
    attempt: int
    at_ms: EpochMs
    status_code: int
    error: str
    latency_ms: float
    outcome: str  # delivered | retrying | gave_up


class KillSwitchState(msgspec.Struct, kw_only=True):
    model: str
    deployment: str
    engaged: bool
    reason: str
    actor: str  # policy | api | cli
    changed_at_ms: EpochMs
    incident_id: str = ""
    idempotency_key: str = ""

    @property
    def key(self) -> str:
        return f"{self.model}/{self.deployment}"


class AuditEntry(msgspec.Struct, kw_only=True):
    """Every call to the policy API (kill switch, status, Flagger gate), allowed or not. Never
    holds the token."""

    at_ms: EpochMs
    remote: str
    method: str
    path: str
    target: str
    outcome: str  # ok | unauthorized | invalid | disabled
    detail: str = ""


class TimelineEntry(msgspec.Struct, kw_only=True):
    """One step of an incident. ``kind``: opened, attached (a later rule, as evidence),
    escalated (rollback to kill), rule_resolved, released (kill switch), resolved, superseded
    (a new version on the deployment fired: a new episode). ``at_ms`` is epoch milliseconds
    (an Int64 in the ``timeline`` column's tuples)."""

    at_ms: int
    kind: str
    rule: str
    model_version: str
    action: str
    idempotency_key: str
    detail: str


class Incident(msgspec.Struct, kw_only=True):
    """One per (model, deployment) episode: opened by the first decision that acts, later
    rules attach to it, a kill escalates it, it resolves when every attached rule has resolved
    and no kill switch holds it. Each change is a new ``revision`` of the same row (the
    highest wins); its evidence is copied out of the TTL'd tables."""

    incident_id: str
    opened_at_ms: EpochMs
    action: str
    rule: str
    model: str
    model_version: str
    deployment: str
    evidence_from_ms: EpochMs
    evidence_to_ms: EpochMs
    summary: str
    idempotency_key: str = ""
    status: str = "open"  # open | resolved
    rules: list[str] = msgspec.field(default_factory=list)  # every rule that fired in it
    revision: int = 0
    updated_at_ms: EpochMs = 0
    resolved_at_ms: EpochMs = 0
    timeline: list[TimelineEntry] = msgspec.field(default_factory=list)


class PolicyRecords(msgspec.Struct, kw_only=True):
    decisions: list[Decision] = msgspec.field(default_factory=list)
    attempts: list[ActionAttempt] = msgspec.field(default_factory=list)
    killswitch: list[KillSwitchState] = msgspec.field(default_factory=list)
    audit: list[AuditEntry] = msgspec.field(default_factory=list)
    incidents: list[Incident] = msgspec.field(default_factory=list)

    def __bool__(self) -> bool:
        return any((self.decisions, self.attempts, self.killswitch, self.audit, self.incidents))
