"""Token and cost budgets: spend per calendar period (UTC), one alert per threshold per period.

A budget (``budgets:`` in the policy file) sums ``cost_usd``, ``input_tokens``,
``output_tokens`` or their total, per model, over the windows of every series whose model
matches its glob, for the calendar hour, day or month (UTC) that holds each window's start.
When the spend reaches a threshold (50 %, 80 % and 100 % of the limit by default) the policy
records a decision ``budget.<name>.<percent>`` (action ``budget``), opens an alert-only
incident for it (pushed to Alertmanager like every incident, severity ``warning``; the
incident of a lower threshold of the same period resolves as the higher one opens) and sends
a ``budget`` webhook. Each threshold fires once per period: the idempotency key names the
model, the rule and the period's start. A new period starts from zero and resolves the
previous period's incidents.

Windows are re-published as snapshots while they change, and replayed after a crash, so a
window's spend is counted as its newest snapshot (highest ``version``), never added twice:
each period keeps, per series, the latest spend of its newest ``KEPT_WINDOWS`` windows, and
settles older ones into a running total (a snapshot of a settled window is history: ignored).
The periods' state (spend, thresholds fired, incidents) lives in a caller-supplied mapping
of JSON text (the worker's changelog-backed kill-switch table), so a restarted worker neither
forgets what was spent nor fires a threshold twice. Per (budget, model) the newest
``KEPT_PERIODS`` periods are kept: late windows of the previous period still count in it.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Final

import msgspec

from monitor.policy.config import Budget, BudgetMetric, BudgetPeriod, Policy
from monitor.policy.grouping import RESOLVED, IncidentState, incident_id_for
from monitor.policy.records import ActionRequest, Decision, Incident, TimelineEntry
from monitor.policy.state import decode_state
from monitor.windows.stats import WindowStats

BUDGET_ACTION: Final = "budget"
NANO: Final = 1_000_000_000
HOUR_MS: Final = 3_600_000
DAY_MS: Final = 24 * HOUR_MS
KEPT_WINDOWS: Final = 120  # per series and period, kept apart before they settle
KEPT_PERIODS: Final = 2  # per (budget, model): the newest period and the one before
TOLERANCE: Final = 1e-12  # relative: 0.8 × 100 tokens is reached by 80 tokens


def period_bounds(period: BudgetPeriod, at_ms: int) -> tuple[int, int]:
    """Start and end (epoch ms, end excluded) of the calendar period (UTC) holding ``at_ms``."""
    if period == "hour":
        start = at_ms - at_ms % HOUR_MS
        return start, start + HOUR_MS
    if period == "day":
        start = at_ms - at_ms % DAY_MS
        return start, start + DAY_MS
    day = datetime.fromtimestamp(at_ms // 1000, UTC)
    first = datetime(day.year, day.month, 1, tzinfo=UTC)
    following = datetime(day.year + day.month // 12, day.month % 12 + 1, 1, tzinfo=UTC)
    return int(first.timestamp()) * 1000, int(following.timestamp()) * 1000


class Spend(msgspec.Struct, array_like=True):
    """What some windows spent (a window's: as of its snapshot ``version``). Cost in
    nano-dollars, as the windows sum it, so totals are exact."""

    version: int = 0
    windows: int = 0
    events: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_nusd: int = 0

    @classmethod
    def of(cls, stats: WindowStats) -> Spend:
        return cls(
            version=stats.version, windows=1, events=stats.events,
            input_tokens=stats.input_tokens, output_tokens=stats.output_tokens,
            cost_nusd=round(stats.cost_usd * NANO),
        )  # fmt: skip

    def sums(self) -> tuple[int, int, int, int, int]:
        return (self.windows, self.events, self.input_tokens, self.output_tokens,
                self.cost_nusd)  # fmt: skip

    def add(self, other: Spend) -> None:
        self.windows += other.windows
        self.events += other.events
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cost_nusd += other.cost_nusd

    def value(self, metric: BudgetMetric) -> float:
        """The spend in the budget's unit: USD or tokens."""
        if metric == "cost_usd":
            return self.cost_nusd / NANO
        if metric == "input_tokens":
            return float(self.input_tokens)
        if metric == "output_tokens":
            return float(self.output_tokens)
        return float(self.input_tokens + self.output_tokens)


class PeriodState(msgspec.Struct, kw_only=True):
    """One budget's period for one model."""

    budget: str
    model: str
    period_start_ms: int
    period_end_ms: int
    settled: Spend = msgspec.field(default_factory=Spend)
    # Per series (JSON [version, deployment]): windows starting before this are in ``settled``.
    settled_below: dict[str, int] = msgspec.field(default_factory=dict)
    windows: dict[str, dict[int, Spend]] = msgspec.field(default_factory=dict)
    fired: list[float] = msgspec.field(default_factory=list)
    incidents: list[IncidentState] = msgspec.field(default_factory=list)
    window_end_ms: int = 0  # newest window end counted
    closed: bool = False  # a later period began: its incidents are resolved

    @property
    def store_key(self) -> str:
        return f"{self.budget}|{self.model}|{self.period_start_ms}"

    def total(self) -> Spend:
        total = Spend()
        total.add(self.settled)
        for windows in self.windows.values():
            for spend in windows.values():
                total.add(spend)
        return total

    def count(self, series: str, start_ms: int, spend: Spend) -> bool:
        """Take a window snapshot's spend; False when it changes nothing (an older or equal
        snapshot, or a window already settled)."""
        if start_ms < self.settled_below.get(series, 0):
            return False
        windows = self.windows.setdefault(series, {})
        known = windows.get(start_ms)
        if known is not None and (known.version >= spend.version or known.sums() == spend.sums()):
            return False
        windows[start_ms] = spend
        if len(windows) > KEPT_WINDOWS:
            for start in sorted(windows)[:-KEPT_WINDOWS]:
                self.settled.add(windows.pop(start))
                self.settled_below[series] = max(self.settled_below.get(series, 0), start + 1)
        return True


@dataclass(frozen=True)
class BudgetSpend:
    """A budget's spend in its newest period, for the gauges."""

    budget: str
    model: str
    metric: str
    period_start_ms: int
    spent: float
    limit: float

    @property
    def ratio(self) -> float:
        return self.spent / self.limit


@dataclass
class BudgetOutput:
    decisions: list[Decision] = field(default_factory=list)
    actions: list[ActionRequest] = field(default_factory=list)
    incidents: list[Incident] = field(default_factory=list)


_decoder = msgspec.json.Decoder(PeriodState)


class BudgetBook:
    """The budgets' periods: counts window snapshots into them and fires their thresholds."""

    def __init__(
        self,
        policy: Policy,
        store: MutableMapping[str, str] | None = None,
        *,
        clock: Callable[[], int],
    ) -> None:
        self.policy = policy
        self.store: MutableMapping[str, str] = {} if store is None else store
        self._clock = clock
        self._budgets = [b for b in policy.budgets if b.enabled]
        self._states: dict[str, PeriodState] = {}
        self._periods: dict[tuple[str, str], list[int]] = {}  # starts kept, oldest first
        self._loaded = False

    def observe(self, stats: WindowStats) -> BudgetOutput:
        """Count one window snapshot into every budget it belongs to; fire what it tips."""
        out = BudgetOutput()
        for budget in self._budgets:
            if fnmatchcase(stats.model, budget.model) and (
                not budget.deployments or stats.deployment in budget.deployments
            ):
                self._observe(budget, stats, out)
        return out

    def _observe(self, budget: Budget, stats: WindowStats, out: BudgetOutput) -> None:
        state = self._period(budget, stats.model, stats.window_start_ms, out)
        if state is None:  # older than every period kept: history
            return
        series = msgspec.json.encode([stats.model_version, stats.deployment]).decode()
        if not state.count(series, stats.window_start_ms, Spend.of(stats)):
            return
        state.window_end_ms = max(state.window_end_ms, stats.window_end_ms)
        total = state.total()
        spent = total.value(budget.metric)
        for threshold in budget.thresholds:
            reached = spent >= threshold * budget.limit * (1 - TOLERANCE)
            if reached and threshold not in state.fired:
                state.fired.append(threshold)
                self._fire(budget, state, threshold, spent, total, out)
        self._save(state)

    def _fire(
        self, budget: Budget, state: PeriodState, threshold: float, spent: float, total: Spend,
        out: BudgetOutput,
    ) -> None:  # fmt: skip
        """The decision, incident and webhook of ``threshold`` reached in ``state``'s period
        (in dry-run mode, the decision only)."""
        rule = f"budget.{budget.name}.{threshold * 100:g}"
        key = f"{BUDGET_ACTION}:{state.model}:::{rule}:{state.period_start_ms}"
        at, dry = self._clock(), self.policy.dry_run
        since = datetime.fromtimestamp(state.period_start_ms // 1000, UTC).isoformat()
        detail = (
            f"{_amount(spent, budget.metric)} of {_amount(budget.limit, budget.metric)} "
            f"{budget.metric} ({spent / budget.limit:.1%}) this {budget.period} "
            f"(from {since.replace('+00:00', 'Z')}), threshold {threshold:.0%}"
        )
        reason = f"{rule}: {detail}"
        incident_id = "" if dry else incident_id_for(key)
        decision = Decision(
            idempotency_key=key, decided_at_ms=at, rule=rule, action=BUDGET_ACTION,
            outcome="dry_run" if dry else "fire", model=state.model, model_version="",
            deployment="", observed=spent, bound_low=spent, bound_high=spent,
            threshold=threshold * budget.limit, n=total.events,
            window_start_ms=state.period_start_ms, window_end_ms=state.window_end_ms,
            windows=total.windows, confidence=1.0, dry_run=dry, detail=detail,
            incident_id=incident_id,
        )  # fmt: skip
        out.decisions.append(decision)
        if dry:
            return
        for lower in state.incidents:
            if lower.is_open:
                _resolve(lower, at, key, f"superseded by {rule}")
                out.incidents.append(_save(lower))
        incident = IncidentState(
            incident_id=incident_id, model=state.model, deployment="", model_version="",
            action=BUDGET_ACTION, rule=rule, summary=reason, idempotency_key=key,
            opened_at_ms=at, updated_at_ms=at, evidence_from_ms=state.period_start_ms,
        )  # fmt: skip
        incident.note(_entry(at, "opened", rule, key, reason))
        if state.closed:  # late windows of a period that has ended
            _resolve(incident, at, key, "the period had already ended")
        state.incidents.append(incident)
        out.incidents.append(_save(incident))
        out.actions.append(
            ActionRequest(
                action=BUDGET_ACTION, idempotency_key=key, created_at_ms=at, model=state.model,
                model_version="", deployment="", rule=rule, reason=reason,
                incident_id=incident_id, decision=decision,
            )
        )  # fmt: skip

    # -- periods -------------------------------------------------------------------------------

    def _period(
        self, budget: Budget, model: str, at_ms: int, out: BudgetOutput
    ) -> PeriodState | None:
        """The period of ``budget`` and ``model`` holding ``at_ms``; a new newest one closes
        the older ones (resolving their incidents) and forgets all but ``KEPT_PERIODS``."""
        self._load()
        start, end = period_bounds(budget.period, at_ms)
        key = f"{budget.name}|{model}|{start}"
        state = self._states.get(key)
        if state is not None:
            return state
        starts = self._periods.setdefault((budget.name, model), [])
        if len(starts) >= KEPT_PERIODS and start < starts[0]:
            return None
        state = PeriodState(
            budget=budget.name, model=model, period_start_ms=start, period_end_ms=end,
            closed=bool(starts) and start < starts[-1],
        )  # fmt: skip
        self._states[key] = state
        starts.append(start)
        starts.sort()
        if start == starts[-1]:
            for older in starts[:-1]:
                self._close(self._states[f"{budget.name}|{model}|{older}"], out)
        while len(starts) > KEPT_PERIODS:
            dropped = self._states.pop(f"{budget.name}|{model}|{starts.pop(0)}")
            self.store.pop(dropped.store_key, None)
        return state

    def _close(self, state: PeriodState, out: BudgetOutput) -> None:
        if state.closed:
            return
        state.closed = True
        for incident in state.incidents:
            if incident.is_open:
                at = min(self._clock(), state.period_end_ms)
                _resolve(incident, at, incident.idempotency_key, "the period ended")
                out.incidents.append(_save(incident))
        self._save(state)

    def _load(self) -> None:
        """Once, the periods stored by an earlier run (a restarted worker); those of budgets
        no longer in the policy, or that do not decode (another version's), are forgotten."""
        if self._loaded:
            return
        self._loaded = True
        named = {b.name for b in self.policy.budgets}
        for key, raw in list(self.store.items()):
            state = decode_state(_decoder, raw, f"budget {key}")
            if state is None or state.budget not in named:
                del self.store[key]
                continue
            self._states[state.store_key] = state
            starts = self._periods.setdefault((state.budget, state.model), [])
            starts.append(state.period_start_ms)
            starts.sort()

    def _save(self, state: PeriodState) -> None:
        self.store[state.store_key] = msgspec.json.encode(state).decode()

    # -- reading -------------------------------------------------------------------------------

    def open_incidents(self) -> list[Incident]:
        """Open budget incidents of periods that have not ended yet (re-sent while they
        fire; those of an ended period expire in Alertmanager and resolve on the next
        period's first window)."""
        self._load()
        now = self._clock()
        return [
            incident.record()
            for state in self._states.values()
            if state.period_end_ms > now
            for incident in state.incidents
            if incident.is_open
        ]

    def spend(self) -> list[BudgetSpend]:
        """Each budget's spend per model in its newest period."""
        self._load()
        budgets = {b.name: b for b in self._budgets}
        spends = []
        for (name, model), starts in self._periods.items():
            budget = budgets.get(name)
            if budget is None or not starts:
                continue
            state = self._states[f"{name}|{model}|{starts[-1]}"]
            spent = state.total().value(budget.metric)
            spends.append(BudgetSpend(name, model, budget.metric, state.period_start_ms, spent,
                                      budget.limit))  # fmt: skip
        return spends


def _amount(value: float, metric: BudgetMetric) -> str:
    return f"${value:,.2f}" if metric == "cost_usd" else f"{value:,.0f}"


def _entry(at: int, kind: str, rule: str, key: str, detail: str) -> TimelineEntry:
    return TimelineEntry(
        at_ms=at, kind=kind, rule=rule, model_version="", action=BUDGET_ACTION,
        idempotency_key=key, detail=detail,
    )  # fmt: skip


def _resolve(incident: IncidentState, at: int, key: str, why: str) -> None:
    incident.status, incident.resolved_at_ms = RESOLVED, at
    incident.note(_entry(at, "resolved", "", key, f"{why}: {incident.rule}"))


def _save(incident: IncidentState) -> Incident:
    """The incident's next revision (stored with its period by the caller)."""
    incident.revision += 1
    return incident.record()
