"""Incident grouping: one open incident per (model, deployment) episode.

The first rule that acts opens the incident and sends its rollback (or kill); later rules for
the same deployment attach to it as evidence; a kill escalates it (one kill webhook). It
resolves when every attached rule has resolved (the engine's hysteresis decides that) and has
stayed so for ``incident_resolve_after_s`` of window time, with no kill switch holding the
deployment: a rule that fires meanwhile joins the same incident, so one bad canary whose
symptoms come one after another is one episode. Releasing the switch by hand ends a quiet
episode at once. A rule that acts for a version the incident does not cover
(a rollback incident covers the versions whose rules fired in it, a kill incident every
version) is a new canary: the old incident is closed as ``superseded`` and a new one opens.

``IncidentState`` is what the engine keeps per (model, deployment), in a caller-supplied
mapping of JSON text (a changelog-backed faust table in the worker), so a restarted worker
still knows the open incident, and the attached rules' firing state comes back with it: the
same windows replayed after a restart neither open a second incident nor send a second
webhook. Each change is a new revision; ``record`` is the row the sink stores.
"""

from __future__ import annotations

import hashlib
from collections.abc import MutableMapping

import msgspec

from monitor.policy.records import Incident, TimelineEntry
from monitor.policy.state import decode_state

OPEN, RESOLVED = "open", "resolved"
MAX_TIMELINE = 200  # entries kept per incident: verdict changes only, so rarely reached
# The kinds that put a rule in the incident's rule list.
RULE_KINDS = frozenset({"opened", "attached", "escalated"})
# The kinds that set its level (rollback, then kill).
LEVEL_KINDS = frozenset({"opened", "escalated"})


def incident_id_for(key: str) -> str:
    """The incident opened by the decision with idempotency key ``key``: the same windows
    replayed give the same key, hence the same incident."""
    return "inc-" + hashlib.sha256(key.encode()).hexdigest()[:12]


class AttachedRule(msgspec.Struct, kw_only=True):
    """A rule that fired in the incident, and where its episode stands (the engine's rule
    state, kept here so that it survives a restart)."""

    model_version: str
    rule: str
    action: str
    idempotency_key: str
    episode_ms: int
    episode_end_ms: int
    firing: bool = True
    resolved_end_ms: int = 0


class IncidentState(msgspec.Struct, kw_only=True):
    """An incident as the engine keeps it: the row's fields plus the attached rules."""

    incident_id: str
    model: str
    deployment: str
    model_version: str  # of the decision that opened it ("" for a manual kill)
    action: str  # rollback | kill: the level reached
    rule: str  # the rule that opened it
    summary: str
    idempotency_key: str  # of the decision (or kill) that opened it
    opened_at_ms: int
    evidence_from_ms: int
    status: str = OPEN
    revision: int = 0
    updated_at_ms: int = 0
    resolved_at_ms: int = 0
    # End of the window on which its last rule resolved (0 while one fires): it resolves once
    # the deployment's windows are ``incident_resolve_after_s`` past this.
    quiet_since_ms: int = 0
    attached: list[AttachedRule] = msgspec.field(default_factory=list)
    timeline: list[TimelineEntry] = msgspec.field(default_factory=list)

    @property
    def is_open(self) -> bool:
        return self.status == OPEN

    @property
    def store_key(self) -> str:
        return store_key(self.model, self.deployment)

    def covers(self, model_version: str) -> bool:
        """Whether a rule of ``model_version`` belongs to this episode: a kill holds the whole
        deployment; a rollback, the versions whose rules fired in it."""
        if self.action == "kill" or not model_version:
            return True
        versions = {self.model_version, *(r.model_version for r in self.attached)}
        return bool(versions & {"", model_version})

    def find(self, model_version: str, rule: str) -> AttachedRule | None:
        for attached in self.attached:
            if attached.model_version == model_version and attached.rule == rule:
                return attached
        return None

    def attach(self, rule: AttachedRule) -> None:
        """Add ``rule`` (or restart its episode when it fired here before and resolved)."""
        self.quiet_since_ms = 0
        known = self.find(rule.model_version, rule.rule)
        if known is None:
            self.attached.append(rule)
        else:
            known.firing, known.idempotency_key = True, rule.idempotency_key
            known.episode_ms, known.episode_end_ms = rule.episode_ms, rule.episode_end_ms

    def note(self, entry: TimelineEntry) -> None:
        self.timeline.append(entry)
        if len(self.timeline) > MAX_TIMELINE:  # drop the oldest entry that set no level
            for i, old in enumerate(self.timeline):
                if old.kind not in LEVEL_KINDS:
                    del self.timeline[i]
                    break
        self.updated_at_ms = max(self.updated_at_ms, entry.at_ms)

    def firing(self) -> list[AttachedRule]:
        return [r for r in self.attached if r.firing]

    def rule_names(self) -> list[str]:
        return rule_names(self.timeline)

    def record(self) -> Incident:
        """The incident's row at this revision."""
        return Incident(
            incident_id=self.incident_id, opened_at_ms=self.opened_at_ms, action=self.action,
            rule=self.rule, model=self.model, model_version=self.model_version,
            deployment=self.deployment, evidence_from_ms=self.evidence_from_ms,
            evidence_to_ms=max(self.updated_at_ms, self.opened_at_ms), summary=self.summary,
            idempotency_key=self.idempotency_key, status=self.status, rules=self.rule_names(),
            revision=self.revision, updated_at_ms=self.updated_at_ms,
            resolved_at_ms=self.resolved_at_ms, timeline=list(self.timeline),
        )  # fmt: skip


