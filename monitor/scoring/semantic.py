"""The heart of the ``embed`` role: semantic detectors, bias counts and embedding drift.

The ``score`` role forwards every valid event to the embed topic; an embed worker (a GPU box,
or the one process in single-worker mode) decodes a batch and hands it to
``SemanticScorer.process``, which runs the embedding-backed detectors, counts each event's
bias group, and tests each model version's responses for drift against its reference. The
result is findings for the sink and flags-only window partials for the aggregator, so these
findings land in the same tables and windows as the cheap detectors' ones. Given where each
event was read (``sources``), the partials carry it, so a batch processed again after a crash
adds its flags to the windows once (see monitor/windows/aggregate.py). With the embed records'
own offsets as sources, an event that a crashed score worker forwarded twice is two records,
so its flags count twice; the event's origin (its llm.events partition and offset, forwarded
to the same partition number) as source makes those copies one.

Synchronous and CPU/GPU-bound: the streams layer runs it on the embedding service's own thread.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from detectors.base import Finding, run_detectors
from detectors.bias import group_counts
from detectors.drift import DRIFT_DETECTOR
from detectors.embedding import EmbeddingService
from monitor.config import DetectorsSettings
from monitor.ingest.events import Event
from monitor.scoring.registry import build_semantic_detectors
from monitor.scoring.rows import FindingRow, ScoredBatch
from monitor.windows.drift import EmbeddingDrift
from monitor.windows.stats import EventSource, WindowPartial, finding_partials


@dataclass
class SemanticResult:
    scored: ScoredBatch
    partials: list[WindowPartial]
    detector_seconds: dict[str, float]
    texts: int


class SemanticScorer:
    """Runs the semantic detectors over decoded events; holds only drift state between calls."""

    def __init__(
        self,
        settings: DetectorsSettings,
        embeddings: EmbeddingService,
        *,
        window_s: int,
    ) -> None:
        self.settings = settings
        self.embeddings = embeddings
        self.window_s = window_s
        self.detectors = build_semantic_detectors(settings, embeddings)
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
        findings, seconds = run_detectors(self.detectors, events)
        # Bias may run without toxicity being a reported detector; its flags still count.
        reported = [f for f in findings if self._reported(f.detector)]
        by_id = {e.request_id: e for e in events}
        rows = [FindingRow.of(f, by_id[f.request_id]) for f in reported]
        if self.drift is not None:
            started = time.perf_counter()
            answered = [e for e in events if e.response]
            vectors = self.embeddings.encode([e.response or "" for e in answered])
            rows.extend(self.drift.update(answered, vectors))
            seconds[DRIFT_DETECTOR] = time.perf_counter() - started
        groups = self._groups(events, findings) if self.settings.bias.enabled else None
        return SemanticResult(
            scored=ScoredBatch(events=[], findings=rows),
            partials=finding_partials(events, reported, self.window_s, groups, sources),
            detector_seconds=seconds,
            texts=self.embeddings.stats.texts - texts_before,
        )

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
