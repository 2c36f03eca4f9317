"""Webhook receivers down: the policy's dispatcher retries with backoff until the policy's
``webhooks.deadline_s``, records every attempt (``actions`` table,
``llm_monitor_webhook_attempts_total``) and gives up only at the deadline.

The kill switch is engaged and at once released through the API, with both receivers down:

- the ``kill`` receiver (the reference receiver, monitor/policy/receiver.py, on a fixed
  loopback port) comes back after ``OUTAGE_S``, within the deadline: the kill is delivered
  exactly once (one delivery for its idempotency key, one ``delivered`` attempt);
- the ``resume`` receiver stays down past the deadline: the resume is recorded ``gave_up``.

Prometheus, over the real worker metrics and the shipped rules, holds
``LLMMonitorWebhookDeliveryFailing`` pending (``for: 2m``), firing in the long run.
Figures: from the receiver's return to the delivery; from the resume's creation to gave_up.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import httpx
import pytest

from monitor.devtools.broker import free_port
from monitor.devtools.worker import metric_sum, scrape
from monitor.policy.receiver import Receiver
from tests.conftest import WorkerHarness, wait_until
from tests.e2e.test_pipeline_e2e import query
from tests.faults.support import LONG, Offsets, record_figure, size, start_prometheus

pytestmark = [pytest.mark.faults, pytest.mark.timeout(size(600, 1800))]

SECRET = "faults-webhook-secret-0123456789abcdef"  # noqa: S105 - test fixture
TOKEN = "faults-api-token-0123456789abcdef"  # noqa: S105 - test fixture
OUTAGE_S = size(15.0, 300.0)
# The dispatcher's backoff is capped: the deadline leaves room for one more attempt
# after the receiver returns, and for the resume (queued behind the kill) to be tried.
MAX_BACKOFF_S = 30.0  # monitor/policy/dispatch.py, Dispatcher.max_backoff_s
DEADLINE_S = OUTAGE_S + 45.0
MODEL, DEPLOYMENT = "fault-bot", "canary"


def api(port: int, verb: str) -> dict[str, object]:
    response = httpx.post(
        f"http://127.0.0.1:{port}/killswitch/{verb}",
        json={"model": MODEL, "deployment": DEPLOYMENT, "reason": "fault test"},
        headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def policy_records_stored(workers: WorkerHarness, offsets: Offsets) -> bool:
    """Every record the policy role produced is on llm.policy and committed by the sink (so
    stored), and the dispatcher is done with llm.actions. Without traffic the role produces
    one llm.policy record per API call (its audit entry), per applied engage or release (the
    switch's state and incident) and per webhook attempt; counted from its metrics."""
    try:
        samples = scrape(workers.metrics_url)
    except OSError:
        return False
    produced = sum(metric_sum(samples, name) for name in (
        "llm_monitor_killswitch_api_calls_total", "llm_monitor_actions_total",
        "llm_monitor_webhook_attempts_total"))  # fmt: skip
    on_topic = sum(offsets.ends(("llm.policy",)).values())
    return on_topic >= produced and workers.uncommitted(("llm.actions", "llm.policy")) == 0


def test_webhook_receiver_down_is_retried_then_delivered_once_or_given_up(
    workers: WorkerHarness, tmp_path: Path
) -> None:
    kill_port, resume_port = free_port(), free_port()  # nothing listens on either yet
    workers.use_policy({
        "cooldown_s": 0,
        "webhooks": {
            "kill": [f"http://127.0.0.1:{kill_port}/kill"],
            "resume": [f"http://127.0.0.1:{resume_port}/resume"],
            "deadline_s": DEADLINE_S,
        },
    }, secret=SECRET, token=TOKEN)  # fmt: skip
    process = workers.start()
    workers.wait_for(workers.ready, what="the worker ready")
    prometheus = start_prometheus([f"127.0.0.1:{workers.port}"], tmp_path / "prometheus")
    receiver: Receiver | None = None
    offsets = Offsets(workers.bootstrap)

    def attempts(action: str, outcome: str) -> float:
        return workers.metric("llm_monitor_webhook_attempts_total", action=action, outcome=outcome)

    try:
        engaged = time.monotonic()
        api(workers.port, "engage")
        api(workers.port, "release")  # queued behind the kill: one dispatch agent
        workers.wait_for(
            lambda: attempts("kill", "retrying") >= 2, what="the kill webhook retried"
        )  # fmt: skip
        alert_states: set[str] = set()
        # The outage's length (the fault itself, not a wait for anything); watch the alert.
        while time.monotonic() - engaged < OUTAGE_S:
            alert_states |= prometheus.alert_states("LLMMonitorWebhookDeliveryFailing")
            time.sleep(1.0)
        retries_during_outage = attempts("kill", "retrying")
        receiver = Receiver.persistent(SECRET.encode(), tmp_path / "seen.sqlite")
        receiver.serve(kill_port)
        back = time.monotonic()
        wait_until(lambda: receiver is not None and receiver.deliveries, "the kill delivered",
                   timeout_s=DEADLINE_S)  # fmt: skip
        delivered = time.monotonic()
        workers.wait_for(
            lambda: attempts("resume", "gave_up") >= 1, timeout_s=DEADLINE_S + 60,
            what="the resume given up at its deadline",
        )  # fmt: skip
        gave_up = time.monotonic()
        alert_states |= prometheus.alert_states("LLMMonitorWebhookDeliveryFailing")
        workers.wait_for(
            lambda: policy_records_stored(workers, offsets),
            what="both actions done and every attempt stored",
        )
        kill_delivered = attempts("kill", "delivered")
        assert process.poll() is None, "the worker died"
    finally:
        prometheus.stop()
        if receiver is not None:
            receiver.stop()
    workers.stop_all()

    rows = query(
        workers,
        "SELECT action, idempotency_key AS key, attempt, outcome, status_code, "
        "toUnixTimestamp64Milli(at) AS at_ms FROM llm_monitor.actions FINAL "
        "ORDER BY action, attempt",
    )
    kill_rows = [r for r in rows if r["action"] == "kill"]
    resume_rows = [r for r in rows if r["action"] == "resume"]
    at = [r["at_ms"] / 1000 for r in kill_rows]
    gaps = [later - earlier for earlier, later in itertools.pairwise(at)]
    resume_span = (resume_rows[-1]["at_ms"] - resume_rows[0]["at_ms"]) / 1000 if resume_rows else 0
    record_figure(
        "webhook_down", outage_s=OUTAGE_S, deadline_s=DEADLINE_S,
        kill_attempts=len(kill_rows), kill_retries_during_outage=retries_during_outage,
        longest_backoff_s=round(max(gaps, default=0.0), 1),
        receiver_back_to_delivered_s=round(delivered - back, 1),
        engage_to_delivered_s=round(delivered - engaged, 1),
        resume_attempts=len(resume_rows), resume_attempt_span_s=round(resume_span, 1),
        engage_to_resume_gave_up_s=round(gave_up - engaged, 1),
        alert_states=sorted(alert_states),
    )  # fmt: skip
    assert receiver is not None
    assert [d.event for d in receiver.deliveries] == ["kill"], "delivered more than once"
    kill_key = receiver.deliveries[0].idempotency_key
    assert {r["key"] for r in kill_rows} == {kill_key}
    assert [r["outcome"] for r in kill_rows] == ["retrying"] * (len(kill_rows) - 1) + ["delivered"]
    assert kill_delivered == 1
    assert len(kill_rows) >= 3 and max(gaps) <= MAX_BACKOFF_S + 5  # (+ the request timeout)
    assert resume_rows and resume_rows[-1]["outcome"] == "gave_up"
    assert all(r["outcome"] == "retrying" for r in resume_rows[:-1])
    # Given up when the next try would start past the deadline: within one backoff of it.
    assert DEADLINE_S - MAX_BACKOFF_S - 2 <= gave_up - engaged <= DEADLINE_S + 10
    assert alert_states & {"pending", "firing"}
    if LONG:  # an outage longer than the rule's `for: 2m`
        assert "firing" in alert_states
