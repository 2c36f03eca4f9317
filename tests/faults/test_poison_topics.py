"""Poison on the topics the other poison tests leave out.

tests/integration/test_sink_faults.py covers llm.scored, llm.events.dlq, llm.windows,
llm.policy, llm.control, llm.judge, llm.actions and llm.embed; tests/integration/test_score_errors.py and
tests/e2e/test_pipeline_e2e.py cover llm.events. Here:

- llm.partials (the aggregate role's input): a record that does not decode is dead-lettered
  with its topic, partition and offset, every valid event is still stored and counted into
  its window, and no agent crashes;
- the table changelogs (``<app>-windows-changelog``, ``<app>-killswitch-changelog``), read only
  when a worker recovers its tables: a record there that does not decode is skipped and
  counted (streams/codecs.py), the restarted worker becomes ready and processes new events
  (before the codec, faust's recovery stopped at the record and the worker never became
  ready).
"""

from __future__ import annotations

import asyncio

import pytest

from monitor.client import produce
from monitor.devtools.generate import generate_events
from streams.topics import changelog_topic
from tests.conftest import WorkerHarness, poll
from tests.e2e.test_pipeline_e2e import query, scalar
from tests.faults.support import record_figure
from tests.integration.test_sink_faults import POISON, agent_crashes, send_each

pytestmark = [pytest.mark.faults]

VALID = 400


def stored(workers: WorkerHarness) -> float:
    return workers.metric("llm_monitor_sink_rows_total", table="events")


def test_poison_on_the_partials_topic_is_dead_lettered(workers: WorkerHarness) -> None:
    records = list(generate_events(VALID, seed=61, bad_fraction=0.0))
    workers.start()
    workers.wait_for(workers.ready, what="the worker ready")
    asyncio.run(produce(workers.bootstrap, "llm.events", records[: VALID // 2]))
    (poison,) = asyncio.run(send_each(workers.bootstrap, [("llm.partials", b"poison", POISON)]))
    asyncio.run(produce(workers.bootstrap, "llm.events", records[VALID // 2 :]))
    workers.wait_for(
        lambda: (
            stored(workers) >= VALID
            and workers.metric("llm_monitor_aggregate_events_total") >= VALID
            and workers.metric(
                "llm_monitor_internal_dead_letters_total", topic="llm.partials",
                reason="undecodable",
            ) >= 1
            and workers.metric("llm_monitor_sink_rows_total", table="dead_letters") >= 1
        ),
        what="every event stored and merged, and the poison partial dead-lettered",
    )  # fmt: skip
    workers.wait_windows_stored()
    assert workers.ready()
    workers.stop_all()

    assert agent_crashes(workers.log_tail(10_000_000)) == []
    letters = query(
        workers,
        "SELECT topic, partition, offset, reason, raw_bytes FROM llm_monitor.dead_letters FINAL",
    )
    assert [(r["topic"], r["partition"], int(r["offset"]), r["reason"]) for r in letters] == [
        ("llm.partials", poison.partition, poison.offset, "undecodable")
    ]
    assert letters[0]["raw_bytes"] == len(POISON)
    assert scalar(workers, "SELECT count() FROM llm_monitor.events FINAL") == VALID
    assert scalar(workers, "SELECT sum(events) FROM llm_monitor.windows FINAL") == VALID
    record_figure("poison_partials", events=VALID, dead_lettered=len(letters), crashes=0)


@pytest.mark.parametrize("table", ["windows", "killswitch"])
def test_poison_on_a_changelog_does_not_stop_recovery(workers: WorkerHarness, table: str) -> None:
    records = list(generate_events(VALID, seed=62, bad_fraction=0.0))
    workers.start()
    workers.wait_for(workers.ready, what="the worker ready")
    asyncio.run(produce(workers.bootstrap, "llm.events", records))
    workers.wait_for(lambda: stored(workers) >= VALID, what="the events stored")
    workers.wait_windows_stored()
    workers.stop_all()
    topic = changelog_topic(workers.app_id, table)
    asyncio.run(send_each(workers.bootstrap, [(topic, b'"poison"', POISON)]))

    workers.start()  # recovers its tables from the changelogs, the poison record included
    # Faust's recovery warns after 30 s without progress: give it longer than that.
    ready = bool(poll(workers.ready, timeout_s=45))
    more = list(generate_events(VALID, seed=63, bad_fraction=0.0))
    if ready:
        asyncio.run(produce(workers.bootstrap, "llm.events", more))
    processed = bool(ready and poll(lambda: stored(workers) >= len(more), 60))  # since restart
    skipped = workers.metric("llm_monitor_changelog_records_skipped_total")
    record_figure("poison_changelog", table=table, ready_after_restart=ready, processed=processed,
                  skipped=skipped)  # fmt: skip
    assert ready, "the worker never finished recovering its tables"
    assert processed
    assert skipped == 1
