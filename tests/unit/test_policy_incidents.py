"""Incident grouping: one incident per (model, deployment) episode, one rollback and at most one
kill webhook; later rules attach as evidence; resolution with the rules' hysteresis and a quiet
period; the same windows replayed (into the same engine, a fresh one, or a restarted one) act
once."""

from __future__ import annotations

from collections.abc import Iterable

from monitor.policy.config import Policy
from monitor.policy.engine import EngineOutput, PolicyEngine
from monitor.policy.records import Incident
from monitor.windows.stats import WindowStats
from tests.unit.test_policy import T0, window

TOXIC = {"toxicity": 20}  # 5 % of 400: safety incidents and the toxicity rate, not a kill
LEAK = {"pii": 2}


def engine(
    killswitch: dict[str, str] | None = None, incidents: dict[str, str] | None = None,
    **overrides: object,
) -> PolicyEngine:  # fmt: skip
    clock = iter(range(T0, T0 + 10**9, 1000))
    policy = Policy.model_validate({
        "evaluation_windows": 1, "cooldown_s": 0, "incident_resolve_after_s": 0, **overrides,
    })  # fmt: skip
    return PolicyEngine(policy, killswitch, incidents=incidents, clock=lambda: next(clock))


def feed(e: PolicyEngine, windows: Iterable[WindowStats]) -> EngineOutput:
    out = EngineOutput()
    for w in windows:
        out.extend(e.observe(w))
    return out


def acting(out: EngineOutput) -> list[tuple[str, str, str]]:
    return [(a.action, a.rule, a.incident_id) for a in out.actions]


def latest(out: EngineOutput) -> dict[str, Incident]:
    rows: dict[str, Incident] = {}
    for incident in out.incidents:
        known = rows.get(incident.incident_id)
        if known is None or incident.revision > known.revision:
            rows[incident.incident_id] = incident
    return rows


# A canary that goes bad on every rule in turn, then is killed for a leak, then recovers.
EPISODE = [
    window(0, 400, 0),
    window(1, 400, 80),  # error storm: the rollback
    window(2, 400, 80, flags=TOXIC),  # toxicity on top: attached
    window(3, 400, 80, flags={**TOXIC, **LEAK}),  # a leak: the kill, escalating
    window(4, 400, 80, flags={**TOXIC, **LEAK}),  # nothing new
    window(5, 400, 0),  # every rule recovers; the kill switch still holds the incident
]


def test_rules_of_one_deployment_group_into_one_incident_with_one_action_each() -> None:
    e = engine()
    out = feed(e, EPISODE)
    (incident,) = latest(out).values()
    iid = incident.incident_id
    assert acting(out) == [
        ("rollback", "rollback.error_rate", iid),
        ("kill", "kill.data_breach", iid),
    ]
    fired = {(d.rule, d.outcome) for d in out.decisions if d.outcome in ("fire", "attached")}
    assert fired == {
        ("rollback.error_rate", "fire"),
        ("rollback.safety_incidents", "attached"),
        ("rollback.toxicity_rate", "attached"),
        ("kill.data_breach", "fire"),
    }
    assert all(d.incident_id == iid for d in out.decisions if d.outcome != "healthy")
    assert incident.action == "kill" and incident.status == "open"  # the switch holds it
    assert incident.rules == [
        "rollback.error_rate", "rollback.safety_incidents", "rollback.toxicity_rate",
        "kill.data_breach",
    ]  # fmt: skip
    kinds = [(t.kind, t.rule) for t in incident.timeline]
    assert kinds[:4] == [
        ("opened", "rollback.error_rate"),
        ("attached", "rollback.safety_incidents"),
        ("attached", "rollback.toxicity_rate"),
        ("escalated", "kill.data_breach"),
    ]
    assert {rule for kind, rule in kinds if kind == "rule_resolved"} == set(incident.rules)
    assert e.kill_state("m", "canary").incident_id == iid  # type: ignore[union-attr]
    # The kill switch released: every rule has resolved, so the incident does.
    release = e.set_kill("m", "canary", engage=False, reason="fixed", actor="cli")
    (resolved,) = release.incidents
    assert resolved.incident_id == iid and resolved.status == "resolved"
    assert [t.kind for t in resolved.timeline][-2:] == ["released", "resolved"]
    assert resolved.resolved_at_ms > 0 and resolved.revision > incident.revision
    assert [a.action for a in release.actions] == ["resume"]


