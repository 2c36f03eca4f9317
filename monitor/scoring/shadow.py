"""Shadow mode: candidate detector configurations scoring live traffic beside the live ones.

A shadow (``detectors.shadow`` in monitor/config.py) is a detector built as a worker builds the
live one, from the same settings with the shadow's on top: another threshold, adapter or model
path, or a detector not enabled live. The cheap ones run in the ``score`` role, the
embedding-backed ones in the ``embed`` role, over the same events as the live detectors (the
same sample, at the same ``sample_rate``).

What keeps a shadow out of the policy's way:

- its findings carry the shadow's ``detector_version`` and travel apart, in
  ``ScoredBatch.shadow``: the sink stores them in ``findings_versions``, never in
  ``findings``, so no rollup, view or evidence copy reads them;
- they are in no window partial, so no window, policy rule or alert counts them; they are not
  published as OTLP evaluations, nor counted in the live detectors' metrics
  (``llm_monitor_shadow_*`` count them instead);
- a shadow that raises costs its own findings for that batch, never the live ones: the error
  is logged and counted (``llm_monitor_shadow_failures_total``).

``llm-monitor compare --detector NAME --versions LIVE,SHADOW`` compares the two on the events
both scored (monitor/history/compare.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec

from detectors.base import Detector, Finding
from monitor.ingest.events import Event
from monitor.scoring.rows import FindingRow
from monitor.scoring.sampling import Sampler, noted_rate, pick

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shadow:
    """A candidate detector and the version its findings are stored under. ``sample_rate``
    is its configured rate (embedding-backed detectors; 1 for the others)."""

    detector: Detector
    version: str
    sample_rate: float = 1.0

    def __post_init__(self) -> None:
        if not self.version:
            raise ValueError("version must not be empty")
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {self.sample_rate}")

    @property
    def name(self) -> str:
        return self.detector.name

    @property
    def key(self) -> tuple[str, str]:
        """(detector, version): how the metrics name it."""
        return self.detector.name, self.version

    def score(self, batch: Sequence[Event]) -> list[Finding]:
        """The detector's findings on ``batch``, relabelled with the shadow's version."""
        return [
            msgspec.structs.replace(finding, detector_version=self.version)
            for finding in self.detector.score(batch)
            if finding.detector == self.detector.name
        ]


@dataclass
class ShadowResult:
    """What the shadows found in one batch, the seconds each took, and those that failed."""

    findings: list[Finding] = field(default_factory=list)
    seconds: dict[tuple[str, str], float] = field(default_factory=dict)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def rows(self, events: Sequence[Event]) -> list[FindingRow]:
        """The findings as rows, each with its event's series and time (``events``: the batch)."""
        by_id = {e.request_id: e for e in events}
        return [
            FindingRow.of(f, by_id[f.request_id]) for f in self.findings if f.request_id in by_id
        ]


def run_shadows(
    shadows: Sequence[Shadow], events: Sequence[Event], sampler: Sampler | None = None
) -> ShadowResult:
    """Every shadow over ``events`` (over its sample, given a ``sampler``). Never raises for
    what a shadow does: a shadow that fails is logged and listed in ``failed``."""
    out = ShadowResult()
    for shadow in shadows:
        rate = 1.0 if sampler is None else sampler.scaled(shadow.sample_rate)
        sample = pick(rate, events)
        started = time.perf_counter()
        try:
            found = shadow.score(sample) if sample else []
        except Exception:  # a candidate must never cost the live verdicts
            log.exception("shadow %s %s failed on %d events", *shadow.key, len(sample))
            out.failed.append(shadow.key)
            continue
        finally:
            out.seconds[shadow.key] = time.perf_counter() - started
        out.findings += found if rate >= 1 else [noted_rate(f, rate) for f in found]
    return out
