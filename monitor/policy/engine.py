"""The policy engine: window snapshots in, decisions, actions and kill-switch changes out.

For each series (model, version, deployment) the engine keeps its newest
``evaluation_windows`` window snapshots, merges their counts and sketches, and runs every rule
on the merge. A rule's verdict is one of:

- *inconclusive* — fewer than ``min_samples`` events, or, for a detector's rate, fewer than
  ``min_samples`` events *scored* by the detector (the semantic detectors may score a sample:
  docs/sampling.md): never healthy, never an action. A detector's rate, its bounds and its
  ``n`` are over the events it scored, never over the events seen;
- *fire* — the one-sided lower confidence bound clears the threshold (a count rule: more than
  ``max_count`` matching flags). Acting rules send an action unless ``dry_run`` (recorded as
  ``dry_run``), a cooldown for the same target and action is running (``cooldown``), or the
  kill switch of the deployment is engaged and the action is a rollback (``suppressed``);
- *resolved* — once firing, the rule clears only when the *upper* bound falls below
  ``threshold × recovery_ratio``: hysteresis, so a rate hovering at the threshold cannot flap.
  A canary-vs-stable comparison also clears once its lower bound is at or below zero (the
  canary no longer surely worse): fired above the margin, cleared at zero, still a full margin
  of hysteresis, and it clears on a high-baseline detector without thousands of events a side.
  Time only moves forward for a rule: it resolves only on windows newer than the ones that
  fired it, and late evidence about windows older than a resolution cannot reopen it;
- *healthy* — conclusive and below.

A decision is recorded when a rule's verdict changes. Its idempotency key names the action,
the series, the rule and the first window of the episode, so a replay of the same windows
produces the same key and receivers can drop duplicates. The kill switch is per
(model, deployment), held in a caller-supplied mapping (a faust table in the worker).

Acting verdicts are grouped into incidents, one open per (model, deployment) episode
(monitor/policy/grouping.py): the first rule that acts opens it and sends the rollback (or
kill); a later rule attaches to it as evidence (recorded ``attached``, no webhook); a kill
escalates it (one kill webhook); it resolves when every attached rule has resolved and the
deployment's windows have stayed quiet for ``incident_resolve_after_s``, with no kill switch
holding the deployment. Incidents live in a second caller-supplied mapping, with the
firing state of their rules, so a restart neither forgets the episode nor re-sends its actions.

Token and cost budgets (monitor/policy/budgets.py) count every window snapshot into their
calendar periods and fire ``budget.<name>.<percent>`` once per threshold per period, as
alert-only incidents of their own (never grouped with, and never holding back, a rollback);
their state lives in a third caller-supplied mapping.

The LLM judge's closed pairwise windows (``observe_judge``) set each canary version's
promotion gate (monitor/policy/gates.py, a fourth mapping) and feed
``rollback.judge_win_rate``, judged on the loss side (1 − win rate) like any rate rule, so it
fires only when the canary is surely worse than stable; it groups, acts and resolves like the
others.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, field

import msgspec

from detectors.bias import group_disparities
from monitor.judge.pairwise import PairwiseWindow
from monitor.policy.budgets import BudgetBook, BudgetSpend
from monitor.policy.config import CountRule, Policy, RateRule
from monitor.policy.gates import GATE_RULE, JUDGE_RULE, PASSED, GateBook, PromotionGate, gate_of
from monitor.policy.grouping import (
    RESOLVED,
    AttachedRule,
    IncidentBook,
    IncidentState,
    incident_id_for,
    latest_revisions,
)
from monitor.policy.records import (
    ActionRequest,
    Decision,
    Incident,
    KillSwitchState,
    TimelineEntry,
)
from monitor.policy.stats import Bound, quantile_bounds, rate_difference, wilson
from monitor.windows.stats import WindowStats, add_group_counts, decode_sketch, scored_count

Series = tuple[str, str, str]
KEPT_WINDOWS = 30  # per series: late snapshots of windows this recent are still judged
_state_decoder = msgspec.json.Decoder(KillSwitchState)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Merged:
    """Windows merged: a series' newest ones are what the rules look at; a canary stage's ones
    are the span of its promotion."""

    events: int = 0
    errors: int = 0
    complaints: int = 0
    flags: dict[str, int] = field(default_factory=dict)
    scored: dict[str, int] = field(default_factory=dict)  # events each detector scored
    groups: dict[str, list[float]] = field(default_factory=dict)
    sketch_bytes: list[bytes] = field(default_factory=list)
    window_start_ms: int = 0
    window_end_ms: int = 0
    windows: int = 0

    @classmethod
    def of(cls, windows: list[WindowStats]) -> Merged:
        m = cls(
            window_start_ms=min(w.window_start_ms for w in windows),
            window_end_ms=max(w.window_end_ms for w in windows),
            windows=len(windows),
        )
        sampled = {d for w in windows for d in w.scored}
        for w in windows:
            m.events += w.events
            for name in sampled:  # a window that does not name a detector: every event scored
                m.scored[name] = m.scored.get(name, 0) + w.scored_count(name)
            m.errors += w.errors + w.timeouts
            m.complaints += w.complaints
            for name, count in w.flags.items():
                m.flags[name] = m.flags.get(name, 0) + count
            for group, counts in w.groups.items():
                m.groups[group] = add_group_counts(m.groups.get(group), counts)
            if w.latency_sketch:
                m.sketch_bytes.append(w.latency_sketch)
        return m

    def scored_count(self, detector: str) -> int:
        """Events ``detector`` scored: every event, unless it is sampled."""
        return scored_count(self.scored, detector, self.events)

    def flagged(self, detectors: list[str]) -> int:
        return min(self.n(detectors), sum(self.flags.get(d, 0) for d in detectors))

    def n(self, detectors: list[str]) -> int:
        """Events all of ``detectors`` scored (one hash samples them all: the smallest sample
        lies in the others)."""
        return min((self.scored_count(d) for d in detectors), default=self.events)

    def rate_counts(self, detectors: list[str], confidence: float) -> tuple[int, int]:
        """(flagged, scored) of a rate over ``detectors``. Detectors scoring the same events
        pool their flags (an event counted once at most); sampled at different rates, each is
        over its own sample, and the one with the highest lower bound speaks for the rule."""
        counts = {self.scored_count(d) for d in detectors}
        if len(counts) <= 1:
            return self.flagged(detectors), self.n(detectors)
        alone = [(min(self.flags.get(d, 0), self.scored_count(d)), self.scored_count(d))
                 for d in detectors]  # fmt: skip
        return max(alone, key=lambda hn: wilson(hn[0], hn[1], confidence).low)


@dataclass(frozen=True)
class Evaluation:
    rule: str
    action: str
    bound: Bound
    threshold: float
    n: int
    min_samples: int
    detail: str = ""
    count_rule: bool = False
    confidence: float | None = None  # None: the policy's (the judge's bootstrap has its own)
    comparison: bool = False  # canary minus stable: may also clear once no longer surely worse

    @property
    def conclusive(self) -> bool:
        return self.n >= self.min_samples

    def over(self) -> bool:
        return self.bound.low > self.threshold

    def under(self, recovery_ratio: float) -> bool:
        """Clears a firing rule: surely below the recovery threshold; a comparison also once
        the canary is no longer surely worse than stable at all (its lower bound at or below
        zero), since on a detector with a high baseline (hallucination on paraphrasing apps,
        about half of answers) the upper bound needs thousands of events a side to drop under
        the margin even when canary and stable are the same."""
        if self.count_rule:
            return self.bound.value == 0
        if self.comparison and self.bound.low <= 0.0:
            return True
        return self.bound.high < self.threshold * recovery_ratio


@dataclass
class RuleState:
    firing: bool = False
    episode_ms: int = 0
    episode_end_ms: int = 0  # end of the span that fired: only newer spans may resolve it
    resolved_end_ms: int = 0  # end of the span that resolved: older spans cannot reopen it
    last_outcome: str = ""


@dataclass
class EngineOutput:
    decisions: list[Decision] = field(default_factory=list)
    actions: list[ActionRequest] = field(default_factory=list)
    killswitch: list[KillSwitchState] = field(default_factory=list)
    incidents: list[Incident] = field(default_factory=list)

    def extend(self, other: EngineOutput) -> None:
        self.decisions += other.decisions
        self.actions += other.actions
        self.killswitch += other.killswitch
        self.incidents += other.incidents


def action_request(
    action: str, series: Series, key: str, at: int, rule: str, reason: str, *,
    incident_id: str = "", decision: Decision | None = None, stage: str = "",
    traffic_percent: float | None = None,
) -> ActionRequest:  # fmt: skip
    """The webhook request for ``action`` on ``series``: every action is built here."""
    model, version, deployment = series
    return ActionRequest(
        action=action,
        idempotency_key=key,
        created_at_ms=at,
        model=model,
        model_version=version,
        deployment=deployment,
        rule=rule,
        reason=reason,
        incident_id=incident_id,
        decision=decision,
        stage=stage,
        traffic_percent=traffic_percent,
    )


class PolicyEngine:
    """Decides from window snapshots; holds per-series windows and per-rule states."""

    def __init__(
        self,
        policy: Policy,
        killswitch: MutableMapping[str, str] | None = None,
        *,
        incidents: MutableMapping[str, str] | None = None,
        budgets: MutableMapping[str, str] | None = None,
        gates: MutableMapping[str, str] | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.policy = policy
        self.killswitch_store: MutableMapping[str, str] = {} if killswitch is None else killswitch
        self.incidents = IncidentBook(incidents)
        self.budgets = BudgetBook(policy, budgets, clock=clock)
        self.gates = GateBook(gates)
        self._clock = clock
        self._windows: dict[Series, dict[int, WindowStats]] = {}
        self._rules: dict[tuple[Series, str], RuleState] = {}
        self._last_action_ms: dict[tuple[str, str, str, str], int] = {}
        self._stage: dict[Series, int] = {}
        self._latest: dict[tuple[Series, str], Evaluation] = {}
        self._last_merged: dict[Series, Merged] = {}
        self._stage_windows: dict[Series, dict[int, tuple[int, int]]] = {}
        self._deployment_end: dict[tuple[str, str], int] = {}  # newest window end seen

    # -- kill switch ---------------------------------------------------------------------------

    def kill_state(self, model: str, deployment: str) -> KillSwitchState | None:
        raw = self.killswitch_store.get(f"{model}/{deployment}")
        return _state_decoder.decode(raw) if raw else None

    def engaged(self, model: str, deployment: str) -> bool:
        state = self.kill_state(model, deployment)
        return bool(state and state.engaged)

    def states(self) -> list[KillSwitchState]:
        return [_state_decoder.decode(v) for v in list(self.killswitch_store.values()) if v]

    def set_kill(
        self,
        model: str,
        deployment: str,
        *,
        engage: bool,
        reason: str,
        actor: str,
        model_version: str = "",
        rule: str = "manual",
        idempotency_key: str = "",
        decision: Decision | None = None,
    ) -> EngineOutput:
        """Engage or release; returns the state change and the kill/resume action, or nothing
        when the switch is already in that position (engaging twice does not fire twice).
        ``decision`` is the policy decision that engages it, sent along with the kill.
        Engaging escalates the deployment's open incident (or opens one); releasing lets that
        incident resolve once its rules have."""
        current = self.kill_state(model, deployment)
        if current is not None and current.engaged == engage:
            return EngineOutput()
        if not engage and current is None:
            return EngineOutput()
        at = self._clock()
        action = "kill" if engage else "resume"
        key = idempotency_key or f"{action}:{model}:{deployment}:{actor}:{at}"
        series = (model, model_version, deployment)
        out = EngineOutput()
        incident = self._kill_incident(series, rule, key, at, reason, out) if engage else None
        if incident is not None:
            incident_id = incident.incident_id
        else:
            incident_id = current.incident_id if current else ""
        state = KillSwitchState(
            model=model,
            deployment=deployment,
            engaged=engage,
            reason=reason,
            actor=actor,
            changed_at_ms=at,
            incident_id=incident_id,
            idempotency_key=key,
        )
        self.killswitch_store[state.key] = msgspec.json.encode(state).decode()
        out.killswitch.append(state)
        out.actions.append(
            action_request(
                action, series, key, at, rule, reason, incident_id=incident_id, decision=decision
            )
        )
        if incident is None:
            incident = self._released(model, deployment, incident_id, key, at, reason, actor)
        elif decision is not None:
            incident.attach(_attached(decision))
        if incident is not None:
            out.incidents.append(self.incidents.save(incident))
        out.incidents = latest_revisions(out.incidents)
        return out

    # -- incidents -----------------------------------------------------------------------------

    def open_incidents(self) -> list[Incident]:
        """The open incidents' rows (Alertmanager re-sends them while they fire), budget
        incidents included."""
        rows = [state.record() for state in self.incidents.all() if state.is_open]
        return rows + self.budgets.open_incidents()

    def budget_spend(self) -> list[BudgetSpend]:
        """Each budget's spend per model in its newest period (for the gauges)."""
        return self.budgets.spend()

    def _open(
        self, series: Series, rule: str, action: str, key: str, at: int, reason: str,
        out: EngineOutput, evidence_from_ms: int | None = None,
    ) -> IncidentState:  # fmt: skip
        """A new incident for the series' deployment, opened by ``rule``; its evidence from
        ``evidence_from_ms`` (None: the series' newest windows). An open one that does not
        cover the series' version (a new canary) is closed as superseded."""
        model, version, deployment = series
        old = self.incidents.open(model, deployment)
        if old is not None:
            old.status, old.resolved_at_ms = RESOLVED, at
            old.note(_entry(at, "superseded", rule, version, action, key,
                            f"{version} fired {rule}: a new episode"))  # fmt: skip
            out.incidents.append(self.incidents.save(old))
        merged = self._last_merged.get(series)
        if evidence_from_ms is None:
            evidence_from_ms = merged.window_start_ms if merged else at - 60_000
        incident = IncidentState(
            incident_id=incident_id_for(key), model=model, deployment=deployment,
            model_version=version, action=action, rule=rule, summary=reason,
            idempotency_key=key, opened_at_ms=at, updated_at_ms=at,
            evidence_from_ms=evidence_from_ms,
        )  # fmt: skip
        incident.note(_entry(at, "opened", rule, version, action, key, reason))
        return incident

    def _kill_incident(
        self, series: Series, rule: str, key: str, at: int, reason: str, out: EngineOutput
    ) -> IncidentState:
        """The incident a kill belongs to: the deployment's open one, escalated (a manual kill
        names no version: it covers them all), or a new one."""
        model, version, deployment = series
        incident = self.incidents.open(model, deployment)
        if incident is None or not incident.covers(version):
            return self._open(series, rule, "kill", key, at, reason, out)
        kind = "escalated" if incident.action != "kill" else "engaged"
        incident.action, incident.quiet_since_ms = "kill", 0
        incident.note(_entry(at, kind, rule, version, "kill", key, reason))
        return incident

    def _released(
        self, model: str, deployment: str, incident_id: str, key: str, at: int, reason: str,
        actor: str,
    ) -> IncidentState | None:  # fmt: skip
        """The switch's incident after a release: resolved at once unless a rule still
        fires (a person ended the episode)."""
        incident = self.incidents.open(model, deployment)
        if incident is None or incident.incident_id != incident_id:
            return None
        incident.note(_entry(at, "released", "manual", "", "resume", key, f"{actor}: {reason}"))
        if not incident.firing():
            self._resolve(incident, at, key, "kill switch released, no rule firing")
        return incident

    def _rules_resolved(
        self, incident: IncidentState, at: int, key: str, window_end_ms: int
    ) -> None:
        """After a rule of ``incident`` resolved: when none fires and no kill switch holds the
        deployment, its quiet period starts (or, with none configured, it resolves)."""
        if incident.firing() or self.engaged(incident.model, incident.deployment):
            return
        if self.policy.incident_resolve_after_s <= 0:
            self._resolve(incident, at, key, "every rule resolved")
        elif not incident.quiet_since_ms:
            incident.quiet_since_ms = window_end_ms

    def _settle(self, model: str, deployment: str, window_end_ms: int) -> EngineOutput:
        """Resolve the deployment's open incident once its windows have been quiet (no rule
        firing) for ``incident_resolve_after_s``."""
        end = max(self._deployment_end.get((model, deployment), 0), window_end_ms)
        self._deployment_end[(model, deployment)] = end
        incident = self.incidents.open(model, deployment)
        quiet_ms = self.policy.incident_resolve_after_s * 1000
        if (
            incident is None
            or not incident.quiet_since_ms
            or end < incident.quiet_since_ms + quiet_ms
            or incident.firing()
            or self.engaged(model, deployment)
        ):
            return EngineOutput()
        self._resolve(incident, self._clock(), incident.idempotency_key,
                      f"every rule resolved and quiet for {quiet_ms / 1000:g} s")  # fmt: skip
        return EngineOutput(incidents=[self.incidents.save(incident)])

    def _resolve(self, incident: IncidentState, at: int, key: str, why: str) -> None:
        incident.status, incident.resolved_at_ms = RESOLVED, at
        detail = f"{why}: {', '.join(incident.rule_names())}"
        incident.note(_entry(at, "resolved", "", "", "none", key, detail))

    # -- windows -------------------------------------------------------------------------------

    def observe(self, stats: WindowStats) -> EngineOutput:
        """Take one window snapshot (final or not) and evaluate its series on the
        ``evaluation_windows`` windows ending at that window. A snapshot of an older window
        (late evidence, e.g. semantic findings from a lagging embed worker) is judged with
        its own neighbours, not drowned by the newest windows."""
        spent = self.budgets.observe(stats)  # every snapshot counts, however old its window
        out = EngineOutput(spent.decisions, spent.actions, incidents=spent.incidents)
        series = (stats.model, stats.model_version, stats.deployment)
        windows = self._windows.setdefault(series, {})
        windows[stats.window_start_ms] = stats
        for start in sorted(windows)[: -max(KEPT_WINDOWS, self.policy.evaluation_windows)]:
            del windows[start]
        span = [w for start, w in sorted(windows.items()) if start <= stats.window_start_ms]
        if not span:  # older than every window kept: history, not news
            return out
        merged = Merged.of(span[-self.policy.evaluation_windows :])
        self._last_merged[series] = merged
        for evaluation in self._evaluate(series, merged):
            out.extend(self._transition(series, merged, evaluation))
        if stats.deployment in self.policy.canary_deployments and self.policy.stages:
            out.extend(self._advance(series, stats))
        out.extend(self._settle(stats.model, stats.deployment, stats.window_end_ms))
        out.incidents = latest_revisions(out.incidents)
        return out

    def stage(self, series: Series) -> int:
        """Index of the rollout stage the canary series is in (0 = the first)."""
        return self._stage.get(series, 0)

    def _advance(self, series: Series, stats: WindowStats) -> EngineOutput:
        """Promote the canary to the next stage once the current one has shown enough healthy
        traffic: its events since the stage began reach ``min_events`` and the error rate's
        upper bound is under ``max_error_rate``, with no rollback rule firing and no kill."""
        index = self.stage(series)
        stages = self.policy.stages
        if index >= len(stages) - 1:
            return EngineOutput()
        seen = self._stage_windows.setdefault(series, {})
        seen[stats.window_start_ms] = (stats.events, stats.errors + stats.timeouts)
        events = sum(e for e, _ in seen.values())
        errors = sum(x for _, x in seen.values())
        current, following = stages[index], stages[index + 1]
        bound = wilson(errors, events, self.policy.confidence)
        model, version, deployment = series
        if (
            events < current.min_events
            or bound.high >= current.max_error_rate
            or self.rollback_active().get(series, False)
            or self.engaged(model, deployment)
            or not self._gate_open(series)
        ):
            return EngineOutput()
        self._stage[series] = index + 1
        span = Merged(
            events=events,
            errors=errors,
            window_start_ms=min(seen),
            window_end_ms=stats.window_end_ms,
            windows=len(seen),
        )
        seen.clear()
        e = Evaluation(
            f"stage.{following.name}", "promote", bound, current.max_error_rate, events,
            current.min_events,
            detail=f"{current.name} -> {following.name} at {following.traffic_percent}%",
        )  # fmt: skip
        key = f"promote:{model}:{version}:{deployment}:{following.name}"
        outcome = "dry_run" if self.policy.dry_run else "fire"
        decision = self._decision(series, e, span, key, outcome)
        out = EngineOutput(decisions=[decision])
        if not self.policy.dry_run:
            reason = (
                f"{decision.detail}: {events} events, error rate upper bound "
                f"{bound.high:.4f} < {current.max_error_rate}"
            )
            at = decision.decided_at_ms
            out.actions.append(
                action_request(
                    "promote", series, key, at, e.rule, reason, decision=decision,
                    stage=following.name, traffic_percent=following.traffic_percent,
                )
            )  # fmt: skip
        return out

    def _gate_open(self, series: Series) -> bool:
        """Whether the judge's promotion gate lets the canary advance: always, unless the
        policy asks for it (``rollback.judge_win_rate.gate_promotion``); then only while the
        version's newest gate passes (none yet, failing or inconclusive: it waits)."""
        if not self.policy.rollback.judge_win_rate.gate_promotion:
            return True
        gate = self.gates.get(*series)
        return gate is not None and gate.verdict == PASSED

    # -- the LLM judge ---------------------------------------------------------------------------

    def observe_judge(self, window: PairwiseWindow, deployment: str) -> EngineOutput:
        """Take one closed pairwise window of the LLM judge (canary ``window.canary_version``
        of ``deployment`` against stable): set the version's promotion gate, recording a
        ``gate.judge_win_rate`` decision when its verdict changes, and judge
        ``rollback.judge_win_rate`` on the window. Windows of a deployment that is not a
        canary of the policy change nothing; a window older than the version's newest one
        moves neither the gate nor, once resolved, the rule (history, not news)."""
        if deployment not in self.policy.canary_deployments:
            return EngineOutput()
        series = (window.model, window.canary_version, deployment)
        rule, r = self.policy.rollback.judge_win_rate, window.win_rate
        span = Merged(
            events=r.n, window_start_ms=window.window_start_ms,
            window_end_ms=window.window_end_ms, windows=1,
        )  # fmt: skip
        detail = (
            f"win rate {r.value:.3f} [{r.low:.3f}, {r.high:.3f}] over {r.n} pairs "
            f"({r.wins}/{r.ties}/{r.losses} wins/ties/losses), "
            f"stable {','.join(window.stable_versions) or '?'}"
        )
        out = EngineOutput()
        change = self.gates.update(gate_of(window, deployment, rule.threshold, rule.min_pairs))
        if change.changed:
            out.decisions.append(self._gate_decision(change.gate, r.confidence, detail))
        if rule.enabled:
            e = Evaluation(
                JUDGE_RULE, "rollback", Bound(1 - r.value, 1 - r.high, 1 - r.low),
                1 - rule.threshold, r.n, rule.min_pairs, detail=detail, confidence=r.confidence,
            )  # fmt: skip
            out.extend(self._transition(series, span, e))
        out.incidents = latest_revisions(out.incidents)
        return out

    def promotion_gates(self) -> list[PromotionGate]:
        """Every canary version's newest gate (for the gauge)."""
        return self.gates.all()

    def _gate_decision(self, gate: PromotionGate, confidence: float, detail: str) -> Decision:
        """The decision row of a gate's new verdict: outcome pass, fail or inconclusive, on the
        win rate's side (observed = win rate, threshold = the gate's)."""
        series = (gate.model, gate.model_version, gate.deployment)
        e = Evaluation(
            GATE_RULE, "none", Bound(gate.win_rate, gate.low, gate.high), gate.threshold,
            gate.n, gate.min_pairs, detail=detail, confidence=confidence,
        )  # fmt: skip
        span = Merged(
            events=gate.n, window_start_ms=gate.window_start_ms,
            window_end_ms=gate.window_end_ms, windows=1,
        )  # fmt: skip
        key = f"gate:{gate.model}:{gate.model_version}:{gate.deployment}:{GATE_RULE}:"
        return self._decision(series, e, span, key + str(gate.window_start_ms), gate.verdict)

    def _evaluate(self, series: Series, m: Merged) -> Iterator[Evaluation]:
        """Rollback rules (canaries only) first, then kill conditions: a kill engaged by this
        snapshot must not suppress the rollbacks the same evidence calls for."""
        p = self.policy
        model, _, deployment = series
        r, k = p.rollback, p.kill_switch
        if deployment in p.canary_deployments:
            yield from self._counts(m, [("rollback.safety_incidents", r.safety_incidents)])
            yield from self._rates(m, [
                ("rollback.error_rate", r.error_rate, (m.errors, m.events)),
                ("rollback.complaint_rate", r.complaint_rate, (m.complaints, m.events)),
                *((f"rollback.{name}_rate", rule, m.rate_counts([name], p.confidence))
                  for name, rule in r.detector_rates.items()),
            ])  # fmt: skip
            yield from self._latency_and_bias(m)
            if r.canary_vs_stable.enabled:
                yield from self._compare(model, m)
        yield from self._rates(m, [
            ("kill.safety_critical", k.safety_critical,
             m.rate_counts(k.safety_detectors, p.confidence)),
            ("kill.cascade_failure", k.cascade_failure, (m.errors, m.events)),
        ])  # fmt: skip
        yield from self._counts(m, [("kill.data_breach", k.data_breach)])

    def _rates(
        self, m: Merged, rules: list[tuple[str, RateRule, tuple[int, int]]]
    ) -> Iterator[Evaluation]:
        """Rate rules: the Wilson bounds of hits / n, where n is the events the rule's detectors
        scored (every event for errors and complaints); the action is the name's prefix."""
        for name, rule, (hits, n) in rules:
            if rule.enabled:
                yield Evaluation(
                    name, name.split(".")[0], wilson(hits, n, self.policy.confidence),
                    rule.threshold, n, rule.min_samples or self.policy.min_samples,
                    detail=_sampled(n, m.events),
                )  # fmt: skip

    def _counts(self, m: Merged, rules: list[tuple[str, CountRule]]) -> Iterator[Evaluation]:
        """Count rules: more than ``max_count`` flags of the rule's detectors."""
        for name, rule in rules:
            if rule.enabled:
                n, scored = m.flagged(rule.detectors), m.n(rule.detectors)
                yield Evaluation(
                    name, name.split(".")[0], Bound(n, n, n), rule.max_count, scored,
                    rule.min_samples or self.policy.min_samples, count_rule=True,
                    detail=_sampled(scored, m.events),
                )  # fmt: skip

    def _latency_and_bias(self, m: Merged) -> Iterator[Evaluation]:
        p, r, c = self.policy, self.policy.rollback, self.policy.confidence
        if r.p99_latency.enabled and m.sketch_bytes:
            sketch = decode_sketch(m.sketch_bytes[0])
            for more in m.sketch_bytes[1:]:
                sketch.merge(decode_sketch(more))
            bound = quantile_bounds(sketch, r.p99_latency.quantile, c)
            if bound is not None:
                yield Evaluation("rollback.p99_latency", "rollback", bound,
                                 r.p99_latency.threshold_ms, int(sketch.count),
                                 r.p99_latency.min_samples or p.min_samples)  # fmt: skip
        if r.bias_disparity.enabled and m.groups:
            grouped = min(m.events, round(sum(counts[0] for counts in m.groups.values())))
            for d in group_disparities(m.groups, confidence=2 * c - 1):
                yield Evaluation(f"rollback.bias_disparity.{d.metric}", "rollback",
                                 Bound(d.value, d.low, d.high), r.bias_disparity.threshold,
                                 grouped, r.bias_disparity.min_samples or p.min_samples,
                                 detail=f"{d.highest} vs {d.lowest}")  # fmt: skip

    def _compare(self, model: str, canary: Merged) -> Iterator[Evaluation]:
        """Canary minus the busiest stable series of the same model, per configured rate."""
        rule, c = self.policy.rollback.canary_vs_stable, self.policy.confidence
        stables = []
        for (m, _, d), windows in self._windows.items():
            if m != model or d not in self.policy.stable_deployments:
                continue
            same_span = [w for start, w in windows.items()
                         if canary.window_start_ms <= start < canary.window_end_ms]  # fmt: skip
            if same_span:
                stables.append(Merged.of(same_span))
        if not stables:
            return
        stable = max(stables, key=lambda s: s.events)
        for rate in rule.rates:
            if rate == "error_rate":
                (a, n_a), (b, n_b) = (canary.errors, canary.events), (stable.errors, stable.events)
            else:
                (a, n_a), (b, n_b) = canary.rate_counts([rate], c), stable.rate_counts([rate], c)
            bound = rate_difference(a, n_a, b, n_b, c)
            yield Evaluation(
                f"rollback.canary_vs_stable.{rate}",
                "rollback",
                bound,
                rule.margin,
                min(n_a, n_b),
                rule.min_samples or self.policy.min_samples,
                detail=f"stable n={n_b}",
                comparison=True,
            )

    # -- verdicts ------------------------------------------------------------------------------

    def latest(self) -> list[tuple[Series, Evaluation]]:
        """Each rule's newest evaluation per series: value, bounds and threshold, for the
        canary-vs-stable dashboard's confidence bands."""
        return [(series, e) for (series, _), e in self._latest.items()]

    def _transition(self, series: Series, m: Merged, e: Evaluation) -> EngineOutput:
        """Record a decision when the rule's verdict changes; act on one that fires, or
        attach it to the deployment's open incident; let a resolution resolve the incident."""
        self._latest[(series, e.rule)] = e
        state = self._rule_state(series, e.rule)
        outcome = self._next_outcome(state, m, e)
        if outcome is None or outcome == state.last_outcome:
            return EngineOutput()
        state.last_outcome = outcome
        model, version, deployment = series
        key = f"{e.action}:{model}:{version}:{deployment}:{e.rule}:{state.episode_ms}"
        recorded, incident, step = self._route(series, e, outcome)
        if incident is not None:
            incident_id = incident.incident_id
        else:  # the incident the decision opens, if it acts
            incident_id = incident_id_for(key) if step == "act" else ""
        decision = self._decision(series, e, m, key, recorded, incident_id)
        out = EngineOutput(decisions=[decision])
        if step == "act":
            out.extend(self._act(series, e, decision))
        elif incident is not None:
            at = decision.decided_at_ms
            if step == "attach":
                incident.attach(_attached(decision))
                why = "" if recorded == "attached" else f"{recorded}: "
                incident.note(_entry(at, "attached", e.rule, version, e.action, key,
                                     why + _reason(e)))  # fmt: skip
            else:  # a rule of the incident resolved
                rule = incident.find(version, e.rule)
                if rule is not None:
                    rule.firing, rule.resolved_end_ms = False, m.window_end_ms
                incident.note(_entry(at, "rule_resolved", e.rule, version, e.action, key,
                                     _recovery(e, self.policy.recovery_ratio)))  # fmt: skip
                self._rules_resolved(incident, at, key, m.window_end_ms)
            out.incidents.append(self.incidents.save(incident))
        return out

    def _rule_state(self, series: Series, rule: str) -> RuleState:
        """The rule's state; on first sight, what the deployment's incident remembers of it
        (a restarted worker keeps a firing rule firing, and a resolved one resolved)."""
        state = self._rules.get((series, rule))
        if state is None:
            state = RuleState()
            model, version, deployment = series
            incident = self.incidents.latest(model, deployment)
            known = incident.find(version, rule) if incident is not None else None
            if known is not None:
                state = RuleState(
                    firing=known.firing, episode_ms=known.episode_ms,
                    episode_end_ms=known.episode_end_ms, resolved_end_ms=known.resolved_end_ms,
                    last_outcome="fire" if known.firing else "resolved",
                )  # fmt: skip
            self._rules[(series, rule)] = state
        return state

    def _next_outcome(self, state: RuleState, m: Merged, e: Evaluation) -> str | None:
        """The rule's verdict on ``m``, updating its firing state; None when there is no news
        (still firing, or evidence older than the last resolution)."""
        if state.firing:
            # Firing stays firing (missing data changes nothing) until newer windows are
            # conclusively below the recovery threshold.
            resolved = (
                e.conclusive
                and e.under(self.policy.recovery_ratio)
                and m.window_end_ms > state.episode_end_ms
            )
            if not resolved:
                return None
            state.firing, state.resolved_end_ms = False, m.window_end_ms
            return "resolved"
        if not e.conclusive:
            return "inconclusive"
        if not e.over():
            return "healthy"
        if m.window_end_ms <= state.resolved_end_ms:
            return None  # windows older than the last resolution: history, not news
        state.firing, state.episode_ms = True, m.window_start_ms
        state.episode_end_ms = m.window_end_ms
        return "fire"

    def _route(
        self, series: Series, e: Evaluation, outcome: str
    ) -> tuple[str, IncidentState | None, str]:
        """What a verdict does: the outcome to record, the open incident it belongs to, and
        the step, one of ``act`` (send the action: open an incident, or escalate the open one
        with a kill), ``attach`` (evidence for the open incident), ``resolve`` (a rule of the
        incident resolved) or "" (nothing). A fire that must not act is recorded as why: dry
        run, attached to the open incident, a rollback under an engaged kill switch
        (suppressed), a running cooldown."""
        model, version, deployment = series
        incident = self.incidents.open(model, deployment)
        if outcome == "resolved":
            known = incident.find(version, e.rule) if incident is not None else None
            if known is not None and known.firing:
                return outcome, incident, "resolve"
            return outcome, None, ""
        if outcome != "fire":
            return outcome, None, ""
        if self.policy.dry_run:
            return "dry_run", None, ""
        engaged = self.engaged(model, deployment)
        if incident is not None and incident.covers(version):
            if e.action == "kill" and not engaged:
                if self._cooling(series, "kill"):
                    return "cooldown", incident, "attach"
                return "fire", incident, "act"  # escalates it
            held = "suppressed" if engaged and e.action == "rollback" else "attached"
            return held, incident, "attach"
        if engaged:  # engaged with no incident of its own (stored before incidents grouped)
            return "suppressed", None, ""
        if self._cooling(series, e.action):
            return "cooldown", None, ""
        return "fire", None, "act"  # opens an incident (superseding one of another version)

    def _decision(
        self, series: Series, e: Evaluation, span: Merged, key: str, outcome: str,
        incident_id: str = "",
    ) -> Decision:  # fmt: skip
        """The decision on ``e`` over the windows of ``span``, decided now."""
        model, version, deployment = series
        return Decision(
            idempotency_key=key,
            decided_at_ms=self._clock(),
            rule=e.rule,
            action=e.action,
            outcome=outcome,
            model=model,
            model_version=version,
            deployment=deployment,
            observed=float(e.bound.value),
            bound_low=float(e.bound.low),
            bound_high=float(e.bound.high),
            threshold=float(e.threshold),
            n=e.n,
            window_start_ms=span.window_start_ms,
            window_end_ms=span.window_end_ms,
            windows=span.windows,
            confidence=self.policy.confidence if e.confidence is None else e.confidence,
            dry_run=self.policy.dry_run,
            detail=e.detail,
            incident_id=incident_id,
        )

    def _act(self, series: Series, e: Evaluation, decision: Decision) -> EngineOutput:
        """A firing decision's action: a kill engages the kill switch (escalating the open
        incident, or opening one); a rollback opens an incident and is sent with it. Starts
        the cooldown of the action on this series."""
        self._last_action_ms[(*series, e.action)] = decision.decided_at_ms
        key, at = decision.idempotency_key, decision.decided_at_ms
        reason = _reason(e)
        if e.action == "kill":
            model, version, deployment = series
            return self.set_kill(
                model, deployment, engage=True, reason=reason, actor="policy",
                model_version=version, rule=e.rule, idempotency_key=key, decision=decision,
            )  # fmt: skip
        out = EngineOutput()
        incident = self._open(
            series, e.rule, "rollback", key, at, reason, out, decision.window_start_ms
        )
        incident.attach(_attached(decision))
        out.actions.append(
            action_request(
                "rollback", series, key, at, e.rule, reason, incident_id=incident.incident_id,
                decision=decision,
            )
        )  # fmt: skip
        out.incidents.append(self.incidents.save(incident))
        return out

    def _cooling(self, series: Series, action: str) -> bool:
        last = self._last_action_ms.get((*series, action))
        return last is not None and self._clock() - last < self.policy.cooldown_s * 1000

    def rollback_active(self) -> dict[Series, bool]:
        """Per series: whether any rollback rule is firing (for the Argo/Flagger surfaces)."""
        active: dict[Series, bool] = {}
        for (series, rule), state in self._rules.items():
            if rule.startswith("rollback."):
                active[series] = active.get(series, False) or state.firing
        return active


