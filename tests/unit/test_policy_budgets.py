"""Token and cost budgets: one alert per threshold per calendar period, counted exactly once
from window snapshots (re-published, replayed, or replayed into a restarted engine)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import msgspec
import pytest
import yaml

from monitor.config import AlertmanagerSettings
from monitor.errors import ConfigError
from monitor.policy.alertmanager import incident_alerts
from monitor.policy.budgets import KEPT_WINDOWS, period_bounds
from monitor.policy.config import Policy, Webhooks, load_policy
from monitor.policy.dispatch import Dispatcher
from monitor.policy.engine import EngineOutput, PolicyEngine, now_ms
from monitor.policy.records import ActionAttempt
from monitor.windows.stats import WindowStats
from tests.unit.test_policy import window

DAY0 = int(datetime(2026, 11, 23, tzinfo=UTC).timestamp()) * 1000
MINUTE = 60_000
DAY = 86_400_000
DAILY = {"name": "daily", "model": "m", "limit": 10.0}  # $10 a day, 50/80/100 %


def spend(
    minute: int, cost: float = 1.0, *, version: int = 1, day: int = 0, model: str = "m",
    deployment: str = "stable", model_version: str = "v1", tokens: tuple[int, int] = (0, 0),
    events: int = 10,
) -> WindowStats:  # fmt: skip
    """A snapshot of the window starting ``minute`` minutes into day ``day``."""
    start = DAY0 + day * DAY + minute * MINUTE
    return msgspec.structs.replace(
        window(0, events, deployment=deployment, version=model_version), model=model,
        window_start_ms=start, window_end_ms=start + MINUTE, cost_usd=cost,
        input_tokens=tokens[0], output_tokens=tokens[1], version=version,
    )  # fmt: skip


def engine(
    *budgets: dict[str, object], store: dict[str, str] | None = None,
    incidents: dict[str, str] | None = None, **overrides: object,
) -> PolicyEngine:  # fmt: skip
    clock = iter(range(DAY0, DAY0 + 10**10, 1000))
    policy = Policy.model_validate({"budgets": list(budgets), **overrides})
    return PolicyEngine(policy, {}, incidents=incidents, budgets=store, clock=lambda: next(clock))


def feed(e: PolicyEngine, windows: Iterable[WindowStats]) -> EngineOutput:
    out = EngineOutput()
    for w in windows:
        out.extend(e.observe(w))
    return out


def fired(out: EngineOutput) -> list[str]:
    return [d.rule for d in out.decisions if d.action == "budget"]


def test_each_threshold_fires_once_per_period() -> None:
    e = engine(DAILY)
    out = feed(e, [spend(m) for m in range(12)])  # $1 a minute: $12 by the 12th window
    assert fired(out) == ["budget.daily.50", "budget.daily.80", "budget.daily.100"]
    fifty, eighty, hundred = [d for d in out.decisions if d.action == "budget"]
    assert (fifty.observed, eighty.observed, hundred.observed) == (5.0, 8.0, 10.0)
    assert (fifty.threshold, hundred.threshold) == (5.0, 10.0)
    assert hundred.outcome == "fire" and hundred.n == 100 and hundred.windows == 10
    assert hundred.idempotency_key == f"budget:m:::budget.daily.100:{DAY0}"
    assert hundred.window_start_ms == DAY0 and hundred.window_end_ms == DAY0 + 10 * MINUTE
    assert [(a.action, a.rule) for a in out.actions] == [
        ("budget", "budget.daily.50"), ("budget", "budget.daily.80"),
        ("budget", "budget.daily.100"),
    ]  # fmt: skip
    assert all(a.incident_id and a.decision is not None for a in out.actions)
    # One firing alert at a time: a higher threshold resolves the lower one's incident.
    rows = {i.incident_id: i for i in out.incidents}
    assert sorted((i.rule, i.status) for i in rows.values()) == [
        ("budget.daily.100", "open"), ("budget.daily.50", "resolved"),
        ("budget.daily.80", "resolved"),
    ]  # fmt: skip
    assert [i.rule for i in e.open_incidents()] == ["budget.daily.100"]
    (spent,) = e.budget_spend()
    assert (spent.budget, spent.model, spent.spent, spent.ratio) == ("daily", "m", 12.0, 1.2)


def test_one_window_crossing_every_threshold_fires_each_once() -> None:
    out = feed(engine(DAILY), [spend(0, 0.5), spend(1, 30.0), spend(2, 5.0)])
    assert fired(out) == ["budget.daily.50", "budget.daily.80", "budget.daily.100"]


def test_a_new_period_starts_from_zero_and_ends_the_last_ones_incidents() -> None:
    e = engine(DAILY)
    first = feed(e, [spend(m, 2.0, model_version="v1") for m in range(5)])
    assert fired(first) == ["budget.daily.50", "budget.daily.80", "budget.daily.100"]
    out = feed(e, [spend(m, 2.0, day=1) for m in range(3)])  # $6 of the next day's $10
    assert fired(out) == ["budget.daily.50"]
    assert out.decisions[0].idempotency_key == f"budget:m:::budget.daily.50:{DAY0 + DAY}"
    ended = [i for i in out.incidents if i.rule == "budget.daily.100"]
    assert [i.status for i in ended] == ["resolved"]
    assert ended[0].resolved_at_ms <= DAY0 + DAY
    assert [i.rule for i in e.open_incidents()] == ["budget.daily.50"]
    assert [s.spent for s in e.budget_spend()] == [6.0]
    # A late window of the day before still counts there, but fires nothing twice.
    assert fired(e.observe(spend(700, 50.0))) == []


def test_snapshots_and_replays_count_each_window_once() -> None:
    e = engine(DAILY)
    # A window re-published while it fills: its newest snapshot counts, not their sum.
    snapshots = [spend(0, 1.0, version=1), spend(0, 3.0, version=2), spend(0, 4.0, version=3)]
    assert fired(feed(e, snapshots)) == []
    assert e.budget_spend()[0].spent == 4.0
    assert fired(e.observe(spend(0, 3.0, version=2))) == []  # an older snapshot: history
    assert e.budget_spend()[0].spent == 4.0
    out = feed(e, [spend(1, 2.0)])
    assert fired(out) == ["budget.daily.50"]
    # Everything replayed, in and out of order: no spend added, nothing fired again.
    replayed = feed(e, [*snapshots, spend(1, 2.0), *reversed(snapshots)])
    assert fired(replayed) == [] and not replayed.actions and not replayed.incidents
    assert e.budget_spend()[0].spent == 6.0


def test_a_restarted_engine_keeps_spend_and_fired_thresholds() -> None:
    store: dict[str, str] = {}
    before = engine(DAILY, store=store)
    assert fired(feed(before, [spend(m, 3.0) for m in range(2)])) == ["budget.daily.50"]
    after = engine(DAILY, store=store)  # the worker restarts, its table restored
    assert [i.rule for i in after.open_incidents()] == ["budget.daily.50"]
    # It replays what it had not committed, then goes on.
    out = feed(after, [spend(1, 3.0), spend(2, 3.0), spend(3, 3.0)])
    assert fired(out) == ["budget.daily.80", "budget.daily.100"]
    assert after.budget_spend()[0].spent == 12.0
    again = engine(DAILY, store=store)
    replayed = feed(again, [spend(m, 3.0) for m in range(4)])
    assert fired(replayed) == [] and not replayed.actions and not replayed.incidents


def test_old_windows_settle_and_stay_counted_once() -> None:
    e = engine({**DAILY, "limit": 1000.0})
    feed(e, [spend(m, 1.0) for m in range(KEPT_WINDOWS + 30)])
    assert e.budget_spend()[0].spent == KEPT_WINDOWS + 30
    feed(e, [spend(m, 1.0, version=2) for m in range(KEPT_WINDOWS + 30)])  # replayed
    assert e.budget_spend()[0].spent == KEPT_WINDOWS + 30
    state = msgspec.json.decode(next(iter(e.budgets.store.values())))
    assert sum(len(windows) for windows in state["windows"].values()) == KEPT_WINDOWS


def test_tokens_models_and_deployments() -> None:
    tokens = {"name": "tokens", "model": "chat-*", "metric": "total_tokens", "period": "hour",
              "limit": 1000, "thresholds": [0.9], "deployments": ["stable"]}  # fmt: skip
    exact = {"name": "input", "model": "chat-b", "metric": "input_tokens", "limit": 300,
             "thresholds": [1.0]}  # fmt: skip
    e = engine(tokens, exact)
    out = feed(e, [
        spend(0, model="chat-a", tokens=(400, 200)),
        spend(1, model="chat-b", tokens=(300, 200)),
        spend(2, model="chat-a", tokens=(300, 0), deployment="canary"),  # not in the budget
        spend(3, model="other", tokens=(5000, 0)),  # not a chat-* model
        spend(4, model="chat-a", tokens=(200, 100)),
    ])  # fmt: skip
    assert [(d.rule, d.model) for d in out.decisions if d.action == "budget"] == [
        ("budget.input.100", "chat-b"), ("budget.tokens.90", "chat-a"),
    ]  # fmt: skip
    assert {(s.budget, s.model): s.spent for s in e.budget_spend()} == {
        ("tokens", "chat-a"): 900, ("tokens", "chat-b"): 500, ("input", "chat-b"): 300,
    }  # fmt: skip


def test_dry_run_records_and_never_acts() -> None:
    out = feed(engine(DAILY, dry_run=True), [spend(m, 5.0) for m in range(3)])
    assert [d.outcome for d in out.decisions if d.action == "budget"] == ["dry_run"] * 3
    assert not out.actions and not out.incidents


def test_budgets_never_hold_back_a_rollback() -> None:
    e = engine(DAILY, evaluation_windows=1, cooldown_s=0)
    feed(e, [spend(0, 20.0, deployment="canary", model_version="v2")])
    storm = msgspec.structs.replace(spend(1, deployment="canary", model_version="v2",
                                          events=400), errors=80)  # fmt: skip
    out = e.observe(storm)
    assert [a.action for a in out.actions] == ["rollback"]


def test_budget_alerts_are_warnings_about_the_model() -> None:
    out = feed(engine(DAILY), [spend(0, 6.0)])
    (incident,) = out.incidents
    (alert,) = incident_alerts(incident, AlertmanagerSettings(), now_s=DAY0 / 1000)
    assert alert["labels"]["severity"] == "warning"
    assert alert["labels"]["rule"] == "budget.daily.50" and alert["labels"]["model"] == "m"
    assert alert["annotations"]["summary"] == "budget of m: budget.daily.50"


def test_calendar_periods_in_utc() -> None:
    at = int(datetime(2026, 12, 15, 13, 45, tzinfo=UTC).timestamp()) * 1000

    def ms(year: int, month: int, day: int, hour: int = 0) -> int:
        return int(datetime(year, month, day, hour, tzinfo=UTC).timestamp()) * 1000

    assert period_bounds("hour", at) == (ms(2026, 12, 15, 13), ms(2026, 12, 15, 14))
    assert period_bounds("day", at) == (ms(2026, 12, 15), ms(2026, 12, 16))
    assert period_bounds("month", at) == (ms(2026, 12, 1), ms(2027, 1, 1))
    assert period_bounds("month", ms(2026, 2, 28, 23)) == (ms(2026, 2, 1), ms(2026, 3, 1))


@pytest.mark.parametrize(
    ("budgets", "message"),
    [
        ([{"name": "a", "limit": 1, "thresholds": [0.8, 0.5]}], "increasing order"),
        ([{"name": "a", "limit": 0}], "greater than 0"),
        ([{"name": "a b", "limit": 1}], "budgets.0.name"),
        ([{"name": "a", "limit": 1, "metric": "dollars"}], "budgets.0.metric"),
        ([{"name": "a", "limit": 1}, {"name": "a", "limit": 2}], "names must be unique"),
    ],
)
def test_invalid_budgets_are_refused(
    tmp_path: Path, budgets: list[dict[str, object]], message: str
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(msgspec.json.encode({"budgets": budgets}).decode())  # JSON is YAML
    with pytest.raises(ConfigError, match=message):
        load_policy(path)


def test_the_shipped_policy_example_budget_is_valid() -> None:
    text = Path("deploy/policy/policy.yaml").read_text()
    example = "\n".join(
        line.removeprefix("# ") for line in text.splitlines() if line.startswith("# budgets:")
        or line.startswith("#   ")
    )  # fmt: skip
    policy = Policy.model_validate(yaml.safe_load(example))
    assert [b.name for b in policy.budgets] == ["daily-cost", "hourly-tokens"]


def test_budget_actions_go_to_the_budget_webhooks_signed() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    hooks = Webhooks(budget=["http://finops.test/hook"], rollback=["http://rollouts.test/hook"])
    client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    dispatcher = Dispatcher(hooks, b"0123456789abcdef", client=client)
    (action,) = feed(engine(DAILY), [spend(0, 6.0)]).actions
    attempts: list[ActionAttempt] = []

    async def record(attempt: ActionAttempt) -> None:
        attempts.append(attempt)

    asyncio.run(dispatcher.deliver(msgspec.structs.replace(action, created_at_ms=now_ms()), record))
    (request,) = seen
    assert str(request.url) == "http://finops.test/hook"
    assert request.headers["X-LLM-Monitor-Event"] == "budget"
    assert msgspec.json.decode(request.content)["rule"] == "budget.daily.50"
    assert [a.outcome for a in attempts] == ["delivered"]


def test_budgets_share_the_worker_table_without_mixing() -> None:
    from streams.policy import BUDGET_PREFIX, INCIDENT_PREFIX, _Table

    raw: dict[str, str] = {}  # stands for the faust table and its changelog

    def worker() -> PolicyEngine:
        policy = Policy.model_validate({"budgets": [DAILY]})
        return PolicyEngine(
            policy, _Table(raw), incidents=_Table(raw, INCIDENT_PREFIX),
            budgets=_Table(raw, BUDGET_PREFIX), clock=lambda: DAY0 + 3_600_000,
        )  # fmt: skip

    e = worker()
    e.set_kill("m", "canary", engage=True, reason="r", actor="cli")
    feed(e, [spend(0, 6.0)])
    assert set(raw) == {"m/canary", "incident|m/canary", f"budget|daily|m|{DAY0}"}
    assert [s.model for s in e.states()] == ["m"]
    restarted = worker()
    assert sorted(i.action for i in restarted.open_incidents()) == ["budget", "kill"]
    assert [s.spent for s in restarted.budget_spend()] == [6.0]


def test_incidents_of_an_ended_period_are_not_re_sent() -> None:
    policy = Policy.model_validate({"budgets": [DAILY]})
    e = PolicyEngine(policy, {}, clock=lambda: DAY0 + DAY + 1)  # the day is over
    (incident,) = e.observe(spend(0, 6.0)).incidents
    assert incident.status == "open" and e.open_incidents() == []  # Alertmanager expires it


def test_stored_periods_of_removed_budgets_or_other_versions_are_forgotten() -> None:
    store = {"x": '{"budget": 3}'}
    feed(engine(DAILY, {**DAILY, "name": "gone"}, store=store), [spend(0, 1.0)])
    assert set(store) == {f"daily|m|{DAY0}", f"gone|m|{DAY0}"}
    e = engine(DAILY, store=store)  # "gone" removed from the policy
    assert [s.budget for s in e.budget_spend()] == ["daily"]
    assert set(store) == {f"daily|m|{DAY0}"}
