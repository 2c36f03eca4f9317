"""Every detector, built in one place from config: the cheap ones for the ``score`` role, the
embedding-backed ones (and the embedding service they share) for the ``embed`` role, and both
together (``build_detectors``) for whoever needs the full set, such as the contract tests.
Shadows (candidate configurations, monitor/scoring/shadow.py) are built by the same code, from
the settings ``DetectorsSettings.candidate`` gives each, the cheap ones for the ``score`` role
and the embedding-backed ones for the ``embed`` role.

The stateful drift monitors (monitor/windows/drift.py) are not batch detectors: not built here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from detectors.adapted import AdaptedClassifier
from detectors.base import Detector, DetectorRegistry
from detectors.embedding import EmbeddingService
from detectors.hallucination import GroundingModel, HallucinationDetector, SupportModel
from detectors.injection import InjectionDetector
from detectors.latency_errors import LatencyErrorsDetector
from detectors.local_models import NliScorer, SequenceClassifier
from detectors.pii import PiiDetector, PiiScanner
from detectors.toxicity import ToxicityDetector, ToxicityHead
from monitor.config import SEMANTIC_SHADOWS, SHADOW_SUFFIX, DetectorsSettings, Settings
from monitor.errors import ConfigError
from monitor.scoring.shadow import Shadow


def build_embeddings(settings: DetectorsSettings) -> EmbeddingService:
    """The shared embedding service (not loaded: the embed role starts it on its thread)."""
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
        device = settings.embedding.device
        head = ToxicityHead.load(tox.head_path) if tox.head_path else None
        classifier = None
        if tox.model_path is not None:
            classifier = SequenceClassifier(
                tox.model_path, device=device, positive_labels=tox.positive_labels
            )
        adapter = (
            AdaptedClassifier.beside(tox.adapter_path, embeddings) if tox.adapter_path else None
        )
        detectors.append(
            ToxicityDetector(
                embeddings, head, tox.threshold, classifier, adapter, tox.counterfactual
            )
        )
    if settings.hallucination.enabled:
        detectors.append(hallucination_detector(settings, embeddings))
    if settings.injection.enabled:
        injection = settings.injection
        detectors.append(
            InjectionDetector.shipped(embeddings, injection.threshold, injection.instruction_model)
        )
    return detectors


def hallucination_detector(
    settings: DetectorsSettings, embeddings: EmbeddingService
) -> HallucinationDetector:
    """Grounding and self-consistency, judged by the configured or shipped support model."""
    h, device = settings.hallucination, settings.embedding.device
    support: SupportModel | None = None
    if h.nli_model_path is not None:
        support = NliScorer(h.nli_model_path, device=device)
    elif h.adapter_path is not None:
        support = GroundingModel(AdaptedClassifier.beside(h.adapter_path, embeddings))
    thresholds = {"grounding": h.grounding_threshold, "self_consistency": h.consistency_threshold}
    chosen = {mode: value for mode, value in thresholds.items() if value is not None}
    return HallucinationDetector(embeddings, chosen, support)


def build_cheap_detectors(cfg: DetectorsSettings) -> list[Detector]:
    """The cheap (CPU, per-event) detectors enabled in ``cfg``, tuned from it."""
    detectors: list[Detector] = []
    if cfg.pii.enabled:
        detectors.append(PiiDetector(PiiScanner(cfg.pii.types)))
    if cfg.latency_errors.enabled:
        detectors.append(LatencyErrorsDetector(slow_ms=cfg.latency_errors.slow_ms))
    return detectors


def build_registry(settings: Settings) -> DetectorRegistry:
    """The cheap (CPU, per-event) detectors enabled in config, tuned from config."""
    return DetectorRegistry(build_cheap_detectors(settings.detectors))


def build_cheap_shadows(settings: DetectorsSettings, live: Sequence[Detector]) -> list[Shadow]:
    """The shadows of the cheap detectors (the ``score`` role runs them beside ``live``)."""
    return _shadows(settings, live, semantic=False, build=build_cheap_detectors)


def build_semantic_shadows(
    settings: DetectorsSettings, embeddings: EmbeddingService, live: Sequence[Detector]
) -> list[Shadow]:
    """The shadows of the embedding-backed detectors (the ``embed`` role runs them beside
    ``live``), on the shared embedding service."""

    def build(cfg: DetectorsSettings) -> list[Detector]:
        return build_semantic_detectors(cfg, embeddings)

    return _shadows(settings, live, semantic=True, build=build)


def _shadows(
    settings: DetectorsSettings,
    live: Sequence[Detector],
    *,
    semantic: bool,
    build: Callable[[DetectorsSettings], list[Detector]],
) -> list[Shadow]:
    """Each configured shadow of one role, labelled; ConfigError when its version is the live
    detector's or another shadow's of the same detector (compare could not tell them apart)."""
    live_versions = {d.name: d.version for d in live}
    shadows: list[Shadow] = []
    for i, spec in enumerate(settings.shadow):
        if (spec.detector in SEMANTIC_SHADOWS) != semantic:
            continue
        cfg = settings.candidate(spec)
        detector = next(d for d in build(cfg) if d.name == spec.detector)
        version = spec.version or detector.version + SHADOW_SUFFIX
        taken = {s.version for s in shadows if s.name == spec.detector}
        if version == live_versions.get(spec.detector) or version in taken:
            whose = "the live" if version not in taken else "another shadow of"
            raise ConfigError(
                f"detectors.shadow.{i}.version: {version!r} is {whose} {spec.detector}'s "
                "version, so their findings could not be told apart. Fix: give item "
                f"{i} of LLM_MONITOR_DETECTORS__SHADOW (or of 'detectors.shadow' in the config "
                "file) a version of its own."
            )
        rate = float(getattr(getattr(cfg, spec.detector), "sample_rate", 1.0))
        shadows.append(Shadow(detector, version, rate))
    return shadows


def build_detectors(settings: Settings, embeddings: EmbeddingService) -> DetectorRegistry:
    """Every detector the config enables: the cheap ones, then the embedding-backed ones."""
    registry = build_registry(settings)
    for detector in build_semantic_detectors(settings.detectors, embeddings):
        registry.register(detector)
    return registry
