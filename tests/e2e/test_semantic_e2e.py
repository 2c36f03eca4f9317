"""The embed role in its own worker process and consumer group, next to a CPU worker running
score, aggregate and sink: semantic findings reach ClickHouse, windows and metrics."""

from __future__ import annotations

import asyncio
import time

import pytest

from monitor.client import produce
from monitor.devtools.generate import generate_events
from tests.conftest import WorkerHarness
from tests.e2e.test_pipeline_e2e import query, scalar, split, stored

pytestmark = pytest.mark.e2e

WINDOW_S = 300
SEMANTIC = {
    **{
        f"LLM_MONITOR_DETECTORS__{name}__ENABLED": "true"
        for name in ("TOXICITY", "HALLUCINATION", "INJECTION", "BIAS", "DRIFT")
    },
    # Every role must cut the same windows; five-minute ones hold enough of each bias group.
    "LLM_MONITOR_PIPELINE__WINDOW_S": f"{WINDOW_S}",
    # Read by the embed role, which runs the drift tests: a short reference per version.
    "LLM_MONITOR_DETECTORS__DRIFT__REFERENCE_EVENTS": "50",
}


def test_embed_role_scales_apart_and_lands_in_the_same_tables(workers: WorkerHarness) -> None:
    # Three whole windows, whatever the clock: a version's drift test runs on a window when
    # its next window begins, so the first two are tested however partitions interleave.
    end_ms = int(time.time()) // WINDOW_S * WINDOW_S * 1000
    records = list(
        generate_events(3000, seed=21, bad_fraction=0.0, duration_s=3 * WINDOW_S, end_ms=end_ms)
    )
    valid, _ = split(records)
    workers.env_overrides.update({**SEMANTIC, "LLM_MONITOR_ROLES": '["score","aggregate","sink"]'})
    workers.start()
    embed = WorkerHarness(workers.bootstrap, workers.data_dir, app_id=workers.app_id)
    embed.env_overrides.update({**SEMANTIC, "LLM_MONITOR_ROLES": '["embed"]',
                                "LLM_MONITOR_DETECTORS__EMBEDDING__DEVICE": "cpu"})  # fmt: skip
    embed.start()
    try:
        asyncio.run(produce(workers.bootstrap, "llm.events", records))
        # The embed worker counts a batch once its findings and partials were delivered.
        embed.wait_for(
            lambda: embed.metric("llm_monitor_embed_batch_events_sum") >= valid,
            timeout_s=180,
            what=f"{valid} events through the embed role",
        )
        workers.wait_for(lambda: stored(workers) >= valid, what=f"{valid} events stored")
        # The CPU workers' group commits those findings once stored, those partials once merged.
        workers.wait_for(
            lambda: workers.uncommitted(("llm.scored", "llm.partials")) == 0,
            timeout_s=120,
            what="the embed role's findings stored and its partials merged",
        )
        workers.wait_windows_stored()
        assert embed.metric("llm_monitor_events_received_total") == 0  # no score role there
        assert embed.metric("llm_monitor_embed_texts_total") > valid
        assert embed.metric("llm_monitor_detector_score_count", detector="toxicity") > 0
    finally:
        embed.stop_all()
        workers.stop_all()

    flagged = {
        (r["detector"], r["category"], r["deployment"]): r["n"]
        for r in query(
            workers,
            "SELECT detector, category, deployment, count() AS n FROM llm_monitor.findings "
            "FINAL WHERE flagged GROUP BY detector, category, deployment",
        )
    }
    # Seeded on the canary only: toxic answers and unsupported answers.
    assert flagged.get(("toxicity", "toxic", "canary"), 0) > 0
    assert ("toxicity", "toxic", "stable") not in flagged
    assert flagged.get(("hallucination", "ungrounded", "canary"), 0) > 5
    assert ("hallucination", "ungrounded", "stable") not in flagged
    # Injections come from users: every deployment sees them.
    assert flagged.get(("injection", "direct", "canary"), 0) > 0
    assert flagged.get(("injection", "direct", "stable"), 0) > 0
    # One toxicity finding per answered event, none twice.
    answered = scalar(workers, "SELECT countIf(response != '') FROM llm_monitor.events FINAL")
    assert (
        scalar(
            workers, "SELECT count() FROM llm_monitor.findings FINAL WHERE detector = 'toxicity'"
        )
        == answered
    )
    # The same windows carry the semantic flags, counted against the score role's events.
    windows = query(
        workers,
        "SELECT deployment, sum(flags['toxicity']) AS toxic, sum(events) AS events, "
        "countIf(length(mapKeys(groups)) > 0) AS with_groups "
        "FROM llm_monitor.windows FINAL GROUP BY deployment",
    )
    by_deployment = {r["deployment"]: r for r in windows}
    assert sum(r["events"] for r in windows) == valid
    assert by_deployment["canary"]["toxic"] == flagged[("toxicity", "toxic", "canary")]
    assert all(r["with_groups"] > 0 for r in windows)
    # Refusals were skewed against one group on the canary: the disparity is measured.
    skew = scalar(
        workers,
        "SELECT max(bias_low['refusal_rate']) FROM llm_monitor.windows FINAL "
        "WHERE deployment = 'canary'",
    )
    assert skew > 0
    # Drift tests ran per version against a reference of its first responses.
    assert (
        scalar(
            workers, "SELECT count() FROM llm_monitor.findings FINAL WHERE category = 'embedding'"
        )
        > 0
    )
