"""One detector, built by name for a backfill: the registry builds it as a worker would, from
the same settings, with that detector switched on (a backfill is how a newly enabled detector
gets its history) and every other one off, so no model is loaded that is not needed.

Detectors that need embeddings get their own ``EmbeddingService`` on ``device`` (CPU unless
asked), started here and closed with ``close()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from pydantic import ValidationError

from detectors.base import Detector, DetectorRegistry
from detectors.embedding import EmbeddingService
from monitor.config import DetectorsSettings, EmbeddingSettings, Settings
from monitor.history.errors import HistoryError
from monitor.scoring.registry import build_embeddings, build_registry, build_semantic_detectors

# Switches in DetectorsSettings that are not batch detectors with findings per event.
NOT_BATCH: Final = {
    "bias": "bias is per-group statistics in windows, not findings per event",
    "drift": "drift is a stateful monitor over windows, not a batch detector",
}


def switchable(settings: DetectorsSettings) -> tuple[str, ...]:
    """Every detector switch in the settings (a sub-model with ``enabled``)."""
    return tuple(n for n in type(settings).model_fields if hasattr(getattr(settings, n), "enabled"))


def batch_detector_names(settings: DetectorsSettings) -> tuple[str, ...]:
    """The detectors a backfill can run."""
    return tuple(n for n in switchable(settings) if n not in NOT_BATCH)


def only(settings: DetectorsSettings, name: str, device: str) -> DetectorsSettings:
    """``settings`` with ``name`` enabled, every other detector disabled, embeddings on
    ``device``. HistoryError for a name that is not a batch detector or a bad device."""
    if name in NOT_BATCH:
        raise HistoryError(f"cannot backfill {name!r}: {NOT_BATCH[name]}")
    names = batch_detector_names(settings)
    if name not in names:
        raise HistoryError(f"no detector {name!r}; one of {', '.join(names)}")
    try:
        embedding = EmbeddingSettings.model_validate(
            settings.embedding.model_dump() | {"device": device}
        )
    except ValidationError as exc:
        raise HistoryError(f"--device {device!r}: auto, cpu, cuda or cuda:N") from exc
    updates: dict[str, object] = {
        n: getattr(settings, n).model_copy(update={"enabled": n == name})
        for n in switchable(settings)
    }
    return settings.model_copy(update=updates | {"embedding": embedding})


@dataclass
class LoadedDetector:
    """A detector ready to score, and the embedding service it holds (None for cheap ones)."""

    detector: Detector
    embeddings: EmbeddingService | None = None

    def close(self) -> None:
        if self.embeddings is not None:
            self.embeddings.close()


def load_detector(settings: Settings, name: str, *, device: str = "cpu") -> LoadedDetector:
    """The detector ``name`` built from ``settings`` (see the module docstring)."""
    cfg = only(settings.detectors, name, device)
    cheap = build_registry(settings.model_copy(update={"detectors": cfg}))
    if name in cheap.names:
        return LoadedDetector(cheap.get(name))
    embeddings = build_embeddings(cfg)
    try:
        detector = DetectorRegistry(build_semantic_detectors(cfg, embeddings)).get(name)
        embeddings.start()
    except KeyError as exc:
        embeddings.close()
        raise HistoryError(f"the registry builds no detector {name!r}: {exc}") from exc
    except (OSError, RuntimeError, ValueError) as exc:
        embeddings.close()
        raise HistoryError(f"cannot load {name!r} on {device}: {exc}") from exc
    return LoadedDetector(detector, embeddings)
