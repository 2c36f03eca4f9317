"""Two score workers share one consumer group; one is SIGKILLed mid-stream and not restarted:
the survivor takes over its partitions, and nothing is lost or stored twice. A third process
runs aggregate, sink and policy. Figures: from the kill until the survivor owns every
partition, and until the group has committed everything that was on llm.events at the kill.
"""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from monitor.devtools.generate import generate_events
from tests.conftest import WorkerHarness
from tests.e2e.test_pipeline_e2e import scalar
from tests.faults.support import (
    EVENTS,
    FAST_REJOIN,
    Cluster,
    Offsets,
    PacedProducer,
    kill,
    record_figure,
    size,
    stored_ids,
    valid_events,
    wait_sent,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(size(600, 1200))]

TOTAL = size(3_600, 20_000)
RATE = size(120.0, 200.0)


def assigned(harness: WorkerHarness) -> int:
    """Partitions the worker owns, by its /health (0 when it does not answer)."""
    try:
        url = f"http://127.0.0.1:{harness.port}/health"
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
            return int(json.loads(response.read())["assigned_partitions"])
    except OSError:
        return 0


def test_survivor_takes_over_a_killed_score_worker(cluster: Cluster) -> None:
    cluster.env.update(FAST_REJOIN)
    first = cluster.add("score-a", ["score"])
    second = cluster.add("score-b", ["score"])
    rest = cluster.add("rest", ["aggregate", "sink", "policy"])
    cluster.start_all()
    # Both score workers in the group, sharing the partitions, before any traffic.
    first.wait_for(lambda: assigned(first) > 0 and assigned(second) > 0, 120, "a shared group")
    total_partitions = assigned(first) + assigned(second)
    records = list(generate_events(TOTAL, seed=51, bad_fraction=0.01))
    ids = {e.request_id for e in valid_events(records)}
    offsets = Offsets(cluster.bootstrap)
    producer = PacedProducer(cluster.bootstrap, records, RATE)
    producer.start()
    wait_sent(producer, TOTAL // 3)

    owned_by_killed = assigned(second)
    sent_at_kill = producer.sent
    killed = time.monotonic()
    kill(second.processes[-1])
    targets = offsets.ends((EVENTS,))
    first.wait_for(
        lambda: assigned(first) == total_partitions, 120, "the survivor owning every partition"
    )
    owned = time.monotonic()
    done = offsets.wait_caught_up(first, targets, 300, "the survivor caught up on llm.events")
    producer.finish(timeout_s=600)
    first.wait_for(
        lambda: offsets.lag(first.group, (EVENTS,)) == 0, 300, "every event scored"
    )  # fmt: skip
    rest.wait_for(
        lambda: offsets.lag(rest.group, ("llm.scored", "llm.partials")) == 0,
        300, "every scored batch stored and merged",
    )  # fmt: skip
    assert first.processes[-1].poll() is None and rest.processes[-1].poll() is None
    cluster.stop_all()

    stored_set = stored_ids(rest)
    rows = scalar(rest, "SELECT count() FROM llm_monitor.events FINAL")
    distinct = scalar(rest, "SELECT count(DISTINCT request_id) FROM llm_monitor.events")
    record_figure(
        "score_takeover", events=TOTAL, valid=len(ids), rate=RATE, sent_at_kill=sent_at_kill,
        partitions_of_killed=owned_by_killed, partitions_total=total_partitions,
        session_timeout_s=float(FAST_REJOIN["LLM_MONITOR_KAFKA__SESSION_TIMEOUT_S"]),
        kill_to_survivor_owns_all_s=round(owned - killed, 1),
        kill_to_caught_up_s=round(done - killed, 1),
        lost=len(ids - stored_set), duplicates=rows - distinct if rows == len(ids) else None,
    )  # fmt: skip
    assert owned_by_killed > 0
    assert sent_at_kill < TOTAL, "the kill did not land mid-stream"
    assert stored_set == ids
    assert rows == distinct == len(ids)
