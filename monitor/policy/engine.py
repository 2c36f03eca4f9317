"""The policy engine: window snapshots in, decisions, actions and kill-switch changes out.

For each series (model, version, deployment) the engine keeps its newest
``evaluation_windows`` window snapshots, merges their counts and sketches, and runs every rule
on the merge. A rule's verdict is one of:

- *inconclusive* — fewer than ``min_samples`` events: never healthy, never an action;
- *fire* — the one-sided lower confidence bound clears the threshold (a count rule: more than
  ``max_count`` matching flags). Acting rules send an action unless ``dry_run`` (recorded as
  ``dry_run``), a cooldown for the same target and action is running (``cooldown``), or the
  kill switch of the deployment is engaged and the action is a rollback (``suppressed``);
- *resolved* — once firing, the rule clears only when the *upper* bound falls below
  ``threshold × recovery_ratio``: hysteresis, so a rate hovering at the threshold cannot flap.
  Time only moves forward for a rule: it resolves only on windows newer than the ones that
  fired it, and late evidence about windows older than a resolution cannot reopen it;
- *healthy* — conclusive and below.

A decision is recorded when a rule's verdict changes. Its idempotency key names the action,
the series, the rule and the first window of the episode, so a replay of the same windows
produces the same key and receivers can drop duplicates. The kill switch is per
(model, deployment), held in a caller-supplied mapping (a faust table in the worker).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, field

import msgspec

from detectors.bias import group_disparities
from monitor.policy.config import CountRule, Policy, RateRule
from monitor.policy.records import ActionRequest, Decision, Incident, KillSwitchState
from monitor.policy.stats import Bound, quantile_bounds, rate_difference, wilson
from monitor.windows.stats import WindowStats, add_group_counts, decode_sketch

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
        for w in windows:
            m.events += w.events
            m.errors += w.errors + w.timeouts
            m.complaints += w.complaints
            for name, count in w.flags.items():
                m.flags[name] = m.flags.get(name, 0) + count
            for group, counts in w.groups.items():
                m.groups[group] = add_group_counts(m.groups.get(group), counts)
            if w.latency_sketch:
                m.sketch_bytes.append(w.latency_sketch)
        return m

    def flagged(self, detectors: list[str]) -> int:
        return min(self.events, sum(self.flags.get(d, 0) for d in detectors))


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

    @property
    def conclusive(self) -> bool:
        return self.n >= self.min_samples

    def over(self) -> bool:
        return self.bound.low > self.threshold

    def under(self, recovery_ratio: float) -> bool:
        if self.count_rule:
            return self.bound.value == 0
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


def incident_id_for(key: str) -> str:
    return "inc-" + hashlib.sha256(key.encode()).hexdigest()[:12]


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
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.policy = policy
        self.killswitch_store: MutableMapping[str, str] = {} if killswitch is None else killswitch
        self._clock = clock
        self._windows: dict[Series, dict[int, WindowStats]] = {}
        self._rules: dict[tuple[Series, str], RuleState] = {}
        self._last_action_ms: dict[tuple[str, str, str, str], int] = {}
        self._stage: dict[Series, int] = {}
        self._latest: dict[tuple[Series, str], Evaluation] = {}
        self._last_merged: dict[Series, Merged] = {}
        self._stage_windows: dict[Series, dict[int, tuple[int, int]]] = {}

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
        ``decision`` is the policy decision that engages it, sent along with the kill."""
        current = self.kill_state(model, deployment)
        if current is not None and current.engaged == engage:
            return EngineOutput()
        if not engage and current is None:
            return EngineOutput()
        at = self._clock()
        action = "kill" if engage else "resume"
        key = idempotency_key or f"{action}:{model}:{deployment}:{actor}:{at}"
        incident = (current.incident_id if current else "") if not engage else incident_id_for(key)
        state = KillSwitchState(
            model=model,
            deployment=deployment,
            engaged=engage,
            reason=reason,
            actor=actor,
            changed_at_ms=at,
            incident_id=incident,
            idempotency_key=key,
        )
        self.killswitch_store[state.key] = msgspec.json.encode(state).decode()
        series = (model, model_version, deployment)
        out = EngineOutput(killswitch=[state])
        out.actions.append(
            action_request(
                action, series, key, at, rule, reason, incident_id=incident, decision=decision
            )
        )
        if engage:
            out.incidents.append(self._incident(incident, action, rule, series, at, reason, key))
        return out

    def _incident(
        self, incident_id: str, action: str, rule: str, series: Series, at: int, summary: str,
        key: str = "",
    ) -> Incident:  # fmt: skip
        merged = self._last_merged.get(series)
        start = merged.window_start_ms if merged else at - 60_000
        return Incident(
            incident_id=incident_id,
            opened_at_ms=at,
            action=action,
            rule=rule,
            model=series[0],
            model_version=series[1],
            deployment=series[2],
            evidence_from_ms=start,
            evidence_to_ms=at,
            summary=summary,
            idempotency_key=key,
        )

    # -- windows -------------------------------------------------------------------------------

    def observe(self, stats: WindowStats) -> EngineOutput:
        """Take one window snapshot (final or not) and evaluate its series on the
        ``evaluation_windows`` windows ending at that window. A snapshot of an older window
        (late evidence, e.g. semantic findings from a lagging embed worker) is judged with
        its own neighbours, not drowned by the newest windows."""
        series = (stats.model, stats.model_version, stats.deployment)
        windows = self._windows.setdefault(series, {})
        windows[stats.window_start_ms] = stats
        for start in sorted(windows)[: -max(KEPT_WINDOWS, self.policy.evaluation_windows)]:
            del windows[start]
        span = [w for start, w in sorted(windows.items()) if start <= stats.window_start_ms]
        if not span:  # older than every window kept: history, not news
            return EngineOutput()
        merged = Merged.of(span[-self.policy.evaluation_windows :])
        self._last_merged[series] = merged
        out = EngineOutput()
        for evaluation in self._evaluate(series, merged):
            out.extend(self._transition(series, merged, evaluation))
        if stats.deployment in self.policy.canary_deployments and self.policy.stages:
            out.extend(self._advance(series, stats))
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

    def _evaluate(self, series: Series, m: Merged) -> Iterator[Evaluation]:
        """Rollback rules (canaries only) first, then kill conditions: a kill engaged by this
        snapshot must not suppress the rollbacks the same evidence calls for."""
        p = self.policy
        model, _, deployment = series
        r, k = p.rollback, p.kill_switch
        if deployment in p.canary_deployments:
            yield from self._counts(m, [("rollback.safety_incidents", r.safety_incidents)])
            yield from self._rates(m, [
                ("rollback.error_rate", r.error_rate, m.errors),
                ("rollback.complaint_rate", r.complaint_rate, m.complaints),
                *((f"rollback.{name}_rate", rule, m.flagged([name]))
                  for name, rule in r.detector_rates.items()),
            ])  # fmt: skip
            yield from self._latency_and_bias(m)
            if r.canary_vs_stable.enabled:
                yield from self._compare(model, m)
        yield from self._rates(m, [
            ("kill.safety_critical", k.safety_critical, m.flagged(k.safety_detectors)),
            ("kill.cascade_failure", k.cascade_failure, m.errors),
        ])  # fmt: skip
        yield from self._counts(m, [("kill.data_breach", k.data_breach)])

    def _rates(self, m: Merged, rules: list[tuple[str, RateRule, int]]) -> Iterator[Evaluation]:
        """Rate rules: the Wilson bounds of hits / events; the action is the name's prefix."""
        for name, rule, hits in rules:
            if rule.enabled:
                yield Evaluation(
                    name, name.split(".")[0], wilson(hits, m.events, self.policy.confidence),
                    rule.threshold, m.events, rule.min_samples or self.policy.min_samples,
                )  # fmt: skip

    def _counts(self, m: Merged, rules: list[tuple[str, CountRule]]) -> Iterator[Evaluation]:
        """Count rules: more than ``max_count`` flags of the rule's detectors."""
        for name, rule in rules:
            if rule.enabled:
                n = m.flagged(rule.detectors)
                yield Evaluation(
                    name, name.split(".")[0], Bound(n, n, n), rule.max_count, m.events,
                    rule.min_samples or self.policy.min_samples, count_rule=True,
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
            for d in group_disparities(m.groups, confidence=2 * c - 1):
                yield Evaluation(f"rollback.bias_disparity.{d.metric}", "rollback",
                                 Bound(d.value, d.low, d.high), r.bias_disparity.threshold,
                                 m.events, r.bias_disparity.min_samples or p.min_samples,
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
                a, b = canary.errors, stable.errors
            else:
                a, b = canary.flagged([rate]), stable.flagged([rate])
            bound = rate_difference(a, canary.events, b, stable.events, c)
            yield Evaluation(
                f"rollback.canary_vs_stable.{rate}",
                "rollback",
                bound,
                rule.margin,
                min(canary.events, stable.events),
                rule.min_samples or self.policy.min_samples,
                detail=f"stable n={stable.events}",
            )

    # -- verdicts ------------------------------------------------------------------------------

    def latest(self) -> list[tuple[Series, Evaluation]]:
        """Each rule's newest evaluation per series: value, bounds and threshold, for the
        canary-vs-stable dashboard's confidence bands."""
        return [(series, e) for (series, _), e in self._latest.items()]

    def _transition(self, series: Series, m: Merged, e: Evaluation) -> EngineOutput:
        """Record a decision when the rule's verdict changes; act on one that fires."""
        self._latest[(series, e.rule)] = e
        state = self._rules.setdefault((series, e.rule), RuleState())
        outcome = self._next_outcome(state, m, e)
        if outcome is None or outcome == state.last_outcome:
            return EngineOutput()
        state.last_outcome = outcome
        model, version, deployment = series
        key = f"{e.action}:{model}:{version}:{deployment}:{e.rule}:{state.episode_ms}"
        decision = self._decision(series, e, m, key, self._recorded(series, e.action, outcome))
        out = EngineOutput(decisions=[decision])
        if decision.outcome == "fire":
            out.extend(self._act(series, e, decision))
        return out

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

    def _recorded(self, series: Series, action: str, outcome: str) -> str:
        """The outcome to record: a fire that must not act is recorded as why (dry run, a
        rollback under an engaged kill switch, a running cooldown)."""
        if outcome != "fire":
            return outcome
        model, _, deployment = series
        if self.policy.dry_run:
            return "dry_run"
        if action == "rollback" and self.engaged(model, deployment):
            return "suppressed"
        if self._cooling(series, action):
            return "cooldown"
        return outcome

    def _decision(
        self, series: Series, e: Evaluation, span: Merged, key: str, outcome: str
    ) -> Decision:
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
            confidence=self.policy.confidence,
            dry_run=self.policy.dry_run,
            detail=e.detail,
        )

    def _act(self, series: Series, e: Evaluation, decision: Decision) -> EngineOutput:
        """A firing decision's action: a kill engages the kill switch; a rollback is sent with
        its incident. Starts the cooldown of the action on this series."""
        self._last_action_ms[(*series, e.action)] = decision.decided_at_ms
        key, at = decision.idempotency_key, decision.decided_at_ms
        reason = (
            f"{e.rule}: observed {e.bound.value:.4g}, bound {e.bound.low:.4g} > "
            f"threshold {e.threshold:.4g} (n={e.n})"
        )
        if e.action == "kill":
            model, version, deployment = series
            return self.set_kill(
                model, deployment, engage=True, reason=reason, actor="policy",
                model_version=version, rule=e.rule, idempotency_key=key, decision=decision,
            )  # fmt: skip
        incident = incident_id_for(key)
        request = action_request(
            "rollback", series, key, at, e.rule, reason, incident_id=incident, decision=decision
        )
        return EngineOutput(
            actions=[request],
            incidents=[self._incident(incident, "rollback", e.rule, series, at, reason, key)],
        )

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