def test_the_incident_resolves_only_when_its_last_rule_has() -> None:
    e = engine()
    out = feed(e, [window(0, 400, 80, flags=TOXIC)])
    (incident,) = latest(out).values()
    assert set(incident.rules) == {
        "rollback.error_rate", "rollback.safety_incidents", "rollback.toxicity_rate"
    }  # fmt: skip
    # Toxicity gone, errors still high: the safety rules resolve, the incident stays open.
    out = e.observe(window(1, 400, 80))
    assert {d.rule for d in out.decisions if d.outcome == "resolved"} == {
        "rollback.safety_incidents", "rollback.toxicity_rate"
    }  # fmt: skip
    (still,) = out.incidents
    assert still.status == "open"
    # 18 errors in 400: under the threshold, not under the recovery threshold (hysteresis).
    out = e.observe(window(2, 400, 18))
    assert out.incidents == [] and out.actions == []
    out = e.observe(window(3, 400, 2))
    (resolved,) = out.incidents
    assert resolved.status == "resolved" and resolved.incident_id == incident.incident_id
    assert [t.kind for t in resolved.timeline][-2:] == ["rule_resolved", "resolved"]
    # A new episode: a new incident, its own rollback.
    again = e.observe(window(4, 400, 80))
    (new,) = again.incidents
    assert new.incident_id != incident.incident_id
    assert [a.action for a in again.actions] == ["rollback"]


def test_symptoms_one_after_another_are_one_episode_until_it_has_been_quiet() -> None:
    e = engine(incident_resolve_after_s=180)  # three one-minute windows
    out = feed(e, [window(0, 400, 80), window(1, 400, 2)])  # errors, then recovered
    (incident,) = latest(out).values()
    assert incident.status == "open"  # quiet for a minute, not three
    # Minutes later the same canary turns slow: the same incident, no second rollback.
    slow = [20_000.0] * 400
    out = feed(e, [window(2, 400, 2), window(3, 400, 2, latencies=slow)])
    assert out.actions == []
    assert [(d.rule, d.outcome) for d in out.decisions if d.outcome == "attached"] == [
        ("rollback.p99_latency", "attached")
    ]
    assert {i.incident_id for i in out.incidents} == {incident.incident_id}
    # Recovered again: resolved once its windows have been quiet for three minutes.
    out = feed(e, [window(m, 400, 2, latencies=[500.0] * 400) for m in (4, 5, 6)])
    assert [i.status for i in out.incidents] == ["open"]  # quiet since minute 4's end
    (resolved,) = e.observe(window(7, 400, 2)).incidents
    assert resolved.status == "resolved" and resolved.incident_id == incident.incident_id
    assert resolved.timeline[-1].detail.startswith("every rule resolved and quiet for 180 s")
    # A late snapshot of an old window does not move the deployment's clock back.
    assert e.observe(window(5, 400, 2)).incidents == []


def test_a_rule_resolving_and_firing_again_inside_the_episode_stays_evidence() -> None:
    e = engine()
    feed(e, [window(0, 400, 80, flags=TOXIC)])
    feed(e, [window(1, 400, 80)])  # toxicity resolves, errors hold the incident open
    out = e.observe(window(2, 400, 80, flags=TOXIC))
    assert out.actions == []
    assert {d.outcome for d in out.decisions if d.rule.startswith("rollback.t")} == {"attached"}


def test_a_manual_kill_escalates_the_open_incident_and_opens_one_when_none_is() -> None:
    e = engine()
    (incident,) = latest(e.observe(window(0, 400, 80))).values()
    out = e.set_kill("m", "canary", engage=True, reason="bad answers", actor="api")
    (escalated,) = out.incidents
    assert escalated.incident_id == incident.incident_id and escalated.action == "kill"
    assert [a.incident_id for a in out.actions] == [incident.incident_id]
    assert escalated.timeline[-1].kind == "escalated" and escalated.timeline[-1].rule == "manual"
    # Once a kill holds the deployment, more kill rules are evidence, not a second kill.
    out = e.observe(window(1, 400, 80, flags=LEAK))
    assert out.actions == []
    assert [d.outcome for d in out.decisions if d.rule == "kill.data_breach"] == ["attached"]
    fresh = engine()
    out = fresh.set_kill("m", "stable", engage=True, reason="r", actor="cli")
    (opened,) = out.incidents
    assert opened.action == "kill" and opened.rule == "manual" and opened.status == "open"
    out = fresh.set_kill("m", "stable", engage=False, reason="ok", actor="cli")
    assert [i.status for i in out.incidents] == ["resolved"]  # no rule held it


def test_a_new_version_on_the_deployment_starts_a_new_episode() -> None:
    e = engine()
    (old,) = latest(e.observe(window(0, 400, 80, version="v2"))).values()
    out = e.observe(window(5, 400, 80, version="v3"))  # the next canary is bad too
    assert [(a.action, a.model_version) for a in out.actions] == [("rollback", "v3")]
    rows = latest(out)
    assert rows[old.incident_id].status == "resolved"
    assert rows[old.incident_id].timeline[-1].kind == "superseded"
    (new,) = [i for i in rows.values() if i.incident_id != old.incident_id]
    assert new.status == "open" and new.model_version == "v3"


