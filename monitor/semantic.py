"""The heart of the ``embed`` role: semantic detectors, bias counts and embedding drift.

The ``score`` role forwards every valid event to the embed topic; an embed worker (a GPU box,
or the one process in single-worker mode) decodes a batch and hands it to
``SemanticScorer.process``, which runs the embedding-backed detectors, counts each event's
bias group, and tests each model version's responses for drift against its reference. The
result is findings for the sink and flags-only window partials for the aggregator, so these
findings land in the same tables and windows as the cheap detectors' ones.

Synchronous and CPU/GPU-bound: the streams layer runs it on the embedding service's own thread.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from detectors.base import Detector, Finding, run_detectors
from detectors.bias import group_counts
from detectors.drift import DRIFT_DETECTOR, DRIFT_VERSION, mean_shift_test
from detectors.embedding import EmbeddingService
from detectors.hallucination import HallucinationDetector
from detectors.injection import InjectionDetector
from detectors.local_models import NliScorer, SequenceClassifier
from detectors.toxicity import ToxicityDetector, ToxicityHead
from monitor.config import DetectorsSettings, DriftSettings
from monitor.events import Event
from monitor.pipeline import FindingRow, ScoredBatch
from monitor.windows import WindowPartial, finding_partials, window_start

MAX_DRIFT_SERIES = 1000


def build_embeddings(settings: DetectorsSettings) -> EmbeddingService:
    cfg = settings.embedding
    return EmbeddingService(
        cfg.model_path,
        device=cfg.device,
        max_batch=cfg.max_batch,
        cache_size=cfg.cache_size,
        backend=cfg.backend,
        onnx_cache_dir=cfg.onnx_cache_dir,
        tokenizer_processes=cfg.tokenizer_processes,
    )


def build_semantic_detectors(
    settings: DetectorsSettings, embeddings: EmbeddingService
) -> list[Detector]:
    """The enabled embedding-backed detectors, tuned from config."""
    detectors: list[Detector] = []
    if settings.toxicity.enabled or settings.bias.enabled:
        tox = settings.toxicity
        head = ToxicityHead.load(tox.head_path) if tox.head_path else None
        classifier = None
        if tox.model_path is not None:
            classifier = SequenceClassifier(
                tox.model_path,
                device=settings.embedding.device,
                positive_labels=tox.positive_labels,
            )
        detectors.append(ToxicityDetector(embeddings, head, tox.threshold, classifier))
    if settings.hallucination.enabled:
        h = settings.hallucination
        nli = None
        if h.nli_model_path is not None:
            nli = NliScorer(h.nli_model_path, device=settings.embedding.device)
        detectors.append(
            HallucinationDetector(
                embeddings,
                {"grounding": h.grounding_threshold, "self_consistency": h.consistency_threshold},
                nli,
            )
        )
    if settings.injection.enabled:
        detectors.append(InjectionDetector(embeddings, settings.injection.threshold))
    return detectors


@dataclass
class _SeriesDrift:
    reference: list[npt.NDArray[np.float32]] = field(default_factory=list)
    window_start_ms: int = -1
    current: list[npt.NDArray[np.float32]] = field(default_factory=list)
    last_event_ms: int = 0


class EmbeddingDrift:
    """Per model version: the first responses are the reference; each later window is tested.

    A window is tested when the first event of a later window arrives for the same series, so
    every window is judged once, on all its events, and only by event time.
    """

    def __init__(self, settings: DriftSettings, window_s: int) -> None:
        self.settings = settings
        self.window_s = window_s
        self._series: OrderedDict[tuple[str, str, str], _SeriesDrift] = OrderedDict()

    def update(self, events: Sequence[Event], vectors: npt.NDArray[np.float32]) -> list[FindingRow]:
        """Feed response embeddings (one row per event); returns findings for tested windows."""
        out = []
        for event, vector in zip(events, vectors, strict=True):
            key = (event.model, event.model_version, event.deployment)
            state = self._series.get(key)
            if state is None:
                state = self._series[key] = _SeriesDrift()
                if len(self._series) > MAX_DRIFT_SERIES:
                    self._series.popitem(last=False)
            self._series.move_to_end(key)
            if len(state.reference) < self.settings.reference_events:
                state.reference.append(vector)
                continue
            start = window_start(event.timestamp_ms, self.window_s)
            if start > state.window_start_ms:
                row = self._test(key, state)
                if row is not None:
                    out.append(row)
                state.window_start_ms, state.current = start, []
            if start == state.window_start_ms:  # late events of an already tested window: skip
                state.current.append(vector)
            state.last_event_ms = max(state.last_event_ms, event.timestamp_ms)
        return out

    def _test(self, key: tuple[str, str, str], state: _SeriesDrift) -> FindingRow | None:
        if len(state.current) < self.settings.min_window_events:
            return None
        test = mean_shift_test(
            np.stack(state.reference),
            np.stack(state.current),
            permutations=self.settings.permutations,
            seed=state.window_start_ms,
        )
        flagged = test.drifted(self.settings.alpha)
        model, version, deployment = key
        return FindingRow(
            finding=Finding(
                request_id=f"window:{model}|{version}|{deployment}|{state.window_start_ms}",
                detector=DRIFT_DETECTOR,
                detector_version=DRIFT_VERSION,
                score=1.0 - test.p_value,
                flagged=flagged,
                category="embedding",
                details={
                    "p_value": f"{test.p_value:.4f}",
                    "distance": f"{test.distance:.6f}",
                    "reference_events": str(len(state.reference)),
                    "window_events": str(len(state.current)),
                    "alpha": str(self.settings.alpha),
                },
            ),
            event_time_ms=state.window_start_ms,
            model=model,
            model_version=version,
            deployment=deployment,
            route="",
        )


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

    def process(self, events: Sequence[Event]) -> SemanticResult:
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
            partials=finding_partials(events, reported, self.window_s, groups),
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
