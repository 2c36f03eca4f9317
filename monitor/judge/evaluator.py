"""The judge's work loop, off the stream: a bounded queue, a fixed number of workers.

``offer(event)`` never waits: it samples (a hash of the request id for grading, of the
normalised prompt for pairwise, so both versions' answers to a prompt are sampled together),
and puts a job on the queue; when the queue is full the job is shed and counted, so a slow
judge sheds samples instead of holding back the stream. ``concurrency`` workers take jobs;
each call first takes a token from the hourly budget (none left: shed, counted). Results are
findings, published as ``ScoredBatch``es without events (the sink stores them like any other
findings):

- ``judge``: one per graded event. Score in [0, 1] (grade 1-5 → 0-1), flagged at grade
  ``flag_at_or_below``; category ``grade``, or ``parse_error`` when the judge's output is not
  in the strict format. Details: grade, explanation (PII-redacted unless redaction is off),
  judge_model, judge_family, model_family, same_family, rubric_version, cost_usd, tokens.
- ``judge_pairwise``: one per compared prompt (on the canary's request id; category win, loss
  or tie; score 1, 0.5 or 0), and one per closed window (request id
  ``window:<canary version>:<start ms>``, category ``window``, score = win rate; details:
  low, high, n, wins, ties, losses, confidence, stable_versions, gate).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from detectors.base import Finding
from detectors.pii import PiiScanner, redact
from monitor.ingest.events import Event
from monitor.judge.bootstrap import WinRate, promotion_gate
from monitor.judge.client import Budget, JudgeReply, JudgeUnavailable, sampled
from monitor.judge.pairwise import (
    Pair,
    PairBuffer,
    PairwiseWindow,
    PairwiseWindows,
    combine,
    prompt_key,
)
from monitor.judge.parsing import ParseFailure, Verdict, parse_grade, parse_verdict
from monitor.judge.rubric import Rubric, model_family
from monitor.metrics import Metrics
from monitor.scoring.rows import FindingRow, ScoredBatch

log = logging.getLogger(__name__)

JUDGE_DETECTOR = "judge"
PAIRWISE_DETECTOR = "judge_pairwise"
KIND_GRADE, KIND_PAIRWISE = "grade", "pairwise"
SHED_QUEUE_FULL, SHED_BUDGET = "queue_full", "budget"
OUTCOMES = ("ok", "parse_error", "timeout", "error")
CATEGORY = {1.0: "win", 0.5: "tie", 0.0: "loss"}


class Judge(Protocol):
    """What the evaluator calls: JudgeClient, or a fake in tests."""

    model: str

    async def complete(self, prompt: str) -> JudgeReply: ...


@dataclass(frozen=True)
class EvaluatorConfig:
    """The evaluator's knobs (monitor.config.JudgeSettings builds one)."""

    sample_rate: float = 0.05
    pairwise_sample_rate: float = 1.0
    pairwise: bool = True
    concurrency: int = 4
    queue_size: int = 256
    flag_at_or_below: int = 2
    judge_family: str = ""  # empty: from the judge's model name
    window_s: int = 300
    lateness_s: int = 60
    idle_close_s: float = 120.0
    min_pairs: int = 20
    gate_threshold: float = 0.45
    confidence: float = 0.95
    resamples: int = 2000

    def __post_init__(self) -> None:
        for name in ("sample_rate", "pairwise_sample_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.concurrency < 1 or self.queue_size < 1:
            raise ValueError("concurrency and queue_size must be at least 1")


@dataclass(frozen=True)
class _Grade:
    event: Event


@dataclass(frozen=True)
class _Compare:
    pair: Pair


Publish = Callable[[ScoredBatch], Awaitable[None]]


class JudgeEvaluator:
    """Samples events, judges them on ``concurrency`` workers, publishes findings."""

    def __init__(
        self,
        config: EvaluatorConfig,
        judge: Judge,
        rubric: Rubric,
        budget: Budget,
        metrics: Metrics,
        publish: Publish,
        *,
        pairs: PairBuffer | None = None,
        scanner: PiiScanner | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.judge = judge
        self.rubric = rubric
        self.budget = budget
        self.metrics = metrics
        self.publish = publish
        self.pairs = pairs or PairBuffer(clock=clock)
        self.windows = PairwiseWindows(
            window_s=config.window_s, lateness_ms=config.lateness_s * 1000,
            confidence=config.confidence, resamples=config.resamples,
        )  # fmt: skip
        self.family = config.judge_family or model_family(judge.model)
        self._scanner = scanner
        self._clock = clock
        self._queue: asyncio.Queue[_Grade | _Compare] = asyncio.Queue(config.queue_size)
        self._watermark_ms = 0
        self._last_pair_at: float | None = None
        self._evicted = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._paired = (self.pairs.canary_deployment, self.pairs.stable_deployment)
        self._calls = asyncio.Semaphore(config.concurrency)
        for kind in (KIND_GRADE, KIND_PAIRWISE):
            for outcome in OUTCOMES:
                metrics.judge_requests.labels(kind, outcome)
            for reason in (SHED_QUEUE_FULL, SHED_BUDGET):
                metrics.judge_shed.labels(kind, reason)

    # -- the stream's side: never waits ---------------------------------------------------

    def offer(self, event: Event) -> None:
        """Sample ``event`` for grading and pairing; enqueue the jobs or shed them."""
        self._watermark_ms = max(self._watermark_ms, event.timestamp_ms)
        c = self.config
        ok = event.status == "ok" and bool(event.response)
        if ok and sampled(event.request_id, c.sample_rate):
            self._put(_Grade(event), KIND_GRADE)
        if not c.pairwise or event.deployment not in self._paired or not ok:
            return
        key = prompt_key(event.prompt_text)
        if sampled(key, c.pairwise_sample_rate, "pair"):
            pair = self.pairs.offer(event, key)
            if pair is not None:
                self._put(_Compare(pair), KIND_PAIRWISE)
            self._count_evictions()

    def _put(self, job: _Grade | _Compare, kind: str) -> None:
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.metrics.judge_shed.labels(kind, SHED_QUEUE_FULL).inc()
        self.metrics.judge_queue.set(self._queue.qsize())

    def _count_evictions(self) -> None:
        new = self.pairs.evicted - self._evicted
        if new:
            self.metrics.judge_pairs_evicted.inc(new)
            self._evicted = self.pairs.evicted

    # -- the workers ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the workers and the window ticker on the running loop."""
        for i in range(self.config.concurrency):
            self._tasks.append(asyncio.create_task(self._work(), name=f"judge-{i}"))
        self._tasks.append(asyncio.create_task(self._tick(), name="judge-windows"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def drain(self) -> None:
        """Wait until every queued job is done (tests, shutdown)."""
        await self._queue.join()

    async def _work(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                if isinstance(job, _Grade):
                    await self.grade(job.event)
                else:
                    await self.compare(job.pair)
            except Exception:  # one job never ends the worker
                log.exception("judge job failed")
            finally:
                self._queue.task_done()
                self.metrics.judge_queue.set(self._queue.qsize())

    async def _tick(self, interval_s: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.flush_windows()
            except Exception:  # a failed publish loses those windows, never the ticker
                log.exception("judge: closed pairwise windows could not be published")

    async def _call(self, kind: str, prompt: str) -> JudgeReply | None:
        try:
            async with self._calls:  # at most ``concurrency`` calls in flight, pairs included
                reply = await self.judge.complete(prompt)
        except JudgeUnavailable as exc:
            self.metrics.judge_requests.labels(kind, exc.reason).inc()
            log.debug("judge unavailable: %s", exc)
            return None
        self.budget.charge(reply.cost_usd)
        m = self.metrics
        m.judge_cost_usd.labels(kind).inc(reply.cost_usd)
        m.judge_tokens.labels(kind, "input").inc(reply.input_tokens)
        m.judge_tokens.labels(kind, "output").inc(reply.output_tokens)
        m.judge_seconds.labels(kind).observe(reply.seconds)
        return reply

    def _text(self, text: str) -> str:
        return redact(text, self._scanner.scan(text)) if self._scanner is not None else text

    def _judge_details(self, reply: JudgeReply, model: str) -> dict[str, str]:
        family = model_family(model)
        return {
            "judge_model": reply.model, "judge_family": self.family, "model_family": family,
            "same_family": str(family == self.family and family != "unknown").lower(),
            "rubric_version": self.rubric.version,
        }  # fmt: skip

    async def grade(self, event: Event) -> Finding | None:
        """Grade one event; publish (and return) its finding. None if the judge failed or the
        budget is spent."""
        if not self.budget.try_acquire(1):
            self.metrics.judge_shed.labels(KIND_GRADE, SHED_BUDGET).inc()
            return None
        prompt = self.rubric.grade_prompt(event.prompt_text, event.response or "")
        reply = await self._call(KIND_GRADE, prompt)
        if reply is None:
            return None
        parsed = parse_grade(reply.text, self.rubric.max_words)
        details = self._judge_details(reply, event.model) | {
            "cost_usd": f"{reply.cost_usd:.6f}", "input_tokens": str(reply.input_tokens),
            "output_tokens": str(reply.output_tokens),
        }  # fmt: skip
        if isinstance(parsed, ParseFailure):
            self.metrics.judge_requests.labels(KIND_GRADE, "parse_error").inc()
            details |= {"parse_error": parsed.reason, "output": self._text(parsed.output)}
            finding = Finding(
                event.request_id, JUDGE_DETECTOR, self.rubric.version, 0.0, False,
                "parse_error", details=details,
            )  # fmt: skip
        else:
            self.metrics.judge_requests.labels(KIND_GRADE, "ok").inc()
            details |= {"grade": str(parsed.score), "explanation": self._text(parsed.explanation)}
            finding = Finding(
                event.request_id, JUDGE_DETECTOR, self.rubric.version, parsed.normalised,
                parsed.score <= self.config.flag_at_or_below, "grade", details=details,
            )  # fmt: skip
            series = self.metrics.series(*event.series)
            self.metrics.judge_score.labels(*series).observe(parsed.score)
        await self.publish(ScoredBatch([], [FindingRow.of(finding, event)]))
        return finding

    async def _verdict(self, prompt: str) -> tuple[Verdict, JudgeReply] | None:
        reply = await self._call(KIND_PAIRWISE, prompt)
        if reply is None:
            return None
        parsed = parse_verdict(reply.text, self.rubric.max_words)
        if isinstance(parsed, ParseFailure):
            self.metrics.judge_requests.labels(KIND_PAIRWISE, "parse_error").inc()
            return None
        self.metrics.judge_requests.labels(KIND_PAIRWISE, "ok").inc()
        return parsed, reply

    async def compare(self, pair: Pair) -> float | None:
        """Judge ``pair`` in both orders; record the canary's outcome (None: no verdict)."""
        if not self.budget.try_acquire(2):
            self.metrics.judge_shed.labels(KIND_PAIRWISE, SHED_BUDGET).inc()
            return None
        canary, stable = pair.canary.response or "", pair.stable.response or ""
        first, second = await asyncio.gather(
            self._verdict(self.rubric.pairwise_prompt(pair.prompt, canary, stable)),
            self._verdict(self.rubric.pairwise_prompt(pair.prompt, stable, canary)),
        )
        if first is None or second is None:
            return None
        outcome = combine(first[0].winner, second[0].winner)
        self.windows.add(pair, outcome)
        self._last_pair_at = self._clock()
        details = self._judge_details(first[1], pair.canary.model) | {
            "stable_request_id": pair.stable.request_id,
            "stable_version": pair.stable.model_version,
            "canary_first": first[0].winner, "stable_first": second[0].winner,
            "cost_usd": f"{first[1].cost_usd + second[1].cost_usd:.6f}",
            "explanation": self._text(first[0].explanation),
        }  # fmt: skip
        finding = Finding(
            pair.canary.request_id, PAIRWISE_DETECTOR, self.rubric.version, outcome,
            False, CATEGORY[outcome], details=details,
        )  # fmt: skip
        await self.publish(ScoredBatch([], [FindingRow.of(finding, pair.canary)]))
        return outcome

    # -- windows ------------------------------------------------------------------------------

    async def flush_windows(self, *, force: bool = False) -> list[PairwiseWindow]:
        """Close windows behind the event-time watermark (all of them when ``force``, or when
        no pair was judged for ``idle_close_s``); export and publish each."""
        idle = (
            self._last_pair_at is not None
            and self._clock() - self._last_pair_at >= self.config.idle_close_s
        )
        closed = (
            self.windows.close_all() if force or idle else self.windows.close(self._watermark_ms)
        )
        rows = [self._window_row(w) for w in closed]
        if rows:
            await self.publish(ScoredBatch([], rows))
        return closed

    def _window_row(self, window: PairwiseWindow) -> FindingRow:
        r, c = window.win_rate, self.config
        gate = promotion_gate(r.low, c.gate_threshold, n=r.n, min_pairs=c.min_pairs)
        verdict = "inconclusive" if gate is None else ("pass" if gate else "fail")
        series = self.metrics.series(
            window.model, window.canary_version, self.pairs.canary_deployment
        )
        for bound, value in (("value", r.value), ("low", r.low), ("high", r.high), ("n", r.n)):
            self.metrics.judge_win_rate.labels(*series, bound).set(value)
        details = {
            "low": f"{r.low:.6f}", "high": f"{r.high:.6f}", "n": str(r.n), "wins": str(r.wins),
            "ties": str(r.ties), "losses": str(r.losses), "confidence": str(r.confidence),
            "stable_versions": ",".join(window.stable_versions), "gate": verdict,
            "gate_threshold": str(c.gate_threshold), "judge_model": self.judge.model,
            "judge_family": self.family, "rubric_version": self.rubric.version,
            "window_end_ms": str(window.window_end_ms),
        }  # fmt: skip
        finding = Finding(
            f"window:{window.canary_version}:{window.window_start_ms}", PAIRWISE_DETECTOR,
            self.rubric.version, r.value, gate is False, "window", details=details,
        )  # fmt: skip
        return FindingRow(
            finding=finding, event_time_ms=window.window_start_ms, model=window.model,
            model_version=window.canary_version, deployment=self.pairs.canary_deployment,
            route="",
        )  # fmt: skip


def pairwise_window_of(row: FindingRow) -> PairwiseWindow | None:
    """The window result a ``judge_pairwise`` window finding carries (None for any other
    finding): what the policy role reads off the judge topic (streams/policy.py) and hands to
    ``PolicyEngine.observe_judge``."""
    f = row.finding
    if f.detector != PAIRWISE_DETECTOR or f.category != "window":
        return None
    d = f.details
    try:
        rate = WinRate(
            f.score, float(d["low"]), float(d["high"]), int(d["n"]), int(d["wins"]),
            int(d["ties"]), int(d["losses"]), float(d["confidence"]),
        )  # fmt: skip
        end = int(d["window_end_ms"])
    except (KeyError, ValueError):
        return None
    stables = tuple(v for v in d.get("stable_versions", "").split(",") if v)
    return PairwiseWindow(row.model, row.model_version, stables, row.event_time_ms, end, rate)
