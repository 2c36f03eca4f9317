"""The heart of the ``embed`` role: semantic detectors, bias counts and embedding drift.

The ``score`` role forwards every valid event to the embed topic; an embed worker (a GPU box,
or the one process in single-worker mode) decodes a batch and hands it to
``SemanticScorer.process``, which runs the embedding-backed detectors, counts each event's
bias group, and tests each model version's responses for drift against its reference. The
result is findings for the sink and flags-only window partials for the aggregator, so these
findings land in the same tables and windows as the cheap detectors' ones. Shadows of the
semantic detectors (monitor/scoring/shadow.py) score the same events, each its own sample at
its own ``sample_rate``; their findings go to ``scored.shadow`` only: no partial, no bias
count. Given where each event was read (``sources``), the partials carry it, so a batch
processed again after a crash adds its flags to the windows once (see
monitor/windows/aggregate.py). With the embed records' own offsets as sources, an event that a
crashed score worker forwarded twice is two records, so its flags count twice; the event's
origin (its llm.events partition and offset, forwarded to the same partition number) as source
makes those copies one.

Each detector scores the sample of the batch its rate picks (monitor/scoring/sampling.py: a
fixed ``sample_rate``, scaled down while the embed role falls behind); the partials count, per
detector, the events it scored, so the windows' rates are over those (docs/sampling.md).

Synchronous and CPU/GPU-bound: the streams layer runs it on the embedding service's own thread.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from detectors.base import Finding
from detectors.bias import group_counts
from detectors.drift import DRIFT_DETECTOR
from detectors.embedding import EmbeddingService
from monitor.config import DetectorsSettings
from monitor.ingest.events import Event
from monitor.scoring.registry import build_semantic_detectors, build_semantic_shadows
from monitor.scoring.rows import FindingRow, ScoredBatch
from monitor.scoring.sampling import Sampler, noted_rate
from monitor.scoring.shadow import ShadowResult, run_shadows
from monitor.windows.drift import EmbeddingDrift
from monitor.windows.stats import EventSource, WindowPartial, finding_partials


@dataclass
class SemanticResult:
    scored: ScoredBatch
    partials: list[WindowPartial]
    detector_seconds: dict[str, float]
    texts: int
    scored_counts: dict[str, int] = field(default_factory=dict)  # events each detector scored
    sample_rates: dict[str, float] = field(default_factory=dict)  # the rate each one used
    shadow: ShadowResult = field(default_factory=ShadowResult)


class SemanticScorer:
    """Runs the semantic detectors over decoded events; holds only drift state between calls."""

    def __init__(
        self,
        settings: DetectorsSettings,
        embeddings: EmbeddingService,
        *,
        window_s: int,
        sampler: Sampler | None = None,
    ) -> None:
        self.settings = settings
        self.embeddings = embeddings
        self.window_s = window_s
        self.sampler = Sampler.from_settings(settings) if sampler is None else sampler
        self.detectors = build_semantic_detectors(settings, embeddings)
        self.shadows = build_semantic_shadows(settings, embeddings, self.detectors)
        self.drift = EmbeddingDrift(settings.drift, window_s) if settings.drift.enabled else None

    @property
    def names(self) -> tuple[str, ...]:
        names = tuple(d.name for d in self.detectors)
        return names + ((DRIFT_DETECTOR,) if self.drift else ())

    def process(
        self, events: Sequence[Event], sources: Sequence[EventSource] | None = None
    ) -> SemanticResult:
        """Score ``events``; ``sources[i]``, when given, is where ``events[i]`` was read."""
        texts_before = self.embeddings.stats.texts
        findings: list[Finding] = []
        seconds: dict[str, float] = {}
        scored: dict[str, set[str]] = {}
        rates: dict[str, float] = {}
        for detector in self.detectors:
            rate = rates[detector.name] = self.sampler.rate(detector.name)
            sample = self.sampler.select(detector.name, events)
            started = time.perf_counter()
            found = detector.score(sample) if sample else []
            seconds[detector.name] = time.perf_counter() - started
            findings.extend(found if rate >= 1 else [noted_rate(f, rate) for f in found])
            if self._reported(detector.name):
                scored[detector.name] = {e.request_id for e in sample}
        # Bias may run without toxicity being a reported detector; its flags still count.
        reported = [f for f in findings if self._reported(f.detector)]
        by_id = {e.request_id: e for e in events}
        rows = [FindingRow.of(f, by_id[f.request_id]) for f in reported]
        if self.drift is not None:
            started = time.perf_counter()
            rates[DRIFT_DETECTOR] = self.sampler.rate(DRIFT_DETECTOR)
            answered = [e for e in self.sampler.select(DRIFT_DETECTOR, events) if e.response]
            vectors = self.embeddings.encode([e.response or "" for e in answered])
            rows.extend(self.drift.update(answered, vectors))
            seconds[DRIFT_DETECTOR] = time.perf_counter() - started
        groups = self._groups(events, findings) if self.settings.bias.enabled else None
        shadow = run_shadows(self.shadows, events, self.sampler)
        return SemanticResult(
            scored=ScoredBatch(events=[], findings=rows, shadow=shadow.rows(events)),
            partials=finding_partials(events, reported, self.window_s, groups, sources, scored),
            detector_seconds=seconds,
            texts=self.embeddings.stats.texts - texts_before,
            scored_counts={name: len(ids) for name, ids in scored.items()},
            sample_rates=rates,
            shadow=shadow,
        )

    def observe_lag(self, lag_s: float) -> dict[str, float]:
        """Tell the sampler how far behind the role is; each detector's rate from now on."""
        self.sampler.observe_lag(lag_s)
        return {name: self.sampler.rate(name) for name in self.names}

    def _reported(self, detector: str) -> bool:
        return detector != "toxicity" or self.settings.toxicity.enabled

    def _groups(
        self, events: Sequence[Event], findings: Sequence[Finding]
    ) -> dict[str, tuple[str, list[float]]]:
        toxic = {f.request_id: f.flagged for f in findings if f.detector == "toxicity"}
        attribute = self.settings.bias.group_attribute
        return {
            e.request_id: (
                e.attributes[attribute],
                group_counts(e.response or "", toxic.get(e.request_id)),
            )
            for e in events
            if e.response and e.attributes.get(attribute)
        }
