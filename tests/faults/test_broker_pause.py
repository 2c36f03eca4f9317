"""The broker stops answering for 30 s mid-stream (SIGSTOP on the tansu process, then SIGCONT):
the worker is never restarted, nothing is lost, nothing stored twice. Figure: from SIGCONT
until the worker has committed everything that was on its input topics by then."""

from __future__ import annotations

import signal
import time

import pytest

from monitor.devtools.broker import BundledBroker
from monitor.devtools.generate import generate_events
from tests.conftest import WorkerHarness
from tests.e2e.test_pipeline_e2e import scalar
from tests.faults.support import (
    EVENTS,
    Offsets,
    PacedProducer,
    record_figure,
    size,
    stored_ids,
    valid_events,
    wait_sent,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(size(600, 1200))]

PAUSE_S = 30.0
TOTAL = size(3_000, 20_000)
RATE = size(100.0, 200.0)
INPUTS = (EVENTS, "llm.scored", "llm.partials")


def test_broker_paused_mid_stream_loses_nothing(
    broker: BundledBroker, workers: WorkerHarness
) -> None:
    records = list(generate_events(TOTAL, seed=31, bad_fraction=0.01))
    ids = {e.request_id for e in valid_events(records)}
    process = workers.start()
    workers.wait_for(workers.ready, what="the worker ready")
    offsets = Offsets(workers.bootstrap)
    producer = PacedProducer(workers.bootstrap, records, RATE)
    producer.start()
    wait_sent(producer, TOTAL // 4)
    stored_before = workers.metric("llm_monitor_sink_rows_total", table="events")

    sent_at_pause = producer.sent
    broker.process.send_signal(signal.SIGSTOP)
    try:
        # The fault's length, not a wait for anything: the worker must ride it out.
        time.sleep(PAUSE_S)
    finally:
        broker.process.send_signal(signal.SIGCONT)
    resumed = time.monotonic()
    targets = offsets.ends(INPUTS)
    done = offsets.wait_caught_up(
        workers, targets, timeout_s=300, what="the worker caught up after SIGCONT"
    )
    assert process.poll() is None, "the worker died"
    producer.finish(timeout_s=600)
    workers.wait_for(
        lambda: offsets.lag(workers.group, INPUTS) == 0,
        timeout_s=300, what="every event scored, merged and stored, and its offset committed",
    )  # fmt: skip
    assert process.poll() is None and len(workers.processes) == 1, "the worker was restarted"
    log = workers.log_tail(10_000_000)
    rejoins = log.count("(Re-)joining group") - 1
    workers.stop_all()

    stored_set = stored_ids(workers)
    stored = scalar(workers, "SELECT count() FROM llm_monitor.events FINAL")
    distinct = scalar(workers, "SELECT count(DISTINCT request_id) FROM llm_monitor.events")
    record_figure(
        "broker_paused", events=TOTAL, valid=len(ids), rate=RATE, pause_s=PAUSE_S,
        sent_at_pause=sent_at_pause, stored_before_pause=stored_before,
        sigcont_to_caught_up_s=round(done - resumed, 1), rejoins_after_start=rejoins,
        stored=stored, lost=len(ids - stored_set), duplicates=stored - distinct if stored == len(ids) else None,
    )  # fmt: skip
    assert stored_set == ids
    assert stored == distinct == len(ids)