def rule_names(timeline: list[TimelineEntry]) -> list[str]:
    """Every rule that fired in an incident, in the order they did."""
    names: dict[str, None] = {}
    for entry in timeline:
        if entry.kind in RULE_KINDS:
            names.setdefault(entry.rule, None)
    return list(names)


def level_entries(timeline: list[TimelineEntry]) -> list[TimelineEntry]:
    """The entries that set an incident's level: its opening, then any escalation to kill."""
    return [entry for entry in timeline if entry.kind in LEVEL_KINDS]


_decoder = msgspec.json.Decoder(IncidentState)


def store_key(model: str, deployment: str) -> str:
    return f"{model}/{deployment}"


class IncidentBook:
    """The latest incident per (model, deployment), open or resolved, in ``store`` (JSON
    text). Resolved ones are kept until the next incident of the deployment replaces them:
    their rules' resolutions keep replayed old windows from reopening anything."""

    def __init__(self, store: MutableMapping[str, str] | None = None) -> None:
        self.store: MutableMapping[str, str] = {} if store is None else store

    def latest(self, model: str, deployment: str) -> IncidentState | None:
        return self._decode(self.store.get(store_key(model, deployment)))

    def open(self, model: str, deployment: str) -> IncidentState | None:
        state = self.latest(model, deployment)
        return state if state is not None and state.is_open else None

    def all(self) -> list[IncidentState]:
        states = [self._decode(v) for v in list(self.store.values())]
        return [s for s in states if s is not None]

    @staticmethod
    def _decode(raw: str | None) -> IncidentState | None:
        """A stored incident (one that does not decode is forgotten: the next decision opens
        a new incident)."""
        return decode_state(_decoder, raw, "incident")

    def save(self, state: IncidentState) -> Incident:
        """Store ``state`` as its next revision; returns the row to record."""
        state.revision += 1
        self.store[state.store_key] = msgspec.json.encode(state).decode()
        return state.record()


def latest_revisions(incidents: list[Incident]) -> list[Incident]:
    """One row per incident, its highest revision, in the order they first appear."""
    latest: dict[str, Incident] = {}
    for incident in incidents:
        known = latest.get(incident.incident_id)
        if known is None or incident.revision >= known.revision:
            latest[incident.incident_id] = incident
    return list(latest.values())
