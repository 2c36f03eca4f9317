"""SIGKILL each role, again and again, mid-stream: score, aggregate, sink and policy run as
four worker processes (four consumer groups; only the sink opens chdb), and one of them at a
time is killed with SIGKILL and restarted while a paced producer sends events (~1 % malformed).

Invariants: no valid event lost, none stored twice, every malformed one dead-lettered once,
and every window's final snapshot counts exactly the events stored for it. Figure: each
restart's catch-up, from the restart until the role's group has committed everything that was
on its input topics when it came back.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from monitor.devtools.generate import generate_events
from monitor.ingest.events import Event
from monitor.windows.stats import window_start
from tests.conftest import WorkerHarness
from tests.e2e.test_pipeline_e2e import query, scalar
from tests.e2e.test_windows_exact_e2e import EVENTS_SQL, WINDOWS_SQL, final_windows
from tests.faults.support import (
    EVENTS,
    FAST_REJOIN,
    LONG,
    ROLE_INPUTS,
    WINDOWS,
    Cluster,
    Offsets,
    PacedProducer,
    kill,
    record_figure,
    size,
    stored_ids,
    summary,
    valid_events,
    wait_sent,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(size(900, 3600))]

ROLES = ("score", "aggregate", "sink", "policy")
TOTAL = size(10_000, 50_000)
KILLS_PER_ROLE = size(2, 5)
RATE = size(130.0, 150.0)  # events/s: slower than the pipeline, so kills land mid-stream
WINDOW_S = 10


def windows_of(events: list[Event]) -> set[tuple[str, str, str, int]]:
    """(model, version, deployment, window start) of every window the events fall in."""
    return {(e.model, e.model_version, e.deployment, window_start(e.timestamp_ms, WINDOW_S))
            for e in events}  # fmt: skip


def caught_up(offsets: Offsets, harness: WorkerHarness, topics: tuple[str, ...]) -> None:
    harness.wait_for(
        lambda: offsets.lag(harness.group, topics) == 0,
        timeout_s=300, what=f"{harness.group} caught up on {', '.join(topics)}",
    )  # fmt: skip


def test_sigkill_each_role_mid_stream_loses_and_duplicates_nothing(cluster: Cluster) -> None:
    cluster.env.update({**WINDOWS, **FAST_REJOIN})
    for role in ROLES:
        cluster.add(role, [role])
    records = list(generate_events(TOTAL, seed=21, bad_fraction=0.01))
    valid = valid_events(records)
    ids = {e.request_id for e in valid}
    bad = len(records) - len(ids)
    cluster.start_all()
    offsets = Offsets(cluster.bootstrap)
    producer = PacedProducer(cluster.bootstrap, records, RATE)
    producer.start()

    schedule = [role for _ in range(KILLS_PER_ROLE) for role in ROLES]
    restarts: list[dict[str, Any]] = []
    for i, role in enumerate(schedule):
        wait_sent(producer, TOTAL * (i + 1) // (len(schedule) + 1))
        harness = cluster.members[role]
        sent_at_kill = producer.sent
        killed = time.monotonic()
        kill(harness.processes[-1])
        restarted = time.monotonic()
        harness.start()
        # Everything on the role's inputs now (at least what was there at the kill).
        targets = offsets.ends(ROLE_INPUTS[role])
        harness.wait_for(harness.ready, 120, f"the {role} worker (restart {i + 1}) ready")
        ready = time.monotonic()
        done = offsets.wait_caught_up(
            harness, targets, timeout_s=300, what=f"the {role} worker (restart {i + 1}) caught up"
        )
        cluster.check_alive()
        restarts.append({
            "role": role, "sent_at_kill": sent_at_kill,
            "restart_to_ready_s": round(ready - restarted, 1),
            "restart_to_caught_up_s": round(done - restarted, 1),
            "kill_to_caught_up_s": round(done - killed, 1),
        })  # fmt: skip
    producer.finish(timeout_s=size(600, 1800))
    mid_stream = sum(1 for r in restarts if r["sent_at_kill"] < TOTAL)

    score, aggregate, sink, policy = (cluster.members[r] for r in ROLES)
    caught_up(offsets, score, (EVENTS,))
    caught_up(offsets, aggregate, ("llm.partials",))
    caught_up(offsets, sink, ("llm.scored", "llm.events.dlq"))
    expected = windows_of(valid)
    aggregate.wait_for(
        lambda: asyncio.run(final_windows(cluster.bootstrap)) >= expected,
        timeout_s=180, what=f"the final snapshot of each of the {len(expected)} windows published",
    )  # fmt: skip
    caught_up(offsets, policy, ROLE_INPUTS["policy"])
    caught_up(offsets, sink, ROLE_INPUTS["sink"])
    cluster.stop_all()

    stored = stored_ids(sink)
    lost, extra = ids - stored, stored - ids
    total_rows = scalar(sink, "SELECT count() FROM llm_monitor.events FINAL")
    distinct = scalar(sink, "SELECT count(DISTINCT request_id) FROM llm_monitor.events")
    dead = scalar(
        sink, "SELECT count() FROM llm_monitor.dead_letters FINAL WHERE topic = 'llm.events'"
    )
    rows = query(sink, WINDOWS_SQL)
    key = ("model", "model_version", "deployment", "start")
    windows = {tuple(r[k] for k in key): int(r["events"]) for r in rows}
    counted = {tuple(r[k] for k in key): int(r["events"]) for r in query(sink, EVENTS_SQL)}
    miscounted = {k: (windows.get(k), counted.get(k)) for k in windows.keys() | counted.keys()
                  if windows.get(k) != counted.get(k)}  # fmt: skip
    by_role = {
        role: summary([r["restart_to_caught_up_s"] for r in restarts if r["role"] == role])
        for role in ROLES
    }
    record_figure(
        "sigkill_each_role", events=TOTAL, valid=len(ids), malformed=bad, rate=RATE,
        kills=len(restarts), kills_mid_stream=mid_stream, lost=len(lost), extra=len(extra),
        duplicates=total_rows - distinct if total_rows == len(ids) else None,
        windows=len(windows), windows_miscounted=len(miscounted),
        restart_to_caught_up=by_role, restarts=restarts,
    )  # fmt: skip
    assert lost == set() and extra == set(), f"{len(lost)} lost, {len(extra)} unexpected"
    assert total_rows == distinct == len(ids)
    assert dead == bad
    assert miscounted == {}, f"{len(miscounted)} windows miscounted (window, stored): {miscounted}"
    assert all(int(r["is_final"]) == 1 for r in rows)
    # Most kills must land while events are still coming (the last ones may not, when
    # restarts run slower than the producer on a loaded machine).
    assert mid_stream >= len(schedule) * (3 if LONG else 1) // 4, restarts