def _sampled(n: int, events: int) -> str:
    """The decision's note when its detectors scored a sample of the events."""
    return f"scored {n} of {events} events" if n < events else ""


def _reason(e: Evaluation) -> str:
    return (
        f"{e.rule}: observed {e.bound.value:.4g}, bound {e.bound.low:.4g} > "
        f"threshold {e.threshold:.4g} (n={e.n})"
    )


def _recovery(e: Evaluation, recovery_ratio: float) -> str:
    if e.count_rule:
        return f"{e.rule}: no more matches (n={e.n})"
    return (
        f"{e.rule}: observed {e.bound.value:.4g}, upper bound {e.bound.high:.4g} < "
        f"{e.threshold * recovery_ratio:.4g} (n={e.n})"
    )


def _attached(decision: Decision) -> AttachedRule:
    """The incident's memory of a rule that fired in it: its episode, as the decision saw it."""
    return AttachedRule(
        model_version=decision.model_version, rule=decision.rule, action=decision.action,
        idempotency_key=decision.idempotency_key, episode_ms=decision.window_start_ms,
        episode_end_ms=decision.window_end_ms,
    )  # fmt: skip


def _entry(
    at: int, kind: str, rule: str, version: str, action: str, key: str, detail: str
) -> TimelineEntry:
    return TimelineEntry(
        at_ms=at, kind=kind, rule=rule, model_version=version, action=action,
        idempotency_key=key, detail=detail,
    )  # fmt: skip