def test_deployments_have_their_own_incidents() -> None:
    e = engine()
    out = feed(e, [window(0, 400, 80), window(0, 400, 80, deployment="canary-eu")])
    e.policy.canary_deployments.append("canary-eu")
    out.extend(e.observe(window(1, 400, 80, deployment="canary-eu")))
    incidents = latest(out)
    assert {(i.deployment, i.action) for i in incidents.values()} == {
        ("canary", "rollback"), ("canary-eu", "rollback")
    }  # fmt: skip
    assert len([a for a in out.actions if a.action == "rollback"]) == 2


def test_dry_run_and_cooldown_open_no_incident() -> None:
    dry = engine(dry_run=True)
    assert feed(dry, EPISODE).incidents == []
    cooling = engine(cooldown_s=3600)
    feed(cooling, [window(0, 400, 80), window(1, 400, 2)])  # opened, then resolved
    out = cooling.observe(window(2, 400, 80))
    assert out.actions == [] and out.incidents == []
    assert [d.outcome for d in out.decisions if d.rule == "rollback.error_rate"] == ["cooldown"]


def test_replaying_the_same_windows_acts_once() -> None:
    e = engine()
    first = feed(e, EPISODE)
    again = feed(e, EPISODE)  # the same snapshots delivered again
    assert again.actions == [] and again.incidents == []
    assert [d for d in again.decisions if d.outcome not in ("healthy", "inconclusive")] == []
    # A fresh engine on the same windows: the same keys and incident, so receivers (and
    # Alertmanager, and the incidents table) see duplicates, not news.
    replayed = feed(engine(), EPISODE)
    assert [(a.action, a.idempotency_key, a.incident_id) for a in replayed.actions] == [
        (a.action, a.idempotency_key, a.incident_id) for a in first.actions
    ]
    assert set(latest(replayed)) == set(latest(first))


def test_a_restarted_engine_keeps_the_episode_and_does_not_act_again() -> None:
    killswitch: dict[str, str] = {}
    incidents: dict[str, str] = {}  # the worker's changelog-backed table
    before = engine(killswitch, incidents)
    out = feed(before, EPISODE[:3])  # rollback sent, toxicity attached; then a crash
    (incident,) = latest(out).values()
    # The restarted worker replays windows after its last committed offset, and more.
    after = engine(killswitch, incidents)
    replay = feed(after, EPISODE[1:3])
    assert replay.actions == [] and replay.incidents == []
    rest = feed(after, EPISODE[3:])
    assert acting(rest) == [("kill", "kill.data_breach", incident.incident_id)]
    # The rules it remembered firing resolve with hysteresis, in the same incident.
    final = latest(rest)[incident.incident_id]
    resolved = {t.rule for t in final.timeline if t.kind == "rule_resolved"}
    assert resolved == set(final.rules)
    out = after.set_kill("m", "canary", engage=False, reason="fixed", actor="cli")
    assert [i.status for i in out.incidents] == ["resolved"]
    # Old windows replayed after the resolution reopen nothing.
    later = engine(killswitch, incidents)
    late = feed(later, EPISODE[1:3])
    assert late.actions == [] and late.incidents == []


def test_open_incidents_are_listed_for_re_sending() -> None:
    e = engine()
    feed(e, [window(0, 400, 80)])
    assert [i.status for i in e.open_incidents()] == ["open"]
    feed(e, [window(1, 400, 2)])
    assert e.open_incidents() == []


def test_switches_and_incidents_share_the_worker_table_without_mixing() -> None:
    from streams.policy import INCIDENT_PREFIX, _Table

    raw: dict[str, str] = {}  # stands for the faust table and its changelog
    switches, incidents = _Table(raw), _Table(raw, INCIDENT_PREFIX)
    e = PolicyEngine(Policy(), switches, incidents=incidents)
    e.set_kill("m", "canary", engage=True, reason="r", actor="cli")
    assert set(raw) == {"m/canary", "incident|m/canary"}
    assert list(switches) == ["m/canary"] and list(incidents) == ["m/canary"]
    assert [s.model for s in e.states()] == ["m"]
    restarted = PolicyEngine(Policy(), _Table(raw), incidents=_Table(raw, INCIDENT_PREFIX))
    assert [i.action for i in restarted.open_incidents()] == ["kill"]


def test_a_stored_incident_that_does_not_decode_is_forgotten_not_an_error() -> None:
    e = engine(incidents={"m/canary": '{"incident_id": 3}'})
    out = e.observe(window(0, 400, 80))
    assert [a.action for a in out.actions] == ["rollback"] and len(out.incidents) == 1
