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
    outcome: str  # fire | resolved | inconclusive | healthy | cooldown | suppressed | dry_run
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


class Incident(msgspec.Struct, kw_only=True):
    """Opened by a decision that acts; its evidence is copied out of the TTL'd tables."""

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


class PolicyRecords(msgspec.Struct, kw_only=True):
    decisions: list[Decision] = msgspec.field(default_factory=list)
    attempts: list[ActionAttempt] = msgspec.field(default_factory=list)
    killswitch: list[KillSwitchState] = msgspec.field(default_factory=list)
    audit: list[AuditEntry] = msgspec.field(default_factory=list)
    incidents: list[Incident] = msgspec.field(default_factory=list)

    def __bool__(self) -> bool:
        return any((self.decisions, self.attempts, self.killswitch, self.audit, self.incidents))
