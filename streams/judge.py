"""The ``judge`` role: LLM-as-judge grading and pairwise canary-vs-stable, off the stream.

It reads the events topic with a batch consumer of its own group (``<app id>-judge``), so it
never holds back the score role; decoding and sampling are all its handler does before the
offsets commit. The judge calls run on the evaluator's workers (monitor/judge/evaluator.py)
from a bounded queue: when the judge is slow or the hourly budget is spent, samples are shed
and counted (``llm_monitor_judge_shed_total``), never waited for. Findings (``judge``,
``judge_pairwise``) go to the scored topic, where the sink stores them like any other; the
closed pairwise windows also go to the judge topic (``llm.judge``), keyed by model like the
windows topic, where the policy role sets promotion gates and judges
``rollback.judge_win_rate`` on them (streams/policy.py). A job still queued when the worker
stops is lost: the judge samples, it does not account.
"""

from __future__ import annotations

import logging
from typing import Any

import faust
import mode
import msgspec

from detectors.pii import PiiScanner
from monitor.config import JudgeSettings, Settings
from monitor.errors import ConfigError, SchemaError
from monitor.ingest.decode import RawMessage
from monitor.ingest.events import decode_event
from monitor.judge.client import Budget, JudgeClient
from monitor.judge.evaluator import (
    JUDGE_DETECTOR,
    PAIRWISE_DETECTOR,
    EvaluatorConfig,
    JudgeEvaluator,
)
from monitor.judge.pairwise import PairBuffer
from monitor.judge.rubric import DEFAULT_GRADE_TEMPLATE, DEFAULT_PAIRWISE_TEMPLATE, Rubric
from monitor.metrics import Metrics
from monitor.scoring.rows import FindingRow, ScoredBatch
from streams.batches import BatchConsumer, run_with_app
from streams.observe import observe_findings

log = logging.getLogger(__name__)
_msgpack = msgspec.msgpack.Encoder()


def check_judge(settings: Settings) -> None:
    """Refuse a judge role that cannot run: off, or without an endpoint and a model."""
    j = settings.judge
    if "judge" in settings.roles and not j.enabled:
        raise ConfigError(
            "roles includes 'judge' but judge.enabled is false. Fix: set "
            "LLM_MONITOR_JUDGE__ENABLED=true (with JUDGE__ENDPOINT and JUDGE__MODEL) or drop "
            "the judge role."
        )
    if j.enabled and not (j.endpoint and j.model):
        raise ConfigError(
            "judge.enabled is true but judge.endpoint or judge.model is empty. Fix: set "
            "LLM_MONITOR_JUDGE__ENDPOINT (an OpenAI base URL, e.g. http://judge:8000/v1) and "
            "LLM_MONITOR_JUDGE__MODEL."
        )


def rubric_of(j: JudgeSettings) -> Rubric:
    return Rubric(
        version=j.rubric_version, criteria=j.criteria,
        grade_template=j.grade_template or DEFAULT_GRADE_TEMPLATE,
        pairwise_template=j.pairwise_template or DEFAULT_PAIRWISE_TEMPLATE,
        max_words=j.max_words, max_chars=j.max_chars,
    )  # fmt: skip


def build_evaluator(
    settings: Settings, metrics: Metrics, publish: Any, client: Any = None
) -> JudgeEvaluator:
    """The evaluator the role runs, from ``settings.judge`` (``client``: a fake in tests)."""
    j = settings.judge
    judge = client or JudgeClient(
        j.endpoint, j.model, j.api_key.get_secret_value() if j.api_key else None,
        timeout_s=j.timeout_s, usd_per_1k_input=j.usd_per_1k_input_tokens,
        usd_per_1k_output=j.usd_per_1k_output_tokens,
    )  # fmt: skip
    config = EvaluatorConfig(
        sample_rate=j.sample_rate, pairwise_sample_rate=j.pairwise_sample_rate,
        pairwise=j.pairwise, concurrency=j.concurrency, queue_size=j.queue_size,
        flag_at_or_below=j.flag_at_or_below, judge_family=j.family, window_s=j.window_s,
        lateness_s=j.lateness_s, min_pairs=j.min_pairs, gate_threshold=j.gate_threshold,
        confidence=j.confidence, resamples=j.resamples,
    )  # fmt: skip
    pairs = PairBuffer(
        canary_deployment=j.canary_deployment, stable_deployment=j.stable_deployment,
        max_age_s=j.pair_max_age_s, max_pending=j.max_pending_pairs,
    )  # fmt: skip
    return JudgeEvaluator(
        config, judge, rubric_of(j), Budget(j.calls_per_hour, j.usd_per_hour), metrics,
        publish, pairs=pairs, scanner=PiiScanner() if settings.storage.redact else None,
    )  # fmt: skip


def windows_by_model(batch: ScoredBatch) -> dict[str, list[FindingRow]]:
    """The closed pairwise windows in ``batch`` per model: what the judge topic carries,
    keyed by model so the policy worker owning the model's windows and incidents reads them."""
    out: dict[str, list[FindingRow]] = {}
    for row in batch.findings:
        if row.finding.detector == PAIRWISE_DETECTOR and row.finding.category == "window":
            out.setdefault(row.model, []).append(row)
    return out


class _JudgeConsumer(BatchConsumer):
    """The events topic under the judge's own group; it leaves the events topic's lag gauge
    to the score role (the judge's handler commits at once: its backlog is its queue)."""

    async def _export_lag(self) -> None:
        return


def add_judge_role(
    app: faust.App, settings: Settings, metrics: Metrics, topics: dict[str, Any]
) -> None:
    k = settings.kafka
    scored, windows_out = topics[k.scored_topic], topics[k.judge_topic]

    async def publish(batch: ScoredBatch) -> None:
        await (await scored.send(value=_msgpack.encode(batch)))
        graded = [r for r in batch.findings if r.finding.detector == JUDGE_DETECTOR]
        observe_findings(metrics, [r for r in graded if r.finding.category == "grade"])
        for model, rows in windows_by_model(batch).items():  # a few per window_s
            value = _msgpack.encode(ScoredBatch([], rows))
            await (await windows_out.send(key=model.encode(), value=value))

    evaluator = build_evaluator(settings, metrics, publish)
    max_bytes = settings.pipeline.max_event_bytes

    async def judge(messages: list[RawMessage]) -> None:
        for message in messages:
            try:
                event = decode_event(message.value, max_bytes=max_bytes)
            except SchemaError:
                continue  # the score role dead-letters it
            evaluator.offer(event)

    class Workers(mode.Service):
        async def on_started(self) -> None:
            evaluator.start()
            log.info("judge role: %s at %s", settings.judge.model, settings.judge.endpoint)

        async def on_stop(self) -> None:
            try:
                await evaluator.flush_windows(force=True)
            except Exception:  # the producer may be gone already: the windows are lost
                log.exception("judge: open pairwise windows could not be published at stop")
            await evaluator.stop()

    app.service(Workers)
    consumer = _JudgeConsumer(settings, f"{app.conf.id}-judge", k.events_topic, judge, metrics)
    run_with_app(app, consumer)
